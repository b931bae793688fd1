// Command eplb-kube is kube-apiserver and kube-controller-manager of one Kubernetes
// release, and the etcd release that Kubernetes release itself depends on, in a single
// binary for the project's local test cluster (DESIGN.md §6).
// Which one runs is chosen by the name it is invoked as (symlinks made by
// scripts/setup-kube.sh) or by the first argument: `eplb-kube kube-apiserver --flags`.
// Nothing here but the upstream command constructors: the binaries behave exactly as the
// released ones.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := commands[name]; !ok && name != "etcd" && len(os.Args) > 1 {
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	if name == "etcd" {
		etcdmain.Main(os.Args) // exits by itself
		return
	}
	newCommand, ok := commands[name]
	if !ok {
		fmt.Fprintln(os.Stderr, "usage: eplb-kube kube-apiserver|kube-controller-manager|etcd [flags]")
		os.Exit(2)
	}
	os.Exit(cli.Run(newCommand()))
}

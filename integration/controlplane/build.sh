#!/usr/bin/env bash
# Builds the binaries the harness runs, at pinned versions, into a cache outside the
# repository keyed by a hash of the pins, and prints the cache's bin directory. A second
# call with the same pins builds nothing.
#
#   build.sh          the control plane: etcd, kube-apiserver, kube-controller-manager, kubectl;
#                     and versitygw, the S3 server the object-storage tests run against
#                     (`go install` of its Go module at the version below)
#   build.sh --node   also a node: kubelet, kube-scheduler, kube-proxy (same module graph as
#                     the control plane, go.mod/go.sum), containerd with ctr and
#                     containerd-shim-runc-v2, and CoreDNS (each from its own Go module at
#                     the version below, checked against the Go checksum database)
#
# runc, the CNI plugins and nftables come from Debian (.ci/run installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Pins of the binaries that are not in go.mod: the S3 server, then the node's.
versitygw_module=github.com/versity/versitygw
versitygw_version=v1.8.0
containerd_module=github.com/containerd/containerd/v2
containerd_version=v2.4.2
coredns_module=github.com/coredns/coredns
coredns_version=v1.15.0

node=0
case "${1:-}" in
  --node) node=1 ;;
  "") ;;
  *) echo "usage: $0 [--node]" >&2; exit 2 ;;
esac
key=$(cat "$here/go.mod" "$here/go.sum" "$here/cmd/etcd/main.go" "$0" | sha256sum | cut -c1-16)
cache=${COREDUMP_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/coredump-detector/controlplane}
out="$cache/$key"
k8s_bins="kube-apiserver kube-controller-manager kubectl"
other_bins="containerd ctr containerd-shim-runc-v2 coredns"
[ "$node" = 1 ] && k8s_bins="$k8s_bins kubelet kube-scheduler kube-proxy"
bins="etcd $k8s_bins versitygw"
[ "$node" = 1 ] && bins="$bins $other_bins"
missing() {
  for b in $bins; do [ -x "$out/bin/$b" ] || return 0; done
  return 1
}
if ! missing; then
  echo "$out/bin"
  exit 0
fi
mkdir -p "$out"
# One build at a time per cache entry (tests and `make up` may call this together).
exec 9>"$out/.lock"
flock 9
if ! missing; then
  echo "$out/bin"
  exit 0
fi
tmp=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$here"
start=$(date +%s)
export CGO_ENABLED=0
# Stamp the version a release build would carry, so version-skew checks see 1.37.
kver=$(sed -n 's#^\s*k8s.io/kubernetes \(v[0-9.]*\).*#\1#p' go.mod | head -1)
IFS=. read -r kmajor kminor _ <<<"${kver#v}"
vpkg=k8s.io/component-base/version
kflags="-s -w -X $vpkg.gitVersion=$kver -X $vpkg.gitMajor=$kmajor -X $vpkg.gitMinor=$kminor -X $vpkg.gitTreeState=clean"
built=()
# `go install module/pkg@version` resolves the module's own go.mod (outside this module).
gi() { (cd / && env -u GOFLAGS GOBIN="$tmp" go install -trimpath "$@" >&2); }
if [ ! -x "$out/bin/etcd" ]; then
  GOFLAGS=-mod=readonly go build -trimpath -ldflags='-s -w' -o "$tmp/etcd" ./cmd/etcd >&2
  built+=(etcd)
fi
for cmd in $k8s_bins; do
  [ -x "$out/bin/$cmd" ] && continue
  GOFLAGS=-mod=readonly go build -trimpath -ldflags="$kflags" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd" >&2
  built+=("$cmd")
done
if [ ! -x "$out/bin/versitygw" ]; then
  # Stamped as its release build is (`versitygw --version`).
  gi -ldflags="-s -w -X main.Version=$versitygw_version" \
    "$versitygw_module/cmd/versitygw@$versitygw_version"
  built+=(versitygw)
fi
if [ "$node" = 1 ]; then
  if [ ! -x "$out/bin/containerd" ] || [ ! -x "$out/bin/ctr" ] || [ ! -x "$out/bin/containerd-shim-runc-v2" ]; then
    # no_btrfs: no btrfs headers (cgo is off anyway).
    gi -tags no_btrfs \
      -ldflags="-s -w -X $containerd_module/version.Version=$containerd_version" \
      "$containerd_module/cmd/containerd@$containerd_version" \
      "$containerd_module/cmd/ctr@$containerd_version" \
      "$containerd_module/cmd/containerd-shim-runc-v2@$containerd_version"
    built+=(containerd ctr containerd-shim-runc-v2)
  fi
  if [ ! -x "$out/bin/coredns" ]; then
    gi -ldflags='-s -w' "$coredns_module@$coredns_version"
    built+=(coredns)
  fi
fi
mkdir -p "$out/bin"
for b in "${built[@]}"; do mv "$tmp/$b" "$out/bin/"; done
echo "built ${built[*]} in $(( $(date +%s) - start ))s into $out/bin" >&2
echo "$out/bin"

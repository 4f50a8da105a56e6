#!/usr/bin/env bash
# Builds the images a node without a registry needs besides the add-on's own: a pause
# (pod sandbox) image and the test workloads, each one layer holding one static binary,
# and writes them as docker-archives to load with `ctr -n k8s.io images import`:
#   coredump-detector/pause:local             test/pause.c (containerd's pinned sandbox image)
#   coredump-detector/test-crasher:local      test/crasher.c: /crasher segv|abort|sleep|wait F|sleep-segv N
#   coredump-detector/test-crasher-mt:local   test/crasher-mt.cpp: a C++ thread crashes
#   coredump-detector/test-crasher-go:local   test/crasher-go: a Go nil dereference (GOTRACEBACK=crash)
# The binaries keep their symbols (gdb on a core names the crashing function) and are
# also left in DIR/bin/ for that.
#
# Usage: deploy/images/test-images.sh --archive DIR    (as root; gcc, g++, go, buildah)
# Prints the image references it wrote, one a line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "test-images.sh: $*" >&2; exit 1; }
archive_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --archive) archive_dir="${2:?--archive needs a directory}"; shift ;;
    --archive=*) archive_dir="${1#*=}" ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[ -n "$archive_dir" ] || die "--archive DIR is required"
[ "$(id -u)" = 0 ] || die "run as root (buildah uses root storage here)"
for tool in gcc g++ go buildah; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
mkdir -p "$archive_dir/bin"
archive_dir="$(cd "$archive_dir" && pwd)"
bin="$archive_dir/bin"
gcc -static -O2 -o "$bin/pause" "$here/test/pause.c"
gcc -static -O0 -g -o "$bin/crasher" "$here/test/crasher.c"
g++ -static -O0 -g -pthread -o "$bin/crasher-mt" "$here/test/crasher-mt.cpp"
(cd "$here/test/crasher-go" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$bin/crasher-go" .)

bah() { buildah --storage-driver vfs "$@"; }
# name:binary
images=(
  "pause:pause"
  "test-crasher:crasher"
  "test-crasher-mt:crasher-mt"
  "test-crasher-go:crasher-go"
)
for spec in "${images[@]}"; do
  IFS=: read -r name exe <<<"$spec"
  ref="coredump-detector/$name:local"
  ctr="$(bah from scratch)"
  trap 'bah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  bah copy --chmod 0755 "$ctr" "$bin/$exe" "/$exe" >/dev/null
  bah config --entrypoint "[\"/$exe\"]" --cmd '[]' \
    --label "org.opencontainers.image.source=coredump-detector" "$ctr"
  # The Go runtime dumps core (SIGABRT) on a fatal panic only with GOTRACEBACK=crash.
  [ "$name" = test-crasher-go ] && bah config --env GOTRACEBACK=crash "$ctr"
  previous="$(bah images --noheading --format '{{.ID}}' "$ref" 2>/dev/null | head -1 || true)"
  bah commit --quiet "$ctr" "$ref" >/dev/null
  bah rm "$ctr" >/dev/null
  trap - EXIT
  current="$(bah images --noheading --format '{{.ID}}' "$ref" | head -1)"
  if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    bah rmi "$previous" >/dev/null 2>&1 || true
  fi
  rm -f "$archive_dir/$name.tar"
  bah push --quiet "$ref" "docker-archive:$archive_dir/$name.tar:$ref" >&2
  echo "$ref"
done

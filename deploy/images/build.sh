#!/usr/bin/env bash
# Builds the two container images without a Docker daemon:
#   1. static binaries on the host (no Rust toolchain image needed):
#        RUSTFLAGS='-C target-feature=+crt-static' \
#          cargo build --release --target x86_64-unknown-linux-gnu
#   2. the images with buildah, FROM scratch (deploy/images/*.Containerfile):
#        coredump-detector/apiserver:<version>
#        coredump-detector/node-handler:<version>
#      <version> is the workspace version in Cargo.toml; deploy/base/kustomization.yaml
#      names the same tags (a test checks that they agree);
#   3. a check that each binary starts inside its image (as the user the image runs as).
#
# Usage: deploy/images/build.sh [options]
#   --print-images    print the two image references and exit (nothing is built)
#   --skip-cargo      use binaries already built by step 1
#   --archive DIR     also write DIR/<name>-<version>.tar (docker-archive), to load into
#                     a node's runtime: `ctr -n k8s.io images import`, `kind load
#                     image-archive`, `k3s ctr images import`
#   --push REGISTRY   also push to REGISTRY/coredump-detector/<name>:<version> (then
#                     `kustomize edit set image` in your overlay to match)
#
# Environment:
#   VERSION           image tag (default: the workspace version)
#   STORAGE_DRIVER    buildah storage driver (default vfs: works as root anywhere, no
#                     overlay or fuse needed); set to "" to use containers-storage.conf's
#   ISOLATION         buildah isolation for RUN steps (default chroot: no runc/crun needed)
#   CARGO_TARGET_DIR  as for cargo (default: <repo>/target)
#
# Needs: cargo with the x86_64-unknown-linux-gnu target, and buildah (Debian 12:
# `apt-get install buildah`, 1.28), run as root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target_triple=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
bin_dir="$target_dir/$target_triple/release"

die() {
  echo "build.sh: $*" >&2
  exit 1
}

print_only=0 skip_cargo=0 archive_dir="" registry=""
while [ $# -gt 0 ]; do
  case "$1" in
    --print-images) print_only=1 ;;
    --skip-cargo) skip_cargo=1 ;;
    --archive) archive_dir="${2:?--archive needs a directory}"; shift ;;
    --archive=*) archive_dir="${1#*=}" ;;
    --push) registry="${2:?--push needs a registry}"; shift ;;
    --push=*) registry="${1#*=}" ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

workspace_version() {
  # The `version = "…"` line of [workspace.package].
  awk '
    /^\[/ { in_pkg = ($0 == "[workspace.package]") }
    in_pkg && /^version[[:space:]]*=/ { gsub(/.*=[[:space:]]*"|".*/, ""); print; exit }
  ' "$repo/Cargo.toml"
}
version="${VERSION:-$(workspace_version)}"
[ -n "$version" ] || die "no version: set VERSION or fix [workspace.package] version in Cargo.toml"

# name:binary:user the check runs as (the image's USER)
images=(
  "apiserver:coredump-apiserver:65532:65532"
  "node-handler:coredump-node-handler:0:0"
)

if [ "$print_only" = 1 ]; then
  for spec in "${images[@]}"; do
    echo "coredump-detector/${spec%%:*}:$version"
  done
  exit 0
fi

# --- preconditions, with the reason when they fail ---------------------------------
if ! command -v buildah >/dev/null 2>&1; then
  die "buildah is not installed; it builds the images without a Docker daemon.
  Debian/Ubuntu: apt-get install buildah   (then run this script again as root)"
fi
if [ "$(id -u)" != 0 ]; then
  die "run as root: buildah here uses root storage (/var/lib/containers) and chroot
  isolation; rootless buildah needs subuid/subgid ranges and user namespaces set up."
fi
buildah_args=()
if [ -n "${STORAGE_DRIVER-vfs}" ]; then
  buildah_args+=(--storage-driver "${STORAGE_DRIVER-vfs}")
fi
isolation="${ISOLATION:-chroot}"
bah() { buildah "${buildah_args[@]}" "$@"; }
bah info >/dev/null 2>&1 || die "buildah cannot open its storage:
$(bah info 2>&1 | tail -3)
  (if containers-storage was set up with another driver, try STORAGE_DRIVER= to use it)"

# --- 1. static binaries ------------------------------------------------------------
if [ "$skip_cargo" = 0 ]; then
  echo "build.sh: cargo build --release --target $target_triple (static)" >&2
  (cd "$repo" && RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
    cargo build --release --target "$target_triple" \
      -p coredump-apiserver -p coredump-node-handler --bins)
fi
for spec in "${images[@]}"; do
  IFS=: read -r _ bin _ _ <<<"$spec"
  f="$bin_dir/$bin"
  [ -x "$f" ] || die "$f is missing (run without --skip-cargo)"
  # A static binary has no program interpreter (no PT_INTERP / dynamic loader).
  if readelf -lW "$f" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    die "$f is dynamically linked; it would not start FROM scratch.
  Build it with RUSTFLAGS='-C target-feature=+crt-static' and --target $target_triple."
  fi
done

# --- 2. images ----------------------------------------------------------------------
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || die "$ca_bundle is missing (Debian: apt-get install ca-certificates)"
work="$target_dir/images"
mkdir -p "$work"
built=()
for spec in "${images[@]}"; do
  IFS=: read -r name bin uid gid <<<"$spec"
  ref="coredump-detector/$name:$version"
  ctx="$work/context-$name"
  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs/etc/ssl/certs"
  cp "$here/rootfs/etc/passwd" "$here/rootfs/etc/group" "$ctx/rootfs/etc/"
  cp "$ca_bundle" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
  install -m 0755 "$bin_dir/$bin" "$ctx/$bin"
  chmod 0644 "$ctx/rootfs/etc/passwd" "$ctx/rootfs/etc/group" \
    "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
  # The image this tag named before, removed once replaced (rebuilds would otherwise pile
  # up untagged copies in the storage).
  previous="$(bah images --noheading --format '{{.ID}}' "$ref" 2>/dev/null | head -1 || true)"
  echo "build.sh: buildah build $ref" >&2
  bah build --isolation "$isolation" --layers=false \
    --label "org.opencontainers.image.title=$bin" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.source=coredump-detector" \
    -f "$here/$name.Containerfile" -t "$ref" "$ctx" >&2

  # --- 3. the binary starts in the image, as the image's user -----------------------
  current="$(bah images --noheading --format '{{.ID}}' "$ref" | head -1)"
  if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    bah rmi "$previous" >/dev/null 2>&1 || true
  fi
  ctr="$(bah from --pull-never "$ref")"
  cleanup_ctr() { bah rm "$ctr" >/dev/null 2>&1 || true; }
  trap cleanup_ctr EXIT
  user="$(bah inspect --type container --format '{{.OCIv1.Config.User}}' "$ctr")"
  [ "$user" = "$uid:$gid" ] || die "$ref runs as '$user', expected $uid:$gid"
  out="$(bah run --isolation "$isolation" --user "$uid:$gid" "$ctr" -- "/$bin" --version 2>&1)" ||
    die "$ref: /$bin --version failed inside the image: $out"
  echo "build.sh: $ref: $out" >&2
  bah run --isolation "$isolation" --user "$uid:$gid" "$ctr" -- "/$bin" --help >/dev/null 2>&1 ||
    die "$ref: /$bin --help failed inside the image"
  cleanup_ctr
  trap - EXIT

  if [ -n "$archive_dir" ]; then
    mkdir -p "$archive_dir"
    rm -f "$archive_dir/$name-$version.tar"
    bah push "$ref" "docker-archive:$archive_dir/$name-$version.tar:$ref" >&2
    echo "build.sh: wrote $archive_dir/$name-$version.tar" >&2
  fi
  if [ -n "$registry" ]; then
    bah push "$ref" "docker://$registry/coredump-detector/$name:$version" >&2
  fi
  built+=("$ref")
done

for ref in "${built[@]}"; do
  echo "$ref"
done

#!/usr/bin/env bash
# Builds the plugin's release archive and a krew manifest that names it:
#   kubectl-coredump/krew/package.sh [OUT_DIR] [URI]
# then: kubectl krew install --manifest=OUT_DIR/coredump.yaml --archive=OUT_DIR/kubectl-coredump-linux-amd64.tar.gz
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-dist}
uri=${2:-file://$PWD/$out/kubectl-coredump-linux-amd64.tar.gz}
cargo build --release -p kubectl-coredump
mkdir -p "$out/stage"
cp target/release/kubectl-coredump "$out/stage/"
printf 'Apache-2.0\n' > "$out/stage/LICENSE"
tar -C "$out/stage" -czf "$out/kubectl-coredump-linux-amd64.tar.gz" kubectl-coredump LICENSE
sha=$(sha256sum "$out/kubectl-coredump-linux-amd64.tar.gz" | cut -d' ' -f1)
sed -e "s|ARCHIVE_URI|$uri|" -e "s|ARCHIVE_SHA256|$sha|" kubectl-coredump/krew/coredump.yaml > "$out/coredump.yaml"
rm -rf "$out/stage"
echo "$out/coredump.yaml"

#!/usr/bin/env bash
# Builds the guest components for wasm32-wasip2 and copies them to
# $AIRSSYS_GUEST_DIR (default: $HOME/.cache/airssys-wasm/guests), where the
# agent's tests and benches look for them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${AIRSSYS_GUEST_TARGET:-$HOME/.cache/airssys-wasm/guest-target}"
out="${AIRSSYS_GUEST_DIR:-$HOME/.cache/airssys-wasm/guests}"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --manifest-path "$here/Cargo.toml" --release --target wasm32-wasip2 \
    --target-dir "$target"
mkdir -p "$out"
for wasm in "$target"/wasm32-wasip2/release/*.wasm; do
    cp -f "$wasm" "$out/$(basename "$wasm")"
done
ls "$out"

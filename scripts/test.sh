#!/usr/bin/env bash
# Installs whatever the tests need that is missing, then runs every check and test.
# This is the README's test command; .ci/run calls it on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s ==\n' "$*"; }

# --- install what is missing ------------------------------------------------------------------
# Debian packages the suite needs (none yet beyond the Rust toolchain; later features add
# redis-server, chromium, ...). Installed only when absent.
APT_PACKAGES=()
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
for c in rustfmt clippy; do
  if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "installing rust component $c"
    rustup component add "$c"
  fi
done

# --- checks -----------------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test"
cargo test --workspace --locked

log "autobahn websocket conformance, production limits (pinned: scripts/autobahn/expected.json)"
scripts/autobahn/run.sh

log "autobahn websocket conformance, 16 MiB limits (pinned: scripts/autobahn/expected-large.json)"
LIMITS=large scripts/autobahn/run.sh

log "all tests passed"

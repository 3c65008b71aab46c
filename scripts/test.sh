#!/usr/bin/env bash
# Installs whatever the tests need that is missing, then runs every check and test.
# This is the README's test command; .ci/run calls it on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s ==\n' "$*"; }

# --- install what is missing ------------------------------------------------------------------
# Debian packages the suite needs, installed only when what they provide is missing:
# python3 and pip (the Autobahn conformance suite installs itself with them), the Debian archive
# keyring (it downloads Python 2.7 from Debian's archive), procps (`kill`, used by the signal tests),
# nodejs and npm (the OpenID Connect provider the OIDC tests run, tests/oidc), chromium (Debian's
# Chromium, headless, driven by playwright-core from tests/browser for the browser tests),
# prometheus (for `promtool check metrics`, which parses `GET /metrics` in tests/metrics.rs),
# nginx (the reverse proxy the JavaScript client's fallback test puts in front of the gateway),
# redis-server, redis-sentinel and redis-tools (the cluster-mode tests start their own Redis,
# Sentinel and Redis Cluster on loopback: tests/cluster*.rs).
missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
dpkg -s debian-archive-keyring >/dev/null 2>&1 || missing+=(debian-archive-keyring)
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || missing+=(procps)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if [ ! -d tests/oidc/node_modules ]; then
  log "installing the OIDC test provider (npm ci --prefix tests/oidc)"
  npm ci --prefix tests/oidc --no-audit --no-fund
fi
if [ ! -d tests/browser/node_modules ]; then
  log "installing the browser driver (npm ci --prefix tests/browser: playwright-core, no browser download)"
  npm ci --prefix tests/browser --no-audit --no-fund
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

# --- the JavaScript client (clients/js) --------------------------------------------------------
# Its tests start the binary cargo test just built (target/debug/tslm) and drive Debian's Chromium.
if [ ! -d clients/js/node_modules ]; then
  log "installing the JavaScript client's dev dependencies (npm ci --prefix clients/js: typescript, esbuild, playwright-core; no browser download)"
  npm ci --prefix clients/js --no-audit --no-fund
fi
log "JavaScript client: build with tsc, then node --test against the real binary and headless Chromium"
TSLM_BIN="$PWD/target/debug/tslm" npm test --prefix clients/js

# --- the AsyncAPI document (docs/asyncapi.yaml) -------------------------------------------------
# Parsed by @asyncapi/parser (pinned in tests/asyncapi), and every golden fixture of
# crates/tslm-protocol/fixtures/v1 checked against its schemas.
if [ ! -d tests/asyncapi/node_modules ]; then
  log "installing the AsyncAPI parser (npm ci --prefix tests/asyncapi)"
  npm ci --prefix tests/asyncapi --no-audit --no-fund
fi
log "AsyncAPI: docs/asyncapi.yaml valid, the golden fixtures match it"
node tests/asyncapi/check.mjs

# --- packaging (packaging/container-test.sh) --------------------------------------------------
# Installs what it needs (apt: podman, runc, musl-tools, systemd; the rust musl target), builds
# the static binary and the FROM scratch image, smoke-tests the image under podman (health check,
# publish and subscribe, podman stop drains and exits 0), parses the compose file and verifies the
# systemd unit.
log "packaging: static binary, image, compose file, systemd unit (packaging/container-test.sh)"
packaging/container-test.sh

log "autobahn websocket conformance, production limits (pinned: scripts/autobahn/expected.json)"
scripts/autobahn/run.sh

log "autobahn websocket conformance, 16 MiB limits (pinned: scripts/autobahn/expected-large.json)"
LIMITS=large scripts/autobahn/run.sh

# --- HTTP API contract (scripts/contract/run.sh) ----------------------------------------------
# Schemathesis (pinned in the script, installed into .tools/contract) against docs/openapi.yaml:
# every operation, a fixed seed and number of examples, every check (response schemas included).
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  log "installing python3-venv"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
fi
log "HTTP API contract: schemathesis against docs/openapi.yaml (scripts/contract/run.sh)"
scripts/contract/run.sh
# --- end of the HTTP API contract ------------------------------------------------------------

log "all tests passed"

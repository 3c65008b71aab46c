#!/usr/bin/env bash
# The HTTP API contract test: Schemathesis (property-based, pinned below) generates requests for
# EVERY operation of docs/openapi.yaml, valid and invalid ones, sends them to the real `tslm`
# binary (a private listener with auto-create on loopback) and checks every response against the
# document (status codes, headers, content type, response schemas) and that valid requests are
# accepted and invalid ones refused. Fails on any failure.
#   scripts/contract/run.sh            fixed seed, EXAMPLES (default 100) examples per operation
# Schemathesis is installed with pip into a venv under .tools/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
SCHEMATHESIS_VERSION=4.32.5
EXAMPLES="${EXAMPLES:-100}"
SEED="${SEED:-20261206}"
TOOLS="${TOOLS:-$PWD/.tools}"
VENV="$TOOLS/contract"
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked --quiet --bin tslm
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The limits that would turn a fuzzer's many requests into 429s are raised out of the way: they
# are tested by tests/hostile_http.rs and tests/abuse.rs.
cat > "$WORK/tslm.toml" <<TOML
[listener.private]
ip = "127.0.0.1"
port = $PORT
default_endpoint_permissions = ["CreateChannel", "NotifyChannel", "Subscribe"]
max_message_size = 65536
handshakes_per_ip_per_second = 1000000
max_connections_per_ip = 1000000
max_rejected_commands_per_second = 1000000
failed_auths_per_ip_per_minute = 1000000

[channel."*"]
auto_create = true
backlog_messages = 100
replies = true
TOML
RUST_LOG=warn target/debug/tslm serve --config "$WORK/tslm.toml" 2>"$WORK/server.log" &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null && break
  sleep 0.1
done

# Run from the scratch folder: Schemathesis keeps a cache of failures in `.schemathesis/` there.
ROOT=$PWD
cd "$WORK"
"$VENV/bin/schemathesis" --config-file "$ROOT/scripts/contract/schemathesis.toml" \
  run "$ROOT/docs/openapi.yaml" \
  --url "http://127.0.0.1:$PORT" \
  --checks all \
  --max-examples "$EXAMPLES" \
  --seed "$SEED" \
  --generation-database none \
  --workers 1 \
  --no-color \
  ${SCHEMATHESIS_ARGS:-}

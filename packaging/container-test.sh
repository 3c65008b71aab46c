#!/usr/bin/env bash
# Packaging checks: builds the fully static (musl) binary and the `FROM scratch` image with
# podman, smoke-tests the image (starts, answers on loopback, health check, a subscriber receives
# what a publisher publishes, `podman stop` drains it and it exits 0), parses compose.yaml and
# verifies the systemd unit. Installs what is missing (apt: podman, runc, musl-tools, systemd,
# binutils, python3-yaml; the rust musl target). Leaves nothing behind: the image store lives in a scratch folder.
#   packaging/container-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s ==\n' "$*"; }
fail() { printf 'container-test: %s\n' "$*" >&2; exit 1; }

# --- install what is missing ------------------------------------------------------------------
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v strip >/dev/null 2>&1 || missing+=(binutils)
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
TARGET=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$TARGET"; then
  log "installing the rust target $TARGET"
  rustup target add "$TARGET"
fi

# --- the static binary ------------------------------------------------------------------------
log "cargo build --release --target $TARGET (ring's C code is compiled with musl-gcc)"
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$TARGET" --bin tslm
BIN="$PWD/target/$TARGET/release/tslm"
ldd "$BIN" 2>&1 | grep -Eq 'not a dynamic executable|statically linked' \
  || fail "$BIN is not static: $(ldd "$BIN" 2>&1)"

WORK=$(mktemp -d)
NAME="tslm-container-test-$$"
IMAGE="localhost/tslm:test-$$"
SUBS=()

# --- podman, configured for this machine ------------------------------------------------------
# A project-local configuration, generated now: the runc runtime, cgroupfs and file events (no
# systemd inside a container), and ulimits no higher than this shell's hard limits (podman's
# defaults, 1048576 and more, exceed them here, and then runc cannot start the container:
# "error setting rlimits ... operation not permitted"). conmon's process limit is capped at the
# kernel's pid_max, so nproc is kept at or below that too. The image store is a scratch folder.
ulimit_entry() { # name, hard limit
  [ "$2" = unlimited ] && return 0
  printf '"%s=%s:%s", ' "$1" "$2" "$2"
}
NPROC=$(ulimit -Hu)
PID_MAX=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo unlimited)
if [ "$NPROC" = unlimited ] || { [ "$PID_MAX" != unlimited ] && [ "$PID_MAX" -lt "$NPROC" ]; }; then
  NPROC=$PID_MAX
fi
ULIMITS="$(ulimit_entry nofile "$(ulimit -Hn)")$(ulimit_entry nproc "$NPROC")"
cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = [${ULIMITS%, }]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/events.log"
CONF
cat > "$WORK/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
CONF
export CONTAINERS_CONF="$WORK/containers.conf" CONTAINERS_STORAGE_CONF="$WORK/storage.conf"

cleanup() {
  for p in "${SUBS[@]}"; do kill "$p" 2>/dev/null || true; done
  podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK" 2>/dev/null || true
}
trap cleanup EXIT

# --- the image --------------------------------------------------------------------------------
log "podman build (FROM scratch, docker format for HEALTHCHECK)"
mkdir "$WORK/context"
cp "$BIN" "$WORK/context/tslm"
# The release profile keeps line tables for profiling (debug = 1); the image does not need them.
strip "$WORK/context/tslm"
podman build --quiet --format docker -f packaging/Containerfile -t "$IMAGE" "$WORK/context"
podman image inspect "$IMAGE" --format '{{.Config.User}}' | grep -qx '65532:65532' \
  || fail "the image does not run as 65532:65532"
podman image inspect "$IMAGE" --format '{{.HealthCheck.Test}}' | grep -q 'tslm health' \
  || fail "the image has no HEALTHCHECK running tslm health"
SIZE=$(podman image inspect "$IMAGE" --format '{{.Size}}')
echo "image $IMAGE: $SIZE bytes"

# --- smoke test -------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PUBLIC=$(free_port); PRIVATE=$(free_port)
cat > "$WORK/tslm.toml" <<TOML
[server]
drain_delay_seconds = 1
shutdown_grace_seconds = 2

[listener.public]
ip = "127.0.0.1"
port = $PUBLIC
default_endpoint_permissions = ["Subscribe"]

[listener.private]
ip = "127.0.0.1"
port = $PRIVATE
default_endpoint_permissions = ["CreateChannel", "NotifyChannel"]
TOML
chmod 0644 "$WORK/tslm.toml"

log "podman run (host network, read-only root and configuration, as 65532)"
# Health-check timers are systemd timers, and there is no systemd here: the timer is disabled and
# the check run on demand below (`podman healthcheck run`), as a timer would run it.
podman run -d --name "$NAME" --network host --read-only --health-interval disable \
  -v "$WORK/tslm.toml:/config/tslm.toml:ro" \
  --health-cmd "[\"/usr/local/bin/tslm\",\"health\",\"--url\",\"http://127.0.0.1:$PUBLIC/readyz\"]" \
  "$IMAGE" >/dev/null

ready=""
for _ in $(seq 150); do
  if "$BIN" health --url "http://127.0.0.1:$PUBLIC/readyz" --timeout-seconds 1 >/dev/null 2>&1; then
    ready=yes; break
  fi
  sleep 0.2
done
[ -n "$ready" ] || { podman logs "$NAME" >&2 || true; fail "the container did not become ready"; }
echo "ready: $("$BIN" health --url "http://127.0.0.1:$PRIVATE/readyz")"
podman healthcheck run "$NAME" || fail "podman healthcheck run: unhealthy"
echo "healthcheck (inside the container, the image's own binary): healthy"
[ "$(podman top "$NAME" huser | tail -n +2 | tr -d ' ')" = 65532 ] \
  || fail "the gateway does not run as uid 65532: $(podman top "$NAME" huser user)"

log "publish and subscribe through the container"
wait_subscribed() { # stderr file of a `tslm sub`
  for _ in $(seq 100); do grep -q '"subscribed"' "$1" 2>/dev/null && return 0; sleep 0.1; done
  fail "the subscriber did not subscribe: $(cat "$1")"
}
"$BIN" create "ws://127.0.0.1:$PRIVATE" smoke >/dev/null
"$BIN" sub "ws://127.0.0.1:$PUBLIC" smoke -n 1 >"$WORK/sub.out" 2>"$WORK/sub.err" &
SUB=$!; SUBS+=("$SUB")
wait_subscribed "$WORK/sub.err"
"$BIN" pub "ws://127.0.0.1:$PRIVATE" smoke '{"hello":"container"}' >/dev/null
wait "$SUB" || fail "the subscriber failed: $(cat "$WORK/sub.err")"
grep -q '"hello":"container"' "$WORK/sub.out" || fail "not delivered: $(cat "$WORK/sub.out")"
echo "delivered: $(cat "$WORK/sub.out")"

log "podman stop: drain, 1001 with retry_after_ms, exit 0"
"$BIN" sub "ws://127.0.0.1:$PUBLIC" smoke >/dev/null 2>"$WORK/stay.err" &
STAY=$!; SUBS+=("$STAY")
wait_subscribed "$WORK/stay.err"
podman stop --time 20 "$NAME" >/dev/null
CODE=$(podman inspect "$NAME" --format '{{.State.ExitCode}}')
[ "$CODE" = 0 ] || { podman logs "$NAME" >&2 || true; fail "the gateway exited with $CODE"; }
wait "$STAY" || true
grep -q 'code 1001: shutdown; retry_after_ms=' "$WORK/stay.err" \
  || fail "the subscriber was not closed with 1001 and a retry hint: $(cat "$WORK/stay.err")"
echo "subscriber: $(tail -n 1 "$WORK/stay.err")"
podman logs "$NAME" >"$WORK/gateway.log" 2>&1
python3 - "$WORK/gateway.log" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines, "no log"
for l in lines:
    v = json.loads(l)
    assert {"timestamp", "level", "message"} <= v.keys(), l
messages = [json.loads(l)["message"] for l in lines]
for m in ("draining: /readyz answers 503, still serving until the drain delay ends", "shutdown complete"):
    assert m in messages, (m, messages)
print(f"log: {len(lines)} JSON lines, drained and shut down cleanly")
PY

# --- compose file -----------------------------------------------------------------------------
log "compose.yaml parses"
python3 - packaging/compose.yaml <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
svc = doc["services"]["tslm"]
assert svc["volumes"] == ["./tslm.toml:/config/tslm.toml:ro"], svc["volumes"]
assert "tslm" in svc["healthcheck"]["test"][1], svc["healthcheck"]
print("compose.yaml: services", ", ".join(doc["services"]))
PY
"$BIN" check-config packaging/tslm.toml >/dev/null || fail "packaging/tslm.toml does not validate"

# --- systemd unit -----------------------------------------------------------------------------
# `systemd-analyze verify` runs without a running systemd, but needs ExecStart's program to
# exist: the unit is checked as written with only that path pointed at the binary just built.
# It exits 0 on unknown keys and bad values (it only warns), so any output is a failure.
log "systemd-analyze verify packaging/tslm.service"
mkdir "$WORK/unit"
sed "s#/usr/local/bin/tslm#$BIN#g" packaging/tslm.service >"$WORK/unit/tslm.service"
OUT=$(systemd-analyze verify --man=no "$WORK/unit/tslm.service" 2>&1) \
  || fail "systemd-analyze verify: $OUT"
[ -z "$OUT" ] || fail "systemd-analyze verify: $OUT"
echo "tslm.service: verified"
if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
  systemd-analyze security --offline=yes --no-pager "$WORK/unit/tslm.service" 2>/dev/null | tail -n 1 || true
fi

log "packaging checks passed"

#!/usr/bin/env bash
# Side-by-side fan-out benchmark: TSLM, nats-server (WebSocket listener) and nginx + nchan, each
# started fresh on loopback with the configs in this folder, driven by the same `tslm bench`,
# scenario by scenario, in alternation, for several rounds. Prints medians (min-max) and ratios.
#
#   scripts/bench/compare.sh [ROUNDS] [SCENARIO...]      (default: 3 rounds, every scenario)
#   SYSTEMS="tslm nats" scripts/bench/compare.sh 1 fan1000-flat
#   PREV=v0.2.0 SYSTEMS="tslm tslm-prev" scripts/bench/compare.sh    (this tree against a git revision)
#   SYSTEMS="tslm nchan" scripts/bench/compare.sh 3 sse1000-flat sse5000-flat sse-idle10000
#
# The `sse*` scenarios subscribe with Server-Sent Events (TSLM's GET /v1/events, nchan's
# EventSource location /ev/NAME); nats-server has no SSE and sits them out.
#
# With PREV=REV, the system `tslm-prev` is TSLM built from git revision REV (checked out with
# `git worktree` under target/bench/prev-src, built into target/bench/prev-target), run with the same
# config and driven by the same (current) load generator; PREV_BIN=PATH uses a binary built elsewhere.
#
# Installs nats-server, nginx-light and libnginx-mod-nchan from Debian when missing.
# Results: target/bench/results-<date>.jsonl and a markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=scripts/bench
ROUNDS=${1:-3}; shift || true
SYSTEMS=${SYSTEMS:-"tslm nats nchan"}

need=()
command -v nats-server >/dev/null || need+=(nats-server)
command -v nginx >/dev/null || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || need+=(libnginx-mod-nchan)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
cargo build --release --locked --quiet
BIN=target/release/tslm
PREV_BIN=${PREV_BIN:-}
if [ -z "$PREV_BIN" ] && [ -n "${PREV:-}" ]; then
  src=target/bench/prev-src
  if [ -d "$src" ]; then git -C "$src" checkout -q --detach "$PREV"; else git worktree add -q --detach "$src" "$PREV"; fi
  (cd "$src" && CARGO_TARGET_DIR="$PWD/../prev-target" cargo build --release --locked --quiet)
  PREV_BIN=target/bench/prev-target/release/tslm
fi
case " $SYSTEMS " in *" tslm-prev "*) [ -x "$PREV_BIN" ] || { echo "tslm-prev needs PREV=REV or PREV_BIN=PATH" >&2; exit 2; } ;; esac

# name:subscribers:channels:messages:rate(0 = flat out)[:transport (ws, the default, or sse)]
ALL_SCENARIOS=(
  fan100-1k:100:1:5000:1000
  fan1000-1k:1000:1:5000:1000
  fan5000-1k:5000:1:5000:1000
  fan100-flat:100:1:100000:0
  fan1000-flat:1000:1:10000:0
  fan5000-flat:5000:1:2000:0
  ch1000x5-flat:5000:1000:20000:0
  idle10000:10000:1:0:0
  sse1000-flat:1000:1:2000:0:sse
  sse5000-flat:5000:1:400:0:sse
  sse-idle10000:10000:1:0:0:sse
)
if [ $# -gt 0 ]; then
  SCENARIOS=()
  for want in "$@"; do for s in "${ALL_SCENARIOS[@]}"; do [ "${s%%:*}" = "$want" ] && SCENARIOS+=("$s"); done; done
else
  SCENARIOS=("${ALL_SCENARIOS[@]}")
fi

# 10,000 subscribers need as many descriptors in the server (nginx inherits this limit; TSLM and
# the load generator raise their own to the hard limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d)
mkdir -p target/bench
OUT=target/bench/results-$(date +%Y%m%d-%H%M%S).jsonl
SERVER=""
stop_server() {
  if [ -n "$SERVER" ]; then kill -INT "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT

wait_port() {
  for _ in $(seq 200); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server did not open port $1" >&2; return 1
}

port_free() {
  if python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then
    echo "port $1 is already in use: stop whatever listens there first" >&2; exit 1
  fi
}

# Starts $1 fresh; sets SERVER (the PID to stop), MEASURE (the PID whose memory and CPU count),
# SUB and PUB.
start_server() {
  for p in 19380 19381 19580 19680; do port_free $p; done
  case $1 in
    tslm|tslm-prev)
      bin=$BIN; [ "$1" = tslm-prev ] && bin=$PREV_BIN
      "$bin" serve --config $HERE/tslm.toml 2>"$WORK/tslm.log" & SERVER=$!; MEASURE=$SERVER
      SUB=127.0.0.1:19380; PUB=127.0.0.1:19381; wait_port 19380; wait_port 19381 ;;
    nats)
      nats-server -c $HERE/nats.conf >"$WORK/nats.log" 2>&1 & SERVER=$!; MEASURE=$SERVER
      SUB=127.0.0.1:19580; PUB=127.0.0.1:19580; wait_port 19580 ;;
    nchan)
      rm -rf "$WORK/nginx"; mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
      nginx -p "$WORK/nginx" -c "$PWD/$HERE/nginx-nchan.conf" -g 'daemon off;' 2>/dev/null & SERVER=$!
      SUB=127.0.0.1:19680; PUB=127.0.0.1:19680; wait_port 19680
      MEASURE=$(pgrep -P "$SERVER" | head -1) ;;   # the single worker process serves everything
  esac
  kill -0 "$SERVER" 2>/dev/null || { echo "$1 did not start" >&2; exit 1; }
}

for round in $(seq "$ROUNDS"); do
  for sc in "${SCENARIOS[@]}"; do
    IFS=: read -r name subs chans msgs rate transport <<<"$sc"
    transport=${transport:-ws}
    for sys in $SYSTEMS; do
      [ "$transport" = sse ] && [ "$sys" = nats ] && continue
      start_server "$sys"
      args=(bench --target "${sys%-prev}" --transport "$transport" --sub "$SUB" --pub "$PUB" -s "$subs" -c "$chans" -m "$msgs" -p 100 --server-pid "$MEASURE" --json --quiet)
      [ "$rate" != 0 ] && args+=(-r "$rate")
      printf '[round %s] %-14s %-6s ' "$round" "$name" "$sys" >&2
      if line=$("$BIN" "${args[@]}" 2>"$WORK/bench.err"); then :; else line=${line:-}; fi
      if [ -z "$line" ]; then
        line="{\"target\":\"$sys\",\"error\":$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read().strip()))' "$WORK/bench.err")}"
      fi
      if [ "$sys" = tslm-prev ]; then
        line=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["target"]="tslm-prev"; print(json.dumps(r))' "$line")
      fi
      echo "{\"round\":$round,\"scenario\":\"$name\",\"result\":$line}" >> "$OUT"
      python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r.get("error") or "%.0f/s p99 %.1f ms lost %d" % (r["deliveries_per_second"], r["latency_ms"]["p99"], r["lost"]))' "$line" >&2
      stop_server
      sleep 0.5
    done
  done
done
echo "results: $OUT" >&2
python3 $HERE/summarize.py "$OUT"

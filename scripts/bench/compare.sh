#!/usr/bin/env bash
# Side-by-side fan-out benchmark: TSLM, nats-server (WebSocket listener) and nginx + nchan, each
# started fresh on loopback with the configs in this folder, driven by the same `tslm bench`,
# scenario by scenario, in alternation, for several rounds. Prints medians (min-max) and ratios.
#
#   SYSTEMS="tslm tslm-cluster tslm-cluster2 tslm-cluster3" scripts/bench/compare.sh 3 fan1000-flat pub-acked
#
# Cluster mode: `tslm-cluster` is the same binary and config plus a `[cluster]` table pointing at
# a redis-server started fresh for each run (port 19390, no persistence) and stopped by its PID
# afterwards; `tslm-cluster2` and `tslm-cluster3` are 2 and 3 gateways sharing that Redis, the
# subscribers spread round robin over the nodes, the publisher on the first. Redis's CPU is
# reported apart (`aux_cpu_seconds`) and `redis-cli INFO commandstats` is read before and after
# each run (`redis_calls`: commands per kind, so the round trips per publish can be counted).
# CLUSTER_CONFIG adds lines to the `[cluster]` table, e.g. CLUSTER_CONFIG="probe_interval_ms = 60000".
#   scripts/bench/compare.sh [ROUNDS] [SCENARIO...]      (default: 3 rounds, every scenario)
#   SYSTEMS="tslm nats" scripts/bench/compare.sh 1 fan1000-flat
#   PREV=v0.2.0 SYSTEMS="tslm tslm-prev" scripts/bench/compare.sh    (this tree against a git revision)
#   SYSTEMS="tslm nchan" scripts/bench/compare.sh 3 sse1000-flat sse5000-flat sse-idle10000
#   SYSTEMS="tslm tslm-co2 nats" scripts/bench/compare.sh 3 fan1000-1k   (tslm-coN: write_coalesce_ms = N)
#
# The `sse*` scenarios subscribe with Server-Sent Events (TSLM's GET /v1/events, nchan's
# EventSource location /ev/NAME); nats-server has no SSE and sits them out.
#
# With PREV=REV, the system `tslm-prev` is TSLM built from git revision REV (checked out with
# `git worktree` under target/bench/prev-src, built into target/bench/prev-target), run with the same
# config and driven by the same (current) load generator; PREV_BIN=PATH uses a binary built elsewhere.
#
# TSLM's ports start at BENCH_PORT (default 19380: public, then private; cluster node k at
# +2k; Redis at +10), so that two checkouts can run side by side; nats-server's WebSocket port is
# NATS_PORT (default 19580, its client port NATS_PORT - 58) and nchan keeps its own.
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

# name:subscribers:channels:messages:rate(0 = flat out)[:publishers[:transport (ws, the default, or sse)]]
# With 0 subscribers, publishing alone is measured (acknowledged publishes/s; TSLM systems only).
ALL_SCENARIOS=(
  fan100-1k:100:1:5000:1000
  fan1000-1k:1000:1:5000:1000
  fan5000-1k:5000:1:5000:1000
  fan100-flat:100:1:100000:0
  fan1000-flat:1000:1:10000:0
  fan5000-flat:5000:1:2000:0
  ch1000x5-flat:5000:1000:20000:0
  idle10000:10000:1:0:0
  sse1000-flat:1000:1:2000:0:1:sse
  sse5000-flat:5000:1:400:0:1:sse
  sse-idle10000:10000:1:0:0:1:sse
  pub-acked:0:1:50000:0:1
  pub4-acked:0:4:100000:0:4
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
BASE=${BENCH_PORT:-19380}
SERVER=""; SERVERS=(); REDIS=""; REDIS_PORT=$((BASE + 10)); NATS_PORT=${NATS_PORT:-19580}
stop_server() {
  local p
  for p in "${SERVERS[@]}" $SERVER; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${SERVERS[@]}" $SERVER; do wait "$p" 2>/dev/null || true; done
  SERVER=""; SERVERS=()
  if [ -n "$REDIS" ]; then kill -TERM "$REDIS" 2>/dev/null || true; wait "$REDIS" 2>/dev/null || true; REDIS=""; fi
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

# tslm.toml with the ports of node $1 (0, 1, 2).
tslm_config() {
  sed -e "s/^port = 19380$/port = $((BASE + 2 * $1))/" -e "s/^port = 19381$/port = $((BASE + 2 * $1 + 1))/" $HERE/tslm.toml
}

# Until node $1's /readyz answers 200 (a cluster node follows every shard).
wait_ready() {
  for _ in $(seq 200); do
    python3 -c "
import socket,sys
s=socket.create_connection(('127.0.0.1',$1),0.5); s.sendall(b'GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
sys.exit(0 if s.recv(64).startswith(b'HTTP/1.1 200') else 1)" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "node on port $1 never became ready" >&2; return 1
}

# Redis's `INFO commandstats` as one JSON object {command: calls}.
redis_calls() {
  redis-cli -p $REDIS_PORT INFO commandstats | python3 -c '
import json,re,sys
print(json.dumps({m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_([^:]+):calls=(\d+)", sys.stdin.read())}))'
}

# Starts $1 fresh; sets SERVER (the PID to stop), MEASURE (the PIDs whose memory and CPU count,
# comma-separated), AUX (PIDs whose CPU counts apart), TARGET, SUB (comma-separated) and PUB.
start_server() {
  AUX=""; TARGET=${1%-prev}
  case $1 in
    tslm*) for p in $(seq $BASE $((BASE + 5))) $REDIS_PORT; do port_free $p; done ;;
    nats) port_free $NATS_PORT ;;
    nchan) port_free 19680 ;;
  esac
  case $1 in
    tslm-cluster|tslm-cluster[0-9])
      TARGET=tslm; nodes=${1#tslm-cluster}; nodes=${nodes:-1}
      redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
        >"$WORK/redis.log" 2>&1 & REDIS=$!; AUX=$REDIS; wait_port $REDIS_PORT
      SUB=""; MEASURE=""
      for k in $(seq 0 $((nodes - 1))); do
        { tslm_config $k; printf '\n[cluster]\nredis = ["redis://127.0.0.1:%s"]\n%s\n' $REDIS_PORT "${CLUSTER_CONFIG:-}"; } >"$WORK/node$k.toml"
        "$BIN" serve --config "$WORK/node$k.toml" 2>"$WORK/node$k.log" & SERVERS+=($!)
        MEASURE=${MEASURE:+$MEASURE,}$!; SUB=${SUB:+$SUB,}127.0.0.1:$((BASE + 2 * k))
      done
      for k in $(seq 0 $((nodes - 1))); do wait_port $((BASE + 2 * k + 1)); wait_ready $((BASE + 2 * k)); done
      PUB=127.0.0.1:$((BASE + 1)); SERVER="" ;;
    tslm|tslm-prev|tslm-co[0-9]*)
      bin=$BIN; [ "$1" = tslm-prev ] && bin=$PREV_BIN; TARGET=tslm
      tslm_config 0 >"$WORK/tslm.toml"
      # tslm-coN: write coalescing of N ms on the subscribers' listener.
      case $1 in tslm-co*) sed -i "s/^port = $BASE\$/&\nwrite_coalesce_ms = ${1#tslm-co}/" "$WORK/tslm.toml" ;; esac
      "$bin" serve --config "$WORK/tslm.toml" 2>"$WORK/tslm.log" & SERVER=$!; MEASURE=$SERVER
      SUB=127.0.0.1:$BASE; PUB=127.0.0.1:$((BASE + 1)); wait_port $BASE; wait_port $((BASE + 1)) ;;
    nats)
      sed -e "s/^port: 19522$/port: $((NATS_PORT - 58))/" -e "s/port: 19580,/port: $NATS_PORT,/" \
        $HERE/nats.conf >"$WORK/nats.conf"
      nats-server -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 & SERVER=$!; MEASURE=$SERVER
      SUB=127.0.0.1:$NATS_PORT; PUB=127.0.0.1:$NATS_PORT; wait_port $NATS_PORT ;;
    nchan)
      rm -rf "$WORK/nginx"; mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
      nginx -p "$WORK/nginx" -c "$PWD/$HERE/nginx-nchan.conf" -g 'daemon off;' 2>/dev/null & SERVER=$!
      SUB=127.0.0.1:19680; PUB=127.0.0.1:19680; wait_port 19680
      MEASURE=$(pgrep -P "$SERVER" | head -1) ;;   # the single worker process serves everything
  esac
  for p in $SERVER "${SERVERS[@]}"; do kill -0 "$p" 2>/dev/null || { echo "$1 did not start" >&2; exit 1; }; done
}

for round in $(seq "$ROUNDS"); do
  for sc in "${SCENARIOS[@]}"; do
    IFS=: read -r name subs chans msgs rate pubs transport <<<"$sc"
    transport=${transport:-ws}
    for sys in $SYSTEMS; do
      [ "$transport" = sse ] && [ "$sys" = nats ] && continue
      # Publishing alone (no subscribers) is paced by TSLM's acknowledgements.
      [ "$subs" = 0 ] && case $sys in tslm*) ;; *) continue ;; esac
      start_server "$sys"
      args=(bench --target "$TARGET" --transport "$transport" --sub "$SUB" --pub "$PUB" -s "$subs" -c "$chans" -m "$msgs" -p 100 -P "${pubs:-1}" --server-pid "$MEASURE" --json --quiet)
      [ "$rate" != 0 ] && args+=(-r "$rate")
      [ -n "$AUX" ] && args+=(--aux-pid "$AUX")
      printf '[round %s] %-14s %-13s ' "$round" "$name" "$sys" >&2
      [ -n "$REDIS" ] && before=$(redis_calls)
      if line=$("$BIN" "${args[@]}" 2>"$WORK/bench.err"); then :; else line=${line:-}; fi
      if [ -n "$REDIS" ] && [ -n "$line" ]; then
        line=$(python3 -c '
import json,sys
r, a, b = (json.loads(x) for x in sys.argv[1:4])
r["redis_calls"] = {k: v - a.get(k, 0) for k, v in b.items() if v - a.get(k, 0)}
print(json.dumps(r))' "$line" "$before" "$(redis_calls)")
      fi
      if [ -z "$line" ]; then
        line="{\"target\":\"$sys\",\"error\":$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read().strip()))' "$WORK/bench.err")}"
      fi
      if [ "$sys" != "$TARGET" ]; then
        line=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["target"]=sys.argv[2]; print(json.dumps(r))' "$line" "$sys")
      fi
      echo "{\"round\":$round,\"scenario\":\"$name\",\"result\":$line}" >> "$OUT"
      python3 -c '
import json,sys
r=json.loads(sys.argv[1])
print(r.get("error") or (("%.0f publishes/s" % r["publishes_per_second"]) if not r["subscribers"] else
      "%.0f/s p99 %.1f ms lost %d" % (r["deliveries_per_second"], r["latency_ms"]["p99"], r["lost"])))' "$line" >&2
      stop_server
      # Gateway logs of cluster runs are kept (a gap or a resync is worth reading).
      case $sys in tslm-cluster*)
        mkdir -p "$OUT.logs"; for f in "$WORK"/node*.log; do mv "$f" "$OUT.logs/$round-$name-$sys-$(basename "$f")"; done ;;
      esac
      sleep 0.5
    done
  done
done
echo "results: $OUT" >&2
python3 $HERE/summarize.py "$OUT"

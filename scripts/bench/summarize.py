#!/usr/bin/env python3
"""Summarizes compare.sh results: per scenario and system, medians with (min-max), and ratios."""
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
data = defaultdict(lambda: defaultdict(list))
order = []
for r in rows:
    sc, res = r["scenario"], r["result"]
    if sc not in order:
        order.append(sc)
    data[sc][res["target"]].append(res)

def med(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)

def fmt(t, scale=1.0, digits=0):
    m, lo, hi = t
    if m is None:
        return "-"
    f = "{:.%df}" % digits
    return f"{f.format(m*scale)} ({f.format(lo*scale)}-{f.format(hi*scale)})"

KNOWN = ["tslm", "tslm-prev", "tslm-cluster", "tslm-cluster2", "tslm-cluster3", "nats", "nchan"]
# Variants such as tslm-co2 (write coalescing) come after tslm-prev, in name order.
EXTRA = sorted({res for sc in data.values() for res in sc} - set(KNOWN))
SYSTEMS = KNOWN[:2] + EXTRA + KNOWN[2:]
# The systems compared with nats and nchan: TSLM in memory, and its variants.
OURS = ["tslm"] + [s for s in EXTRA if s.startswith("tslm-co")]

def nodes(sys_):
    return int(sys_[len("tslm-cluster"):] or 1) if sys_.startswith("tslm-cluster") else 1

def us_per_delivery(r):
    """Server CPU (all nodes) per delivery, in microseconds."""
    if r.get("server_cpu_seconds") is None or not r.get("deliveries"):
        return None
    return r["server_cpu_seconds"] / r["deliveries"] * 1e6

def us_per_delivery_node(r, k, n):
    """Node k's CPU per delivery it made (subscribers are spread evenly over n nodes)."""
    each = r.get("server_cpu_seconds_each") or []
    if k >= len(each) or not r.get("deliveries"):
        return None
    return each[k] / (r["deliveries"] / n) * 1e6

print("| scenario | system | deliveries/s | publishes/s | p99 ms | p999 ms | lost | dup/reorder | server CPU s | µs CPU/delivery | Redis CPU s | server peak RSS MiB | idle bytes/conn | bench CPU s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
ratios = []
for sc in order:
    for sys_ in SYSTEMS:
        runs = data[sc].get(sys_, [])
        if not runs:
            continue
        ok = [r for r in runs if "error" not in r]
        errs = len(runs) - len(ok)
        g = lambda k: med([r.get(k) for r in ok])
        lat = lambda q: med([r["latency_ms"][q] for r in ok])
        idle = "idle" in sc
        nodel = idle or all(not r.get("subscribers") for r in ok)
        print(f"| {sc} | {sys_}{' (%d failed)' % errs if errs else ''} | "
              f"{'-' if nodel else fmt(g('deliveries_per_second'))} | {fmt(g('publishes_per_second')) if nodel and not idle else '-'} | "
              f"{'-' if nodel else fmt(lat('p99'), digits=1)} | "
              f"{'-' if nodel else fmt(lat('p999'), digits=1)} | {sum(r['lost'] for r in ok)} | "
              f"{sum(r['duplicated_or_reordered'] for r in ok)} | {fmt(g('server_cpu_seconds'), digits=2)} | "
              f"{'-' if nodel else fmt(med([us_per_delivery(r) for r in ok]), digits=2)} | {fmt(g('aux_cpu_seconds'), digits=2)} | "
              f"{fmt(g('server_rss_peak_kib'), 1/1024, 1)} | {fmt(g('server_idle_bytes_per_connection'))} | {fmt(g('bench_cpu_seconds'), digits=2)} |")
    t = data[sc].get("tslm", [])
    for ours, other in [(u, o) for u in OURS for o in ["nats", "nchan"]]:
        o = data[sc].get(other, [])
        ok_t = [r for r in data[sc].get(ours, []) if "error" not in r]
        ok_o = [r for r in o if "error" not in r]
        if ok_t and ok_o:
            if "idle" in sc:
                a = statistics.median([r["server_idle_bytes_per_connection"] or 0 for r in ok_o])
                b = statistics.median([r["server_idle_bytes_per_connection"] or 0 for r in ok_t])
                ratios.append(f"{sc}: memory per idle connection, {other} / {ours} = {a / b:.2f}" if b else f"{sc}: -")
            else:
                a = statistics.median([r["deliveries_per_second"] for r in ok_t])
                b = statistics.median([r["deliveries_per_second"] for r in ok_o])
                pa = statistics.median([r["latency_ms"]["p99"] for r in ok_t])
                pb = statistics.median([r["latency_ms"]["p99"] for r in ok_o])
                ca = statistics.median([us_per_delivery(r) or 0 for r in ok_t])
                cb = statistics.median([us_per_delivery(r) or 0 for r in ok_o])
                ratios.append(f"{sc}: deliveries/s {ours} / {other} = {a / b:.2f}; p99 {ours} / {other} = {pa / pb:.2f}; "
                              f"µs CPU per delivery {ours} / {other} = {ca / cb:.2f}" if b and pb and cb else f"{sc}: -")
    # This tree against an earlier revision (PREV=REV): the no-regression check.
    p = [r for r in data[sc].get("tslm-prev", []) if "error" not in r]
    n = [r for r in t if "error" not in r]
    if p and n:
        m = lambda runs, f: statistics.median([f(r) for r in runs])
        if "idle" in sc:
            a, b = m(n, lambda r: r["server_idle_bytes_per_connection"] or 0), m(p, lambda r: r["server_idle_bytes_per_connection"] or 0)
            ratios.append(f"{sc}: idle bytes per connection, tslm / tslm-prev = {a / b:.2f}" if b else f"{sc}: -")
        else:
            cpd = lambda r: r["server_cpu_seconds"] / max(r["deliveries"], 1) if r.get("deliveries") else None
            # Publishing alone (no subscribers): acknowledged publishes/s instead of deliveries/s.
            rate = "publishes_per_second" if not any(r.get("subscribers") for r in n) else "deliveries_per_second"
            ra, rb = m(n, lambda r: r.get(rate) or 0), m(p, lambda r: r.get(rate) or 0)
            parts = [f"{rate.replace('_per_second', '')}/s tslm / tslm-prev = " + (f"{ra / rb:.2f}" if rb else "-"),
                     f"p99 = {m(n, lambda r: r['latency_ms']['p99']) / max(m(p, lambda r: r['latency_ms']['p99']), 1e-9):.2f}",
                     f"server CPU s = {m(n, lambda r: r['server_cpu_seconds']) / max(m(p, lambda r: r['server_cpu_seconds']), 1e-9):.2f}",
                     f"peak RSS = {m(n, lambda r: r['server_rss_peak_kib']) / max(m(p, lambda r: r['server_rss_peak_kib']), 1e-9):.2f}"]
            ratios.append(f"{sc}: " + "; ".join(parts))
    # Cluster mode against in-memory, and per node as nodes are added.
    ok_t = [r for r in t if "error" not in r]
    for c in ["tslm-cluster", "tslm-cluster2", "tslm-cluster3"]:
        ok_c = [r for r in data[sc].get(c, []) if "error" not in r]
        if not ok_c or sc.startswith("idle"):
            continue
        m = lambda runs, f: statistics.median([f(r) for r in runs])
        parts = []
        if any(r["subscribers"] for r in ok_c):
            if ok_t:
                parts.append(f"deliveries/s {c} / tslm = {m(ok_c, lambda r: r['deliveries_per_second']) / m(ok_t, lambda r: r['deliveries_per_second']):.2f}")
            n = nodes(c)
            per_node = [statistics.median([v for v in (us_per_delivery_node(r, k, n) for r in ok_c) if v is not None] or [0]) for k in range(n)]
            parts.append(f"µs server CPU per delivery: all nodes {m(ok_c, lambda r: us_per_delivery(r) or 0):.2f}"
                         + (", per node " + " / ".join(f"{v:.2f}" for v in per_node) if n > 1 else ""))
            if ok_t:
                parts.append(f"in-memory {m(ok_t, lambda r: us_per_delivery(r) or 0):.2f}")
        else:
            if ok_t:
                parts.append(f"publishes/s {c} / tslm = {m(ok_c, lambda r: r['publishes_per_second']) / m(ok_t, lambda r: r['publishes_per_second']):.3f}")
        calls = [r for r in ok_c if r.get("redis_calls") and r.get("messages")]
        if calls:
            per = lambda r, k: r["redis_calls"].get(k, 0) / r["messages"]
            parts.append("Redis commands per message published: EVALSHA+EVAL %.3f (client round trips), all but INFO %.2f"
                         % (m(calls, lambda r: per(r, "evalsha") + per(r, "eval")),
                            m(calls, lambda r: sum(v for k, v in r["redis_calls"].items() if k != "info") / r["messages"])))
        parts.append(f"Redis CPU s {m(ok_c, lambda r: r.get('aux_cpu_seconds') or 0):.2f}")
        ratios.append(f"{sc}: {c}: " + "; ".join(parts))
print()
for r in ratios:
    print("- " + r)

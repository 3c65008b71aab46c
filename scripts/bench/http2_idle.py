#!/usr/bin/env python3
"""Idle memory of event streams (GET /v1/events) over TLS: HTTP/1.1, HTTP/2 with one stream per
connection, and HTTP/2 with several streams per connection.

Starts the release binary on a TLS listener (a throwaway self-signed certificate made with the
`openssl` command), opens N idle event streams in the chosen way, each subscribed to one channel,
and prints the gateway's RSS growth per stream. Python standard library only; HTTP/2 is spoken
with hand-written frames (the requests are constant).

    cargo build --release
    scripts/bench/http2_idle.py [STREAMS] [STREAMS_PER_H2_CONNECTION]
"""

import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "tslm")


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def frame(kind, flags, stream, payload=b""):
    n = len(payload)
    return bytes([n >> 16, (n >> 8) & 255, n & 255, kind, flags]) + stream.to_bytes(4, "big") + payload


def get_block(path):
    b = bytearray([0x82, 0x87])  # :method GET, :scheme https
    for index, value in ((4, path), (1, "localhost")):  # :path, :authority, literal values
        b += bytes([index, len(value)]) + value.encode()
    return bytes(b)


async def read_until(reader, needle, seen):
    while needle not in seen[0]:
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        seen[0] += chunk


async def h1_stream(addr, ctx, keep):
    reader, writer = await asyncio.open_connection(*addr, ssl=ctx, server_hostname="localhost")
    writer.write(b"GET /v1/events?channel=idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await read_until(reader, b"subscribed", [b""])
    keep.append((reader, writer))


async def h2_streams(addr, ctx, count, keep):
    reader, writer = await asyncio.open_connection(*addr, ssl=ctx, server_hostname="localhost")
    block = get_block("/v1/events?channel=idle")
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0)
    for i in range(count):
        out += frame(1, 5, 1 + 2 * i, block)  # HEADERS, END_STREAM | END_HEADERS
    writer.write(out)
    seen = b""
    while seen.count(b"event: subscribed") < count:
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        seen += chunk
    writer.write(frame(4, 1, 0))  # SETTINGS ACK
    keep.append((reader, writer))


async def measure(d, cert, key, mode, streams, per_conn):
    """A fresh gateway for each mode: freed memory stays with the allocator, so a second run in
    the same process would reuse it and look cheaper."""
    cfg = os.path.join(d, "tslm.toml")
    with open(cfg, "w") as f:
        f.write(
            "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n"
            f"tls_cert='{cert}'\ntls_key='{key}'\n"
            "max_connections_per_ip=1000000\nhandshakes_per_ip_per_second=1000000\n"
            "[listener.private]\nip='127.0.0.1'\nport=0\n"
            "default_endpoint_permissions=['CreateChannel','NotifyChannel']\n")
    ready = os.path.join(d, "ready.json")
    if os.path.exists(ready):
        os.remove(ready)
    server = subprocess.Popen([BIN, "--config", cfg, "--ready-file", ready],
                              stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(ready):
            time.sleep(0.05)
        with open(ready) as f:
            info = json.load(f)
        pub = info["listeners"]["public"][0].rsplit(":", 1)
        priv = info["listeners"]["private"][0].rsplit(":", 1)
        r, w = await asyncio.open_connection(priv[0], int(priv[1]))
        w.write(b"PUT /v1/channels/idle HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await r.read()
        addr = (pub[0], int(pub[1]))
        ctx = ssl.create_default_context(cafile=cert)
        ctx.set_alpn_protocols(["http/1.1"] if mode == "http/1.1" else ["h2"])
        await asyncio.sleep(1)
        before = rss(server.pid)
        keep = []
        sem = asyncio.Semaphore(100)

        async def one(coro):
            async with sem:
                await coro

        if mode == "http/1.1":
            await asyncio.gather(*(one(h1_stream(addr, ctx, keep)) for _ in range(streams)))
        else:
            await asyncio.gather(*(one(h2_streams(addr, ctx, per_conn, keep))
                                   for _ in range(streams // per_conn)))
        await asyncio.sleep(2)
        after = rss(server.pid)
        print(f"{mode:8} x{per_conn:<3} {streams} streams on {len(keep)} connections: "
              f"{(after - before) / streams:,.0f} bytes per stream", flush=True)
        for _, w in keep:
            w.close()
    finally:
        server.terminate()
        server.wait()


async def run(streams, per_conn):
    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
             "-keyout", key, "-out", cert, "-days", "1"],
            check=True, capture_output=True)
        for mode, k in (("http/1.1", 1), ("h2", 1), ("h2", per_conn)):
            await measure(d, cert, key, mode, streams, k)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    asyncio.run(run(n, per))

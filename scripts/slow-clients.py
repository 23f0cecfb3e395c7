#!/usr/bin/env python3
"""Slow-client load against a running taskq-api: holds N connections, then times submits.

    scripts/slow-clients.py PORT N PROBES [HOLD_SECONDS]

With PROBES > 0: opens N connections to 127.0.0.1:PORT (a third idle, a third sending a
request head one byte per second, a third sending a body one byte per second), waits 3 s,
then sends PROBES well-behaved submits one after another (a fresh connection each, 50 ms
apart) and prints how many were not 201 and their p50/p99/max latency.

With PROBES = 0 it only holds the N connections for HOLD_SECONDS: run it in one process
and the probes (N = 0) in another, so the client holding 10,000 connections does not
delay the probes' own timing. Raise the open-file limit first (`ulimit -n 20000`), and
the api's TASKQ_HEADER_READ_TIMEOUT_MS / TASKQ_BODY_READ_TIMEOUT_MS / TASKQ_IDLE_TIMEOUT_MS
if every connection should stay held for the whole run. The api needs TASKQ_AUTH=off.
"""
import asyncio, sys, time, json
HOST, PORT = "127.0.0.1", int(sys.argv[1]); N = int(sys.argv[2]); PROBES = int(sys.argv[3])
HEAD = b"POST /v1/tasks HTTP/1.1\r\nhost: t\r\nx-slow: "
BODY = b"POST /v1/tasks HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"type\":\"x\",\"payload\":\""
held = 0
async def slow(i, stop):
    global held
    try:
        r, w = await asyncio.open_connection(HOST, PORT)
    except OSError:
        return
    held += 1
    kind = i % 3
    if kind == 1: w.write(HEAD)
    if kind == 2: w.write(BODY)
    try:
        while not stop.is_set():
            await asyncio.sleep(1.0)
            if kind: w.write(b"a"); await w.drain()
    except Exception:
        pass
    held -= 1
async def probe(i):
    body = json.dumps({"type": "noop", "payload": {"i": i}}).encode()
    req = b"POST /v1/tasks HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    t = time.monotonic()
    r, w = await asyncio.open_connection(HOST, PORT)
    w.write(req); await w.drain()
    data = await r.read()
    dt = time.monotonic() - t
    w.close()
    return dt, data[:12]
async def main():
    stop = asyncio.Event()
    tasks = []
    for i in range(N):
        tasks.append(asyncio.create_task(slow(i, stop)))
        if i % 500 == 499: await asyncio.sleep(0.05)
    await asyncio.sleep(3)
    print("held connections:", held, flush=True)
    if PROBES == 0:
        await asyncio.sleep(float(sys.argv[4]))
        print("held after wait:", held, flush=True); stop.set(); return
    lat = []; bad = 0
    for i in range(PROBES):
        dt, st = await probe(i)
        lat.append(dt)
        if not st.startswith(b"HTTP/1.1 201"): bad += 1
        await asyncio.sleep(0.05)
    print("held at end:", held)
    lat.sort()
    q = lambda p: lat[min(len(lat)-1, int(p*len(lat)))]*1000
    print(f"probes {PROBES} non-201 {bad} p50 {q(0.5):.1f} ms p99 {q(0.99):.1f} ms max {lat[-1]*1000:.1f} ms")
    stop.set()
asyncio.run(main())

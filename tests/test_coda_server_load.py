"""A small load test of `dcl serve coda RUN` on 127.0.0.1: several clients flood /v1/update (half of
the updates hostile: 256 fresh 200-character metric names each) while another client times
/v1/metrics. The service's memory must stay bounded (no per-update state) and its event loop
responsive (/v1/metrics is O(#metric names), not O(#updates)).

Bounded: at most FLOOD_REQUESTS updates and FLOOD_S seconds of flood, 90 s in all; loopback only.
The p99 bound is about the event loop not being blocked, not a speed benchmark: it is generous
for a loaded 2-core machine where the clients and the service share the cores."""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import msgpack
import numpy as np
import pytest

from test_coda import tiny_run_dir
from test_coda_service import start_service, stop_service

FLOOD_REQUESTS = 5000  # updates sent by the flood (it also stops after FLOOD_S)
FLOOD_S = 40.0
CLIENTS = 8  # concurrent flooding clients
WARMUP = 200  # updates before the baseline RSS, so thread pools, buffers and arenas exist
PROBE_INTERVAL_S = 0.01
# The service holds at most --max-inflight (64) bodies of --max-body-kb (256 KB) at once, plus
# their decoded copies: 32 MB of transient memory in the worst case (here far less: 8 clients of
# ~55 KB bodies). Its own state is O(devices + metric names). A growth beyond 48 MB can only be
# state that grows with the update count: the unbounded update list this replaces held ~80 KB per
# hostile update, ~200 MB for this flood.
RSS_GROWTH_BOUND_MB = 48
P99_BOUND_MS = 250.0  # /v1/metrics under the flood; an O(#updates) summary takes seconds here
PROBE_TIMEOUT_S = 5.0
MSGPACK = {"Content-Type": "application/msgpack"}


def rss_mb(pid: int) -> float:
    """The process's resident set (VmRSS of /proc/PID/status), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _update(user: int, version: str, metrics: dict, weights: dict) -> bytes:
    body = {"user": user, "model_version": version, "metrics": metrics, "weights": weights}
    return msgpack.packb({"schema": "coda.update_up", "version": 1, "body": body}, use_bin_type=True)


def _bodies(users: list[int], version: str, weight_shape: tuple[int, ...]):
    """The i-th update: even ones valid (2 metrics, one parameter's weights), odd ones hostile (a
    known user, but 256 metric names never seen before, each 200 characters: the largest a
    message allows)."""
    w = np.ones(weight_shape, np.float32)
    weights = {"tower.0.weight": {"dtype": "float32", "shape": list(w.shape), "data": w.tobytes()}}

    def body(i: int) -> tuple[bool, bytes]:
        user = users[i % len(users)]
        if i % 2 == 0:
            return True, _update(user, version, {"retrieved": float(i % 100), "kept": float(i % 10)}, weights)
        names = {f"{i:08d}-{j:03d}-".ljust(200, "x"): float(j) for j in range(256)}
        return False, _update(user, version, names, {})

    return body


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from toolkit.methods.coda.data import build_fleet
    from toolkit.methods.coda.pipeline import load_run

    run, _ = tiny_run_dir(tmp_path_factory)
    cfg, models, _ = load_run(run)
    users = sorted(build_fleet(cfg.data, cfg.seed).devices)
    shape = tuple(models.recommender.state_dict()["tower.0.weight"].shape)
    log = tmp_path_factory.mktemp("coda-load") / "service.log"
    with open(log, "w") as err:
        url, proc = start_service(run, "--max-body-kb", "256", "--duration", "300", stderr=err)
    assert urlsplit(url).hostname == "127.0.0.1"
    yield url, proc, users, shape, log
    stop_service(proc)


def test_update_flood_keeps_memory_bounded_and_metrics_responsive(service):
    import aiohttp

    url, proc, users, shape, log = service
    counts: Counter = Counter()  # (valid?, status) -> requests
    latencies: list[float] = []

    async def flood(session, body, next_index, stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            i = next_index()
            if i is None:
                return
            valid, data = body(i)
            async with session.post(url + "/v1/update", data=data, headers=MSGPACK) as r:
                await r.read()
                counts[valid, r.status] += 1

    async def probe(session, done: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        while not done.is_set():
            t0 = time.perf_counter()
            try:
                async with session.get(url + "/v1/metrics", timeout=timeout) as r:
                    assert r.status == 200
                    await r.read()
                latencies.append(time.perf_counter() - t0)
            except asyncio.TimeoutError:
                latencies.append(PROBE_TIMEOUT_S)
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def run_clients(body, start: int, total: int, seconds: float, with_probe: bool) -> float:
        it = iter(range(start, start + total))
        stop_at = time.perf_counter() + seconds
        done = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=CLIENTS + 2)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:
            prober = asyncio.create_task(probe(s, done)) if with_probe else None
            t0 = time.perf_counter()
            try:
                await asyncio.gather(*[flood(s, body, lambda: next(it, None), stop_at) for _ in range(CLIENTS)])
            finally:
                wall = time.perf_counter() - t0
                done.set()
                if prober:
                    await prober
        return wall

    async def main():
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/v1/health") as r:
                version = (await r.json())["model_version"]
        body = _bodies(users, version, shape)
        await run_clients(body, 0, WARMUP, 30, False)
        before = rss_mb(proc.pid)
        wall = await run_clients(body, WARMUP, FLOOD_REQUESTS, FLOOD_S, True)
        after = rss_mb(proc.pid)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as s:
            async with s.get(url + "/v1/metrics") as r:
                m = await r.json()
        return before, after, sum(counts.values()) - WARMUP, wall, m

    try:
        before, after, flooded, wall, m = asyncio.run(asyncio.wait_for(main(), 90))
    except asyncio.TimeoutError:
        pytest.fail(f"the load test did not finish within 90 s (probe latencies so far, ms: "
                    f"{[round(1000 * x) for x in latencies[-5:]]}): the service's event loop is blocked")
    ms = 1000 * np.array(latencies)
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    print(f"\nflood: {flooded} updates (+{WARMUP} warm-up) from {CLIENTS} clients in {wall:.1f}s "
          f"({flooded / wall:.0f}/s; (valid, status): {dict(counts)}); service RSS {before:.1f} -> {after:.1f} MB "
          f"(+{after - before:.1f}); /v1/metrics x{len(ms)}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"max {ms.max():.1f} ms")
    assert proc.poll() is None, "the service died"
    assert after - before < RSS_GROWTH_BOUND_MB, f"RSS grew {after - before:.1f} MB under the flood"
    assert p99 < P99_BOUND_MS, f"/v1/metrics p99 {p99:.1f} ms under the flood: the event loop was blocked"
    assert flooded >= 1000, f"only {flooded} updates in {FLOOD_S}s: the service stalled"
    # every valid update accepted and counted, every hostile one refused (400), nothing else
    assert set(counts) <= {(True, 200), (False, 400)}, dict(counts)
    assert m["updates"] == counts[True, 200] and len(m["mean"]) <= 64 and m["users"] <= len(users)
    text = log.read_text()
    assert "Traceback" not in text and "Error handling request" not in text, text[-3000:]
    assert json.dumps(m)  # the summary is plain JSON

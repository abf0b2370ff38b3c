"""`dcl serve coda RUN`: the cloud side over HTTP on 127.0.0.1, played by 60 concurrent devices,
with malformed, foreign-version and oversized requests mixed in (each a 4xx, the service keeps
serving). Bounded: 60 devices, one round each, 120 s at most; loopback only."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest

from conftest import ROOT
from test_coda import tiny_run_dir

DEVICES = 60
MSGPACK = {"Content-Type": "application/msgpack"}

# The lines the CLI registers (toolkit/cli.py): a generic `dcl serve METHOD ...` that hands the
# remaining arguments to the method's own `serve_command`.
LAUNCHER = '''
import sys, click
from toolkit.cli import cli, main
from toolkit.registry import method_names

@cli.command("serve", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("method", type=click.Choice(method_names()), metavar="METHOD")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve_cmd(method, args):
    """Serve METHOD's cloud side over HTTP (`dcl serve METHOD --help` for its options)."""
    from dcl_core.errors import ConfigError
    from toolkit.registry import get_method

    command = getattr(get_method(method), "serve_command", None)
    if command is None:
        raise ConfigError(f"method {method} has no cloud service to serve")
    command.main(args=list(args), prog_name=f"dcl serve {method}", standalone_mode=False)

sys.exit(main(sys.argv[1:]))
'''


def start_service(run, *options: str, stderr=subprocess.PIPE) -> tuple[str, subprocess.Popen]:
    """`dcl serve coda RUN --port 0 OPTIONS` on 127.0.0.1 in a subprocess: (url, process) once it
    announces its address. `stderr`: where the service's log goes (a file lets a test read it live)."""
    env = dict(os.environ, DCL_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "serve", "coda", str(run), "--port", "0", *options],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    deadline, url = time.time() + 120, None
    while time.time() < deadline and url is None:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("serving coda on "):
            url = line.split()[3]
    if url is None:
        proc.kill()
        pytest.fail("the service did not start: " + (proc.stderr.read()[-3000:] if proc.stderr else ""))
    return url, proc


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run, _ = tiny_run_dir(tmp_path_factory)
    url, proc = start_service(run, "--max-body-kb", "256", "--duration", "300")
    yield run, url, proc
    stop_service(proc)


class _Sent(Exception):
    pass


def _collect(run, count: int):
    """Real augmentation requests of `count` devices, as their phones build them (not sent here)."""
    from toolkit.methods.coda.cloud import model_version
    from toolkit.methods.coda.data import build_fleet
    from toolkit.methods.coda.device import request_augmentation
    from toolkit.methods.coda.pipeline import load_run

    cfg, models, _ = load_run(run)
    fleet = build_fleet(cfg.data, cfg.seed)
    version = model_version(models.recommender)
    bodies: list[tuple[int, bytes]] = []
    for u in list(fleet.devices)[:count]:
        def ask(body, u=u):
            bodies.append((u, body))
            raise _Sent()
        try:
            request_augmentation(fleet.devices[u], models, cfg, ask, version)
        except _Sent:
            pass
    return bodies, version, fleet


def test_sixty_concurrent_devices_and_bad_requests(server):
    import aiohttp

    from toolkit.methods.coda.messages import AugmentBatch, AugmentRequest, ModelDown, UpdateUp

    run, url, proc = server
    bodies, version, fleet = _collect(run, DEVICES)
    assert len(bodies) == DEVICES
    good = bodies[0][1]
    env = msgpack.unpackb(good)
    future = msgpack.packb({**env, "version": 2}, use_bin_type=True)
    bad_requests = [
        ("post", "/v1/augment", b"\xc1 not msgpack", MSGPACK, 400, "not a msgpack message"),
        ("post", "/v1/augment", future, MSGPACK, 400, "version 2 is not supported"),
        ("post", "/v1/augment", good, {"Content-Type": "text/plain"}, 415, "content type"),
        ("post", "/v1/augment", b"\x00" * (300 * 1024), MSGPACK, 413, "exceeds the limit"),
        ("post", "/v1/update", good, MSGPACK, 400, "expected a coda.update_up message"),
        ("get", "/v1/nothing", None, {}, 404, "no endpoint"),
        ("delete", "/v1/augment", None, {}, 405, "not allowed"),
    ]
    latencies: list[float] = []

    async def device(session, user: int, body: bytes) -> None:
        async with session.get(url + "/v1/model") as r:
            assert r.status == 200
            down = ModelDown.from_bytes(await r.read())
        assert down.model_version == version and set(down.programs) == {"recommender", "sample_classifier"}
        t0 = time.perf_counter()
        async with session.post(url + "/v1/augment", data=body, headers=MSGPACK) as r:
            assert r.status == 200, await r.text()
            batch = AugmentBatch.from_bytes(await r.read())
        latencies.append(time.perf_counter() - t0)
        req = AugmentRequest.from_bytes(body)
        assert batch.request_id == req.request_id and 0 < len(batch.items) <= req.k
        assert len(set(batch.items.tolist())) == len(batch.items)
        up = UpdateUp(user, version, {"retrieved": len(batch.items), "kept": len(batch.items) // 2}, {})
        async with session.post(url + "/v1/update", data=up.to_bytes(), headers=MSGPACK) as r:
            assert r.status == 200

    async def bad(session, method, path, data, headers, status, needle) -> None:
        async with session.request(method, url + path, data=data, headers=headers) as r:
            assert r.status == status, (path, r.status, await r.text())
            assert needle in (await r.json())["error"]

    async def main() -> None:
        timeout = aiohttp.ClientTimeout(total=90)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=DEVICES + 10)) as s:
            jobs = [device(s, u, b) for u, b in bodies] + [bad(s, *b) for b in bad_requests]
            await asyncio.gather(*jobs)
            # still serving after every refusal
            async with s.get(url + "/v1/health") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            async with s.post(url + "/v1/augment", data=good, headers=MSGPACK) as r:
                assert r.status == 200
            async with s.get(url + "/v1/metrics") as r:
                m = await r.json()
        assert m["served"]["/v1/augment"] == DEVICES + 1 and m["served"]["/v1/update"] == DEVICES
        assert m["updates"] == DEVICES and m["users"] == DEVICES
        assert sum(m["refused"].values()) == len(bad_requests)

    t0 = time.perf_counter()
    asyncio.run(asyncio.wait_for(main(), 120))
    wall = time.perf_counter() - t0
    ms = 1000 * np.array(latencies)
    print(f"\n{DEVICES} concurrent devices in {wall:.2f}s; augment round trip p50 {np.median(ms):.1f} ms, "
          f"p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms")
    assert proc.poll() is None  # the service survived all of it

    proc.send_signal(signal.SIGTERM)  # a clean stop on SIGTERM
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert json.loads(out.strip().splitlines()[-1])["updates"] == DEVICES

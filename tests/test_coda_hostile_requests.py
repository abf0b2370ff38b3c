"""`dcl serve coda RUN` against hostile clients, on 127.0.0.1 only: every field bounded before any
work (shapes, ids, strings, numbers, k, msgpack lists), unknown users refused, clients that vanish
mid-request leave no traceback, a trickled body gets 408, malformed HTTP or body encodings a 4xx,
a genuine bug answers 500 with one JSON line and is logged once, and random requests (hypothesis)
get a 4xx or a valid 200, never a 5xx or a hang.

Bounded: one service for the module, 100 random requests per property, 10 s per request."""
from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import struct
import time
from urllib.parse import urlsplit

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_coda import tiny_run_dir
from test_coda_service import start_service, stop_service

TIMEOUT = 10.0  # seconds a request may take before the test calls it a hang
READ_TIMEOUT_S = 2  # the service's --read-timeout here
LOG_NOISE = ("Traceback", "Error handling request", "Unhandled exception")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """(host, port, context, log path, process): context holds what a valid request needs."""
    from toolkit.methods.coda.cloud import model_version
    from toolkit.methods.coda.data import build_fleet
    from toolkit.methods.coda.model import key_dim
    from toolkit.methods.coda.pipeline import load_run

    run, _ = tiny_run_dir(tmp_path_factory)
    cfg, models, _ = load_run(run)
    ctx = {"version": model_version(models.recommender), "users": sorted(build_fleet(cfg.data, cfg.seed).devices),
           "dim": key_dim(models.recommender, cfg.matching), "max_k": cfg.matching.retrieve_max,
           "weights": {k: tuple(v.shape) for k, v in models.recommender.state_dict().items()}}
    log = tmp_path_factory.mktemp("coda-hostile") / "service.log"
    with open(log, "w") as err:
        url, proc = start_service(run, "--max-body-kb", "256", "--duration", "600", "--read-timeout", str(READ_TIMEOUT_S),
                                  stderr=err)
    u = urlsplit(url)
    assert u.hostname == "127.0.0.1"
    yield u.hostname, u.port, ctx, log, proc
    stop_service(proc)


def request(service, method: str, path: str, body: bytes | None = None,
            content_type: str = "application/msgpack") -> tuple[int, str, bytes]:
    host, port = service[:2]
    c = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        c.request(method, path, body, {"Content-Type": content_type} if body is not None else {})
        r = c.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        c.close()


def envelope(schema: str, body) -> bytes:
    return msgpack.packb({"schema": schema, "version": 1, "body": body}, use_bin_type=True)


def array(a: np.ndarray, shape=None, dtype: str = "float32") -> dict:
    return {"dtype": dtype, "shape": list(a.shape) if shape is None else shape, "data": a.tobytes()}


def augment_body(ctx, **over) -> dict:
    return {"request_id": "r", "user": ctx["users"][0], "model_version": ctx["version"], "k": 8,
            "vectors": array(np.zeros((2, ctx["dim"]), np.float32))} | over


def update_body(ctx, **over) -> dict:
    return {"user": ctx["users"][0], "model_version": ctx["version"], "metrics": {"kept": 1.0}, "weights": {}} | over


def assert_log_clean(service) -> None:
    text = service[3].read_text()
    for noise in LOG_NOISE:
        assert noise not in text, text[-3000:]


def assert_one_line_error(status: int, ctype: str, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:300])
    assert ctype.startswith("application/json"), ctype
    text = body.decode()
    assert len(text.strip().splitlines()) == 1 and isinstance(json.loads(text)["error"], str), text


# ----------------------------------------------------------------------------- bounds before work


def _hostile(ctx) -> list[tuple[str, dict, str]]:
    """(path, body, the refusal's needle): each one a 500 or a 200 before the bounds existed."""
    z = np.zeros(0, np.float32)
    aug, upd = "/v1/augment", "/v1/update"
    return [
        # shapes: a zero dimension must not hide a huge one (numpy refuses, or worse, allocates)
        (aug, augment_body(ctx, vectors=array(z, [0, 2 ** 63])), "bad shape"),
        (aug, augment_body(ctx, vectors=array(z, [2 ** 64 - 1, 0])), "bad shape"),
        (aug, augment_body(ctx, vectors=array(z, [2 ** 62, 2 ** 62])), "bad shape"),
        (upd, update_body(ctx, weights={"head.bias": array(z, [0, 1 << 40, 0])}), "bad shape"),
        (upd, update_body(ctx, weights={"head.bias": array(z, [1, 1, 1, 1, 1])}), "bad shape"),
        # ids: beyond int64 (msgpack carries uint64), negative, or not a device of the fleet
        (aug, augment_body(ctx, user=2 ** 64 - 1), "64-bit"),
        (aug, augment_body(ctx, user=2 ** 63), "64-bit"),
        (aug, augment_body(ctx, user=2 ** 63 - 1), "not a device"),
        (aug, augment_body(ctx, user=-1), "not a device"),
        (aug, augment_body(ctx, user=10 ** 6), "not a device"),
        (upd, update_body(ctx, user=2 ** 64 - 1), "64-bit"),
        (upd, update_body(ctx, user=-(2 ** 63)), "not a device"),
        (upd, update_body(ctx, user=max(ctx["users"]) + 1), "not a device"),
        # strings, k, numbers
        (aug, augment_body(ctx, request_id="r" * 1000), "characters exceed"),
        (upd, update_body(ctx, model_version="v" * 1000), "characters exceed"),
        (aug, augment_body(ctx, k=2 ** 64 - 1), "64-bit"),
        (aug, augment_body(ctx, k=2 ** 63 - 1), "augment_request.k"),
        (upd, update_body(ctx, metrics={"kept": 2 ** 64 - 1}), "finite number"),
        (upd, update_body(ctx, metrics={"kept": 1e300}), "finite number"),
        # metric names and weights are bounded by what the cloud knows
        (upd, update_body(ctx, metrics={f"m{i}": 1.0 for i in range(65)}), "metric names"),
        (upd, update_body(ctx, weights={"not.a.parameter": array(np.zeros(3, np.float32))}), "not a parameter"),
        (upd, update_body(ctx, weights={"head.bias": array(np.zeros(7, np.float32))}), "not a parameter"),
    ]


def test_every_field_is_bounded_before_work(service):
    ctx = service[2]
    for path, body, needle in _hostile(ctx):
        schema = "coda.augment_request" if path == "/v1/augment" else "coda.update_up"
        status, ctype, reply = request(service, "POST", path, envelope(schema, body))
        assert status == 400, (path, {k: str(v)[:60] for k, v in body.items()}, status, reply[:300])
        assert_one_line_error(status, ctype, reply)
        assert needle in json.loads(reply)["error"], (needle, reply)
    # a msgpack list header that claims 4M items (the decoder would allocate them before reading)
    claim = b"\x83\xa6schema\xb4coda.augment_request\xa7version\x01\xa4body\xdd" + struct.pack(">I", 1 << 22)
    status, ctype, reply = request(service, "POST", "/v1/augment", claim)
    assert status == 400 and b"not a msgpack message" in reply, reply
    # a valid request from a known user still gets its answer, and refusals changed nothing
    status, _, reply = request(service, "POST", "/v1/augment", envelope("coda.augment_request", augment_body(ctx)))
    assert status == 200, reply[:300]
    status, _, reply = request(service, "GET", "/v1/metrics")
    m = json.loads(reply)
    assert status == 200 and m["refused"]["refused_400"] >= len(_hostile(ctx)) + 1
    assert_log_clean(service)


# ----------------------------------------------------------------------------- clients that vanish


def _raw(service, data: bytes, read: bool = False, reset: bool = False) -> bytes:
    s = socket.create_connection(service[:2], timeout=TIMEOUT)
    if reset:  # close with RST instead of FIN
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        s.sendall(data)
        return s.recv(4096) if read else b""
    finally:
        s.close()


def _post_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/msgpack\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_clients_that_disconnect_leave_no_traceback(service):
    ctx = service[2]
    aug = envelope("coda.augment_request", augment_body(ctx, k=ctx["max_k"]))
    upd = envelope("coda.update_up", update_body(ctx))
    for reset in (False, True):
        # a body shorter than its Content-Length, then gone
        _raw(service, _post_head("/v1/update", 100_000) + upd[:10], reset=reset)
        _raw(service, _post_head("/v1/augment", len(aug) + 50) + aug, reset=reset)
        # whole requests, closed before the reply is read
        _raw(service, _post_head("/v1/augment", len(aug)) + aug, reset=reset)
        _raw(service, _post_head("/v1/update", len(upd)) + upd, reset=reset)
        _raw(service, b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", reset=reset)
    time.sleep(1.0)  # let the service notice every disconnection
    assert_log_clean(service)
    status, _, reply = request(service, "GET", "/v1/metrics")
    assert status == 200 and json.loads(reply)["disconnected"] >= 2


def test_a_body_that_trickles_is_refused_408_after_the_read_timeout(service):
    s = socket.create_connection(service[:2], timeout=TIMEOUT)
    try:
        s.sendall(_post_head("/v1/update", 1000) + b"\x83")  # then nothing more: a slot held, not forever
        t0 = time.perf_counter()
        reply = s.recv(4096)
        waited = time.perf_counter() - t0
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 408 ") and b"not received within" in reply, reply
    assert READ_TIMEOUT_S - 0.5 < waited < TIMEOUT, waited
    assert_log_clean(service)


def test_malformed_http_and_body_encodings_are_4xx_without_traceback(service):
    upd = envelope("coda.update_up", update_body(service[2]))
    head = b"POST /v1/update HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/msgpack\r\n"
    answered_by_aiohttp = [  # before the app runs
        b"GET /v1/health HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        head + b"Transfer-Encoding: zip\r\n\r\n",
        head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        head + b"Content-Encoding: br\r\nContent-Length: 4\r\n\r\nabcd",
    ]
    for data in answered_by_aiohttp:
        assert _raw(service, data, read=True).startswith(b"HTTP/1.0 400 "), data
    for encoding in (b"gzip", b"deflate"):  # a body that is not what its Content-Encoding says
        reply = _raw(service, head + b"Content-Encoding: " + encoding + b"\r\nContent-Length: %d\r\n\r\n" % len(upd)
                     + upd, read=True)
        assert reply.startswith(b"HTTP/1.1 400 ") and b"could not be decoded" in reply, reply
    assert_log_clean(service)


def test_a_genuine_bug_answers_500_one_json_line_and_is_logged_once(caplog):
    """In-process, with a cloud whose handler has a bug: the client gets one JSON line naming no
    internals; the log gets the traceback exactly once."""
    import aiohttp
    from aiohttp import web

    from toolkit.methods.coda.messages import ModelDown
    from toolkit.methods.coda.service import ServiceLimits, make_app

    class Broken:
        version, limits = "v", None
        index = type("Index", (), {"size": 0, "kind": "flat"})()

        def model_down(self):
            return ModelDown("v", {}, {})

        def summary(self):
            return {}

        def handle_augment(self, body: bytes) -> bytes:
            raise RuntimeError("secret /internal/path detail")

        handle_update = handle_augment

    async def main():
        runner = web.AppRunner(make_app(Broken(), ServiceLimits(workers=1)), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
                async with s.post(f"http://127.0.0.1:{port}/v1/augment", data=b"x",
                                  headers={"Content-Type": "application/msgpack"}) as r:
                    out = r.status, r.content_type, await r.read()
                async with s.get(f"http://127.0.0.1:{port}/v1/metrics") as r:
                    return out, await r.json()
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.DEBUG):
        (status, ctype, body), metrics = asyncio.run(main())
    assert status == 500 and ctype == "application/json", (status, body)
    text = body.decode()
    assert len(text.strip().splitlines()) == 1 and json.loads(text)["error"].startswith("internal error")
    assert "secret" not in text and "RuntimeError" not in text and "Traceback" not in text
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert len(logged) == 1 and logged[0].name == "toolkit.coda.service", [r.getMessage() for r in caplog.records]
    assert metrics["refused"] == {"refused_500": 1}


# ----------------------------------------------------------------------------- random requests

BIG = [0, 1, -1, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, -(2 ** 63)]
ints = st.one_of(st.integers(-(2 ** 63), 2 ** 64 - 1), st.sampled_from(BIG), st.integers(-3, 3000))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=12), st.binary(max_size=24))
garbage = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=6),
                                                    st.dictionaries(st.text(max_size=6), c, max_size=6)),
                       max_leaves=24)


@st.composite
def arrays(draw, dim: int):
    """Mostly plausible arrays (a matching data length), with hostile shapes and dtypes mixed in."""
    shape = draw(st.one_of(st.lists(st.integers(0, 4), max_size=3).map(lambda s: s[:1] + [dim] + s[1:]),
                           st.lists(st.one_of(st.integers(0, 6), st.sampled_from(BIG)), max_size=7),
                           garbage))
    dtype = draw(st.sampled_from(["float32"] * 4 + ["float64", "int64", "uint8", "f4", ""]))
    n = int(np.prod(shape)) if isinstance(shape, list) and all(isinstance(d, int) and 0 <= d <= 64 for d in shape) \
        and len(shape) <= 4 else 0
    data = draw(st.one_of(st.just(np.zeros(n, np.float32).tobytes()),
                          st.binary(max_size=64),
                          st.lists(st.floats(width=32), min_size=n, max_size=n).map(
                              lambda v: np.array(v, np.float32).tobytes())))
    return draw(st.one_of(st.just({"dtype": dtype, "shape": shape, "data": data}), garbage))


def _valid_fields(ctx, path: str) -> dict:
    finite = st.floats(-1e6, 1e6, width=32)
    vectors = st.integers(1, 4).flatmap(lambda q: st.lists(finite, min_size=q * ctx["dim"], max_size=q * ctx["dim"]).map(
        lambda v: array(np.array(v, np.float32).reshape(q, ctx["dim"]))))
    common = {"user": st.sampled_from(ctx["users"]), "model_version": st.just(ctx["version"])}
    if path == "/v1/augment":
        return common | {"request_id": st.text(max_size=40), "k": st.integers(1, ctx["max_k"]), "vectors": vectors}
    return common | {"metrics": st.dictionaries(st.sampled_from(["kept", "retrieved", "tau"]), finite, max_size=3),
                     "weights": st.one_of(st.just({}), st.just({"head.bias": array(np.ones(1, np.float32))}))}


def _hostile_fields(ctx, path: str) -> dict:
    users = st.one_of(st.sampled_from(ctx["users"]), ints)
    versions = st.one_of(st.text(max_size=300), garbage)
    if path == "/v1/augment":
        return {"request_id": st.one_of(st.text(min_size=200, max_size=300), garbage), "user": users,
                "model_version": versions, "k": st.one_of(st.integers(-2, ctx["max_k"] + 2), ints),
                "vectors": arrays(ctx["dim"])}
    names = st.one_of(st.sampled_from(["kept", "retrieved", "tau"]), st.text(max_size=210), ints)
    return {"user": users, "model_version": versions,
            "metrics": st.one_of(st.dictionaries(names, st.one_of(ints, st.floats()), max_size=8), garbage),
            "weights": st.one_of(st.dictionaries(st.one_of(st.sampled_from(sorted(ctx["weights"])),
                                                           st.text(max_size=8)), arrays(1), max_size=3), garbage)}


@st.composite
def hostile_requests(draw, ctx):
    """(path, body bytes, content type): a valid message with 0-3 of its fields hostile, fields
    missing or extra, a foreign schema or version, msgpack garbage, raw bytes, a wrong type."""
    path = draw(st.sampled_from(["/v1/augment", "/v1/update"]))
    valid, hostile = _valid_fields(ctx, path), _hostile_fields(ctx, path)
    bad = draw(st.sets(st.sampled_from(sorted(valid)), max_size=3))
    body = {name: draw(hostile[name] if name in bad else valid[name]) for name in sorted(valid)}
    if draw(st.sampled_from([False] * 5 + [True])):
        for name in draw(st.lists(st.sampled_from(sorted(valid)), min_size=1, max_size=2)):  # missing fields
            body.pop(name, None)
    if draw(st.sampled_from([False] * 5 + [True])):
        body |= draw(st.dictionaries(st.text(min_size=1, max_size=8), garbage, min_size=1, max_size=2))  # extra
    own = "coda.augment_request" if path == "/v1/augment" else "coda.update_up"
    schema = draw(st.sampled_from([own] * 8 + ["coda.ack", "x"]))
    version = draw(st.sampled_from([1] * 8 + [2, 0, 2 ** 64 - 1]))
    kind = draw(st.sampled_from(["message"] * 12 + ["garbage", "bytes", "type"]))
    if kind == "garbage":
        data = msgpack.packb(draw(garbage), use_bin_type=True)
    elif kind == "bytes":
        data = draw(st.binary(max_size=300))
    else:
        data = msgpack.packb({"schema": schema, "version": version, "body": body}, use_bin_type=True)
    return path, data, "text/plain" if kind == "type" else "application/msgpack"


def test_random_requests_get_a_4xx_or_a_valid_200_and_the_service_keeps_serving(service):
    from toolkit.methods.coda.messages import Ack, AugmentBatch, AugmentRequest, UpdateUp

    ctx = service[2]
    seen: dict[int, int] = {}

    @settings(max_examples=100, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(hostile_requests(ctx))
    def check(req):
        path, data, ctype = req
        t0 = time.perf_counter()
        status, rtype, reply = request(service, "POST", path, data, ctype)
        assert time.perf_counter() - t0 < TIMEOUT
        seen[status] = seen.get(status, 0) + 1
        if status != 200:
            assert_one_line_error(status, rtype, reply)
            return
        # a 200 only for a valid request of a known user, with a valid answer
        if path == "/v1/augment":
            asked = AugmentRequest.from_bytes(data)
            got = AugmentBatch.from_bytes(reply)
            assert got.request_id == asked.request_id and len(got.items) <= asked.k
        else:
            asked = UpdateUp.from_bytes(data)
            assert Ack.from_bytes(reply).accepted
        assert asked.user in ctx["users"] and asked.model_version == ctx["version"]

    check()
    assert service[4].poll() is None, "the service died"
    status, _, reply = request(service, "GET", "/v1/health")
    assert status == 200 and json.loads(reply)["status"] == "ok"
    assert_log_clean(service)
    print(f"\nrandom requests by status: {dict(sorted(seen.items()))}")

"""`dcl serve coda RUN`: CoDA's cloud side as an HTTP service (aiohttp).

Endpoints (bodies are the msgpack messages of messages.py, content type application/msgpack):
  GET  /v1/health    JSON {"status": "ok", "model_version", "pool", "index"}
  GET  /v1/model     coda.model_down: both programs' start weights and the device settings
  POST /v1/augment   coda.augment_request -> coda.augment_batch (coarse matching)
  POST /v1/update    coda.update_up -> coda.ack (a device's metrics, and weights if it sends any)
  GET  /v1/metrics   JSON: requests served, refused and disconnected, and the mean of the devices' metrics

Every refusal is a 4xx with a JSON body {"error": "<one line>"}: a body that is not a valid
message, of another schema or version (400), larger than --max-body-kb (413), of another content
type (415), an unknown path (404) or method (405), a body not received within --read-timeout
(408). A refused request changes nothing and the service keeps serving. Decoding and matching run
in a bounded thread pool (faiss releases the GIL), so slow searches never stall the event loop;
--max-inflight bounds the requests being read and answered at once (more wait their turn, before
their bodies are read, so at most max_inflight bodies are held in memory). /v1/health,
/v1/model and /v1/metrics answer on the event loop in O(1) (the model is encoded once; the cloud
keeps running totals of at most 64 metric names, whatever the number of updates).

Failures, one mechanism for all endpoints (the `errors` middleware): a client that disconnects
mid-request is counted ("disconnected") and not logged; a genuine bug answers 500 with one JSON
line naming no internals and is logged once, with its traceback, on the `toolkit.coda.service`
logger. Malformed HTTP that aiohttp itself answers with a 4xx, and connections reset by the
client, are dropped from aiohttp's server log while the app runs (`ClientFaultFilter`), so a
hostile client cannot fill the log with tracebacks.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import click

from toolkit.methods.coda.messages import Limits, MessageError

MSGPACK = "application/msgpack"
log = logging.getLogger("toolkit.coda.service")


@dataclass
class ServiceLimits:
    max_body_bytes: int = 1 << 20
    max_inflight: int = 64
    workers: int = 2
    read_timeout_s: float = 30.0  # a client trickling its body holds an inflight slot at most this long


def _client_fault(exc: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from) is the client's doing: its connection reset
    or closed, or HTTP / a body encoding so malformed that aiohttp calls it a 4xx."""
    from aiohttp.http_exceptions import HttpProcessingError
    from aiohttp.web import RequestPayloadError

    for _ in range(8):  # the chain of causes is short; bounded anyway
        if exc is None:
            return False
        if isinstance(exc, (ConnectionError, RequestPayloadError)) or (
                isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 500) < 500):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class ClientFaultFilter(logging.Filter):
    """Drops aiohttp server records caused by the client, not by this service (`_client_fault`):
    aiohttp answers those itself (4xx) or has nobody left to answer. Anything else (a 5xx, a bug
    in aiohttp or here) still goes through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _client_fault(record.exc_info[1]))


def _client_gone(request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def make_app(cloud, limits: ServiceLimits = ServiceLimits()):
    """The aiohttp application around a `cloud.Cloud`."""
    from aiohttp import web

    cloud.limits = Limits(max_bytes=limits.max_body_bytes)
    pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="coda-match")
    gate = asyncio.Semaphore(limits.max_inflight)
    stats: Counter = Counter()
    model_bytes = cloud.model_down().to_bytes()
    started = time.time()

    def error(status: int, message: str):
        stats[f"refused_{status}"] += 1
        return web.json_response({"error": message}, status=status)

    @web.middleware
    async def errors(request, handler):
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"request body exceeds the limit of {limits.max_body_bytes:,} bytes")
        except web.HTTPNotFound:
            return error(404, f"no endpoint {request.path}; endpoints: /v1/health, /v1/model, /v1/augment, "
                              "/v1/update, /v1/metrics")
        except web.HTTPMethodNotAllowed as e:
            return error(405, f"{request.method} is not allowed on {request.path} (allowed: "
                              f"{', '.join(sorted(e.allowed_methods))})")
        except MessageError as e:
            return error(400, str(e))
        except web.RequestPayloadError:  # a body whose chunking or Content-Encoding is malformed
            return error(400, "the request body could not be decoded (malformed Transfer-Encoding or "
                              "Content-Encoding)")
        except web.HTTPException:
            raise  # any other HTTP answer aiohttp raises is already a proper answer
        except Exception as e:
            if isinstance(e, ConnectionError) and _client_gone(request):
                # the client went away mid-request: nobody reads an answer; counted, not logged
                stats["disconnected"] += 1
                return web.Response(status=499)
            # a bug: logged once here, with its traceback; the client learns no internals
            log.exception("internal error answering %s %s", request.method, request.path)
            return error(500, "internal error (logged by the service)")

    async def call(request, fn: Callable[[bytes], bytes]):
        if request.content_type != MSGPACK:
            return error(415, f"content type must be {MSGPACK}, got {request.content_type or 'none'}")
        async with gate:  # before the body is read: at most max_inflight bodies in memory
            try:  # over client_max_size: HTTPRequestEntityTooLarge -> 413
                body = await asyncio.wait_for(request.read(), limits.read_timeout_s)
            except asyncio.TimeoutError:
                return error(408, f"the request body was not received within {limits.read_timeout_s:g} s")
            reply = await asyncio.get_running_loop().run_in_executor(pool, fn, body)
        stats[request.path] += 1
        return web.Response(body=reply, content_type=MSGPACK)

    async def augment(request):
        return await call(request, cloud.handle_augment)

    async def update(request):
        return await call(request, cloud.handle_update)

    async def model(request):
        stats[request.path] += 1
        return web.Response(body=model_bytes, content_type=MSGPACK)

    async def health(request):
        return web.json_response({"status": "ok", "model_version": cloud.version, "pool": int(cloud.index.size),
                                  "index": cloud.index.kind})

    async def metrics(request):
        return web.json_response({"served": {k: v for k, v in stats.items() if k.startswith("/")},
                                  "refused": {k: v for k, v in stats.items() if k.startswith("refused")},
                                  "disconnected": stats["disconnected"],
                                  "uptime_s": round(time.time() - started, 1)} | cloud.summary())

    quiet = ClientFaultFilter()
    server_log = logging.getLogger("aiohttp.server")

    async def start(app):
        server_log.addFilter(quiet)

    async def close(app):
        server_log.removeFilter(quiet)
        pool.shutdown(wait=False, cancel_futures=True)

    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=[errors])
    app.add_routes([web.get("/v1/health", health), web.get("/v1/model", model), web.post("/v1/augment", augment),
                    web.post("/v1/update", update), web.get("/v1/metrics", metrics)])
    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return app


async def serve(cloud, host: str, port: int, limits: ServiceLimits, duration: float = 0.0,
                announce: Callable[[str], None] = print) -> None:
    """Serve until SIGINT/SIGTERM (or `duration` seconds when > 0); a clean shutdown either way."""
    from aiohttp import web

    runner = web.AppRunner(make_app(cloud, limits), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    announce(f"serving coda on http://{host}:{bound} (model {cloud.version}, pool {cloud.index.size:,} samples, "
             f"{cloud.index.kind} index); Ctrl-C stops")
    try:
        if duration > 0:
            await asyncio.wait_for(stop.wait(), duration)
        else:
            await stop.wait()
    except asyncio.TimeoutError:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


@click.command("coda")
@click.argument("run_dir")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8470, show_default=True, help="0: any free port.")
@click.option("--max-body-kb", type=click.IntRange(1, 1 << 20), default=1024, show_default=True,
              help="Larger request bodies are refused with 413.")
@click.option("--max-inflight", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Requests read and answered at once (more wait, unread).")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Matching threads.")
@click.option("--read-timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True,
              help="Seconds a request body may take to arrive (slower: 408).")
@click.option("--duration", type=click.FloatRange(0), default=0.0, help="Stop after this many seconds (0: run until Ctrl-C).")
def serve_command(run_dir: str, host: str, port: int, max_body_kb: int, max_inflight: int, workers: int,
                  read_timeout: float, duration: float) -> None:
    """Serve CoDA's cloud side for RUN_DIR over HTTP: model down, augmentation, updates."""
    from toolkit.methods.coda.pipeline import load_cloud

    cloud = load_cloud(run_dir)
    limits = ServiceLimits(max_body_kb * 1024, max_inflight, workers, read_timeout)
    asyncio.run(serve(cloud, host, port, limits, duration, lambda m: click.echo(m, err=False)))
    click.echo(json.dumps({"stopped": True} | cloud.summary()))

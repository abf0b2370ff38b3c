"""`dcl serve coda RUN`: CoDA's cloud side as an HTTP service (aiohttp).

Endpoints (bodies are the msgpack messages of messages.py, content type application/msgpack):
  GET  /v1/health    JSON {"status": "ok", "model_version", "pool", "index"}
  GET  /v1/model     coda.model_down: both programs' start weights and the device settings
  POST /v1/augment   coda.augment_request -> coda.augment_batch (coarse matching)
  POST /v1/update    coda.update_up -> coda.ack (a device's metrics, and weights if it sends any)
  GET  /v1/metrics   JSON: requests served and refused, and the mean of the devices' metrics

Every refusal is a 4xx with a JSON body {"error": "<one line>"}: a body that is not a valid
message, of another schema or version (400), larger than --max-body-kb (413), of another content
type (415), an unknown path (404) or method (405). A refused request changes nothing and the
service keeps serving. Matching runs in a bounded thread pool (faiss releases the GIL), so slow
searches never stall the event loop; --max-inflight bounds the requests being answered at once
(more wait their turn).
"""
from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import click

from toolkit.methods.coda.messages import Limits, MessageError

MSGPACK = "application/msgpack"


@dataclass
class ServiceLimits:
    max_body_bytes: int = 1 << 20
    max_inflight: int = 64
    workers: int = 2


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

    async def call(request, fn: Callable[[bytes], bytes]):
        if request.content_type != MSGPACK:
            return error(415, f"content type must be {MSGPACK}, got {request.content_type or 'none'}")
        body = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge -> 413
        async with gate:
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
                                  "uptime_s": round(time.time() - started, 1)} | cloud.summary())

    async def close(app):
        pool.shutdown(wait=False, cancel_futures=True)

    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=[errors])
    app.add_routes([web.get("/v1/health", health), web.get("/v1/model", model), web.post("/v1/augment", augment),
                    web.post("/v1/update", update), web.get("/v1/metrics", metrics)])
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
              help="Requests answered at once (more wait).")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Matching threads.")
@click.option("--duration", type=click.FloatRange(0), default=0.0, help="Stop after this many seconds (0: run until Ctrl-C).")
def serve_command(run_dir: str, host: str, port: int, max_body_kb: int, max_inflight: int, workers: int,
                  duration: float) -> None:
    """Serve CoDA's cloud side for RUN_DIR over HTTP: model down, augmentation, updates."""
    from toolkit.methods.coda.cloud import load_cloud

    cloud = load_cloud(run_dir)
    limits = ServiceLimits(max_body_kb * 1024, max_inflight, workers)
    asyncio.run(serve(cloud, host, port, limits, duration, lambda m: click.echo(m, err=False)))
    click.echo(json.dumps({"stopped": True} | cloud.summary()))

"""`deeproots serve`, `deeproots bench-serve` and `deeproots ps`: add_server_commands(subparsers) wires them into
the CLI."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from ..cache.kv import KV_TYPES
from ..cli_options import add_device_option, add_parallel_options, add_speculation_options
from ..config import DEFAULT_CONTEXT
from ..errors import RequestError
from ..store import CATALOG, DEFAULT_MODEL

MAX_BODY_BYTES = 4 * 1024 * 1024
API_KEY_VARIABLE = "DEEPROOTS_API_KEY"
END_GRACE_SECONDS = 2.0  # after the shutdown deadline: for the ended requests to send their last bytes


def add_server_commands(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching")
    serve.add_argument("-m", "--model", action="append", default=None, dest="models", metavar="MODEL",
                       help=f"a store name ({', '.join(sorted(CATALOG))}) or a path to a .gguf file or a Hugging Face "
                            "folder, served besides every stored model (repeatable); the first is the default, loaded "
                            f"at start (default: {DEFAULT_MODEL})")
    serve.add_argument("--alias", action="append", default=[], metavar="NAME=MODEL",
                       help="also answer requests for NAME with MODEL, e.g. gpt-4o-mini=smollm2-135m (repeatable)")
    serve.add_argument("--keep-alive", type=keep_alive_option, default="5m", metavar="DURATION",
                       help="how long an idle model stays loaded: seconds or 30s, 5m, 1h; negative: forever; "
                            "a request's keep_alive overrides it for its model (default: 5m)")
    serve.add_argument("--max-memory", type=memory_option, default=None, metavar="SIZE",
                       help="memory budget of the loaded models (weights + KV reservation), e.g. 8G or 512M "
                            "(K/M/G/T: powers of 1000; KiB/MiB/GiB/TiB: of 1024); past it the least recently used "
                            "idle model is unloaded (default: no budget)")
    serve.add_argument("--ctx", type=int, default=None,
                       help=f"context size in tokens of every model (default: min(model's, {DEFAULT_CONTEXT}))")
    serve.add_argument("-t", "--threads", type=int, default=None, help="kernel threads (default: physical cores)")
    serve.add_argument("--kv-type", choices=list(KV_TYPES), default=None,
                       help="KV cache element type (default: f16; f32 with --reference)")
    serve.add_argument("--reference", action="store_true", help="run on the reference backend (slow; for checking)")
    add_parallel_options(serve)
    add_device_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    keys = serve.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default=None,
                      help="require 'Authorization: Bearer KEY' (all routes but /health); other local users can read "
                           f"it in the process list: prefer --api-key-file or ${API_KEY_VARIABLE}")
    keys.add_argument("--api-key-file", type=Path, default=None,
                      help="read the accepted keys from this file, one per line (blank lines and # comments skipped)")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="also answer requests whose Host header names NAME (repeatable); without it, a server "
                            "bound to loopback without a key answers only localhost, 127.x and [::1]")
    serve.add_argument("--parallel", type=int, default=8, help="sequences decoded together (default: 8)")
    add_speculation_options(serve)  # --spec, --draft-model, --draft-max: as run's, for every served model
    serve.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 429 (default: 64)")
    serve.add_argument("--kv-budget", type=int, default=None,
                       help="KV cache tokens for all running sequences (default: parallel x ctx)")
    serve.add_argument("--cors-origin", nargs="+", default=[], help="allow browsers from these origins (default: none)")
    serve.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    serve.add_argument("--shutdown-deadline", type=float, default=30.0,
                       help="seconds SIGTERM waits for in-flight requests before ending them (default: 30)")
    serve.add_argument("--max-connections", type=int, default=256,
                       help="open connections at once; more are answered 503 and closed (default: 256)")
    serve.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds a connection has to send a request's headers (default: 10)")
    serve.add_argument("--body-idle-timeout", type=float, default=10.0,
                       help="seconds a request body may pause between bytes before a 408 (default: 10)")
    serve.add_argument("--body-timeout", type=float, default=60.0,
                       help="seconds for a whole request body before a 408 (default: 60)")
    serve.add_argument("--log-prompts", action="store_true", help="include the prompt text in request logs")
    serve.add_argument("--open", action="store_true", help="open the chat page in the default browser")
    serve.set_defaults(handler=cmd_serve, loads_model=True)

    bench = subparsers.add_parser("bench-serve", help="throughput and time to first token of a running server")
    bench.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: http://127.0.0.1:8000)")
    bench.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                       help=f"the server's key (default: ${API_KEY_VARIABLE})")
    bench.add_argument("--concurrency", default="1,4,8,16", help="comma-separated levels (default: 1,4,8,16)")
    bench.add_argument("--requests", type=int, default=None, help="requests per level (default: 2 x concurrency)")
    bench.add_argument("--max-tokens", type=int, default=64)
    bench.set_defaults(handler=cmd_bench_serve)

    ps = subparsers.add_parser("ps", help="the models a running server holds: memory, idle time, when they unload")
    ps.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: http://127.0.0.1:8000)")
    ps.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                    help=f"the server's key (default: ${API_KEY_VARIABLE})")
    ps.set_defaults(handler=cmd_ps)


def keep_alive_option(text: str) -> float:
    from .pool import parse_keep_alive

    try:
        return parse_keep_alive(text)
    except RequestError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


MEMORY_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def memory_option(text: str) -> int:
    """'8G' -> 8e9 bytes, '512MiB' -> 512 * 2**20; a trailing B is optional."""
    number = text.strip().upper().removesuffix("B")
    digits = number.rstrip("KMGTI")
    unit = number[len(digits):]
    try:
        size = float(digits) * MEMORY_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"a size like 8G, 512M or 1.5GiB, got {text!r}") from None
    if not size >= 1 or size == float("inf"):
        raise argparse.ArgumentTypeError(f"the memory budget must be positive, got {text!r}")
    return int(size)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from ..engine import EngineConfig
    from ..memory import freeze_loaded_objects
    from ..store import ModelStore
    from .app import build_app
    from .connections import ConnectionLimits, limited_protocol
    from .middleware import BodyLimits
    from .pool import LoadOptions, ModelPool
    from .servable import servable_models
    from .webui import open_when_listening, page_address

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    # before the load, so that a bad key file or limit fails at once
    api_keys = read_api_keys(args)
    body = BodyLimits(args.max_body_bytes, args.body_idle_timeout, args.body_timeout)
    protocol = limited_protocol(ConnectionLimits(args.max_connections, args.header_timeout))
    models = servable_models(args.models or [DEFAULT_MODEL], args.alias, ModelStore(), args.ctx)
    options = LoadOptions(EngineConfig(max_running=args.parallel, max_queue=args.max_queue,
                                       kv_budget_tokens=args.kv_budget, **engine_speculation(args)),
                          threads=args.threads, kv_type=args.kv_type, reference=args.reference, device=args.device,
                          tp=args.tp, tp_reduction=args.tp_reduction, secret_file=args.secret_file, pp=args.pp,
                          pp_split=args.pp_split)
    pool = ModelPool(models, options, keep_alive=args.keep_alive, max_memory=args.max_memory)
    pool.preload(models.default)
    freeze_loaded_objects()  # the GC was off through the imports and the load (cli.main)
    app, gate = build_app(pool, api_keys=api_keys, cors_origins=args.cors_origin, body=body,
                          allowed_hosts=allowed_hosts(args, api_keys), log_prompts=args.log_prompts)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           access_log=False, lifespan="off", http=protocol,
                                           timeout_graceful_shutdown=END_GRACE_SECONDS))
    logging.getLogger("deeproots.server").info("serving %s on http://%s:%d (default %s)", ", ".join(models.names),
                                               args.host, args.port, models.default)
    print(f"chat page: {page_address(args.host, args.port)}", file=sys.stderr, flush=True)

    async def drain_then_exit() -> None:
        """SIGTERM: refuse new requests (503), let in-flight ones finish up to the deadline, end the rest, exit."""
        gate.draining = True
        await wait_until(lambda: not gate.in_flight and pool.idle, args.shutdown_deadline)
        gate.end_all()
        await wait_until(lambda: not gate.in_flight, END_GRACE_SECONDS)
        server.should_exit = True  # uvicorn closes the connections, cancelling what is left after END_GRACE_SECONDS

    async def main() -> None:
        config_server = server.serve()
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(config_server)
        reaper = asyncio.ensure_future(pool.reap_forever())
        if args.open:
            asyncio.ensure_future(open_when_listening(server, page_address(args.host, args.port)))
        await asyncio.sleep(0)  # let uvicorn install its own handlers first, then take SIGTERM over
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(drain_then_exit()))
        await task
        reaper.cancel()

    try:
        asyncio.run(main())
    finally:
        pool.stop_all()


def engine_speculation(args: argparse.Namespace) -> dict:
    """EngineConfig's speculation fields from --spec, --draft-model and --draft-max, checked before any load."""
    from ..draft import check_speculation_options
    from ..speculative import SpeculationConfig
    from ..store import ModelStore

    config = SpeculationConfig(args.spec, args.draft_max)
    check_speculation_options(config, args.draft_model)
    draft = ModelStore().resolve(args.draft_model, pull=True) if args.draft_model else None  # as -m pulls
    return dict(speculation=config, draft_model=draft)


def read_api_keys(args: argparse.Namespace) -> list[str]:
    """The keys the server accepts: --api-key, else those of --api-key-file, else $DEEPROOTS_API_KEY; none: open."""
    if args.api_key:
        return [args.api_key]
    if args.api_key_file is None:
        return [os.environ[API_KEY_VARIABLE]] if os.environ.get(API_KEY_VARIABLE) else []
    try:
        lines = args.api_key_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RequestError(f"cannot read --api-key-file {args.api_key_file}: {error}") from error
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise RequestError(f"--api-key-file {args.api_key_file} holds no key")
    return keys


def allowed_hosts(args: argparse.Namespace, api_keys: list[str]) -> frozenset[str] | None:
    """The Host names the server answers to besides loopback ones (None: any name). A loopback server without a key
    answers only loopback names, so that a web page cannot reach it by DNS rebinding (its name resolving to
    127.0.0.1); --allowed-host turns the check on whatever the bind address."""
    from .middleware import host_name, is_loopback_address

    if not args.allowed_host and (api_keys or not is_loopback_address(args.host)):
        return None
    return frozenset(host_name(name.encode()) for name in args.allowed_host)  # 'API.internal:80' -> 'api.internal'


async def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def cmd_bench_serve(args: argparse.Namespace) -> None:
    import httpx

    from .bench import run_levels

    try:
        levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise RequestError(f"--concurrency takes positive whole numbers separated by commas, got {args.concurrency!r}")
    try:
        for row in run_levels(args.url, args.api_key, levels, args.requests, args.max_tokens):
            print(row)
    except httpx.TransportError as error:
        raise RequestError(f"no server answers at {args.url} ({error}); start one with `deeproots serve`, "
                           "or give its address with --url") from None
    except httpx.HTTPStatusError as error:
        raise RequestError(f"the server at {args.url} answered {error.response.status_code}: "
                           f"{error.response.text[:200]}") from None


def cmd_ps(args: argparse.Namespace) -> None:
    from .ps import loaded_models_table

    for line in loaded_models_table(args.url, args.api_key):
        print(line)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (python -m deeproots.server serve ...)."""
    from ..errors import DeeprootsError

    parser = argparse.ArgumentParser(prog="deeproots")
    add_server_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except DeeprootsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0

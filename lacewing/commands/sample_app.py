"""`lacewing sample-app serve|load`: the built-in test application and its load client.

Before: the parsed command line. After: `serve` runs until SIGTERM or SIGINT and exits 0
after a graceful stop (1 if it cannot listen); `load` prints a report (text or JSON) and
exits 0 if it sent anything, 1 if nothing could be sent. Bad flag values are refused by
argparse with exit status 2 and a message saying what is accepted.

The work is done by `lacewing.sample_app`; this module only translates flags.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
from collections.abc import Callable

from lacewing.errors import UserError
from lacewing.sample_app.behaviour import CLOSE_MODES, MAX_RESPONSE_BYTES, Behaviour
from lacewing.sample_app.identity import resolve_identity
from lacewing.sample_app.load import parse_target, run_load
from lacewing.sample_app.server import SampleServer
from lacewing.sample_app.units import (
    format_duration,
    parse_duration,
    parse_fraction,
    parse_port,
    parse_rate,
    parse_status,
)


def _arg(parse: Callable[[str], object]) -> Callable[[str], object]:
    """Turn a units parser into an argparse type whose ValueError message reaches the user."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be above zero (e.g. 5s)")
    return value


def _count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a count; use a whole number of 1 or more")
    return int(text)


def _concurrency(text: str) -> int:
    value = _count(text)
    if value > 1000:
        raise ValueError(f"{text!r} is too many workers; use 1 to 1000")
    return value


def _size(text: str) -> int:
    if not text.strip().isdigit() or int(text) > MAX_RESPONSE_BYTES:
        raise ValueError(f"{text!r} is not a size; use 0 to {MAX_RESPONSE_BYTES} bytes")
    return int(text)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \t\r\n") or any(c in value for c in "\r\n"):
        raise ValueError(f"{text!r} is not a header; use NAME:VALUE (e.g. x-user:alice)")
    return name.strip(), value.strip()


def _url(text: str) -> str:
    parse_target(text)
    return text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample-app",
        help="the built-in test application and load client",
        description="The built-in test application (serve) that local-mode pods run, and a load "
        "client (load) that reports statuses, errors, latency and which pods answered.",
    )
    sub = parser.add_subparsers(dest="sample_app_command", metavar="serve|load", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the sample HTTP app",
        description="Answer every HTTP request with JSON naming the pod, namespace, node, version "
        "and pod IP, and echoing the method, path and headers. Identity flags fall back to the "
        "environment: POD_NAME, POD_NAMESPACE, NODE_NAME, POD_IP, POD_VERSION. Per-request "
        "overrides: x-sample-status: CODE, x-sample-delay: DURATION, x-sample-close: reset|fin. "
        "GET /healthz answers 200 and ignores the injected faults unless --fail-healthz.",
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0; '::' for IPv6 and IPv4)")
    serve.add_argument("--port", type=_arg(parse_port), default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--fail-rate", type=_arg(parse_fraction), default=0.0, metavar="F",
                       help="fraction of requests answered with --fail-status (0..1 or N%%)")
    serve.add_argument("--fail-status", type=_arg(parse_status), default=503, metavar="CODE",
                       help="status of injected failures (default 503)")
    serve.add_argument("--latency", type=_arg(parse_duration), default=0.0, metavar="DURATION",
                       help="delay before every answer (e.g. 50ms)")
    serve.add_argument("--latency-jitter", type=_arg(parse_duration), default=0.0, metavar="DURATION",
                       help="extra delay, uniform between 0 and this, added to --latency")
    serve.add_argument("--close-rate", type=_arg(parse_fraction), default=0.0, metavar="F",
                       help="fraction of requests whose connection is dropped without an answer")
    serve.add_argument("--close-mode", choices=CLOSE_MODES, default="reset",
                       help="how --close-rate drops a connection: reset (RST, default) or fin")
    serve.add_argument("--response-bytes", type=_arg(_size), default=0, metavar="N",
                       help="pad every answer's JSON body to N bytes (for byte-counter tests)")
    serve.add_argument("--fail-healthz", action="store_true",
                       help="make GET /healthz answer --fail-status (a pod that is never ready)")
    serve.add_argument("--name", help="pod name to report (else $POD_NAME, else the host name)")
    serve.add_argument("--namespace", help="namespace to report (else $POD_NAMESPACE, else default)")
    serve.add_argument("--node", help="node name to report (else $NODE_NAME, else the host name)")
    serve.add_argument("--version", dest="app_version", metavar="V",
                       help="version to report (else $POD_VERSION, else unknown)")
    serve.add_argument("--pod-ip", help="pod IP to report (else $POD_IP, else the local address of each connection)")
    serve.add_argument("--seed", type=int, help="seed the fault draws so that a run repeats (exactly for sequential requests)")
    serve.add_argument("--drain-timeout", type=_arg(parse_duration), default=30.0, metavar="DURATION",
                       help="how long a stop waits for in-flight requests (default 30s)")
    serve.add_argument("-q", "--quiet", action="store_true", help="no per-request log lines on stderr")
    serve.set_defaults(func=_serve)

    load = sub.add_parser(
        "load",
        help="send requests and report statuses, errors, latency and answering pods",
        description="Send a bounded stream of requests to URL and report counts by status and by "
        "error (connect_refused, connect_error, timeout, reset, protocol_error, other), latency "
        "percentiles, and counts by the pod and version that answered. Exit 0 when it ran, "
        "whatever the statuses; 1 when nothing could be sent.",
    )
    load.add_argument("url", type=_arg(_url), metavar="URL", help="http://HOST[:PORT]/PATH")
    bound = load.add_mutually_exclusive_group()
    bound.add_argument("-n", "--requests", type=_arg(_count), metavar="N",
                       help="number of requests (default 100 when --duration is not given)")
    bound.add_argument("-d", "--duration", type=_arg(_positive_duration), metavar="D",
                       help="send for this long (e.g. 10s)")
    load.add_argument("-r", "--rate", type=_arg(parse_rate), metavar="R/s",
                      help="requests per second in total (default: as fast as possible)")
    load.add_argument("-c", "--concurrency", type=_arg(_concurrency), default=1, metavar="C",
                      help="requests in flight at once (default 1)")
    load.add_argument("-H", "--header", type=_arg(_header), action="append", default=[], metavar="K:V",
                      help="add a request header; repeatable")
    load.add_argument("-X", "--method", default="GET", help="request method (default GET)")
    load.add_argument("--body-bytes", type=_arg(_size), default=0, metavar="N",
                      help="send a body of N bytes with each request (default none)")
    load.add_argument("--keepalive", action=argparse.BooleanOptionalAction, default=True,
                      help="reuse connections (default) or open one per request")
    load.add_argument("--timeout", type=_arg(_positive_duration), default=5.0, metavar="D",
                      help="connect and read timeout per request (default 5s)")
    load.add_argument("-o", "--output", choices=("text", "json"), default="text", help="report format")
    load.set_defaults(func=_load)


def _serve(args: argparse.Namespace) -> int:
    behaviour = Behaviour(
        fail_rate=args.fail_rate, fail_status=args.fail_status, latency=args.latency,
        latency_jitter=args.latency_jitter, close_rate=args.close_rate, close_mode=args.close_mode,
        fail_healthz=args.fail_healthz, response_bytes=args.response_bytes,
    )
    identity = resolve_identity(
        pod=args.name, namespace=args.namespace, node=args.node, version=args.app_version,
        pod_ip=args.pod_ip, environ=os.environ,
    )
    try:
        server = SampleServer(
            identity=identity, behaviour=behaviour, host=args.host, port=args.port,
            quiet=args.quiet, seed=args.seed, drain_timeout=args.drain_timeout,
        )
    except OSError as exc:
        raise UserError(_listen_error(args.host, args.port, exc)) from None

    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        faults = _describe_faults(behaviour)
        print(f"listening on {server.host}:{server.port}", flush=True)
        server.log(
            f"listening on {server.host}:{server.port} as {identity.namespace}/{identity.pod} "
            f"version={identity.version} node={identity.node}" + (f" faults: {faults}" if faults else "")
        )
        while not stop.wait(0.5):
            if not server.running:
                raise UserError("the server stopped unexpectedly; see the log above")
        server.log(f"stopping: {server.in_flight} request(s) in flight")
        clean = server.stop()
        server.log("stopped" if clean else "stopped; some requests were cut at the drain timeout")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _describe_faults(b: Behaviour) -> str:
    parts = []
    if b.fail_rate:
        parts.append(f"fail-rate={b.fail_rate:g} status={b.fail_status}")
    if b.latency or b.latency_jitter:
        jitter = f"+[0,{format_duration(b.latency_jitter)}]" if b.latency_jitter else ""
        parts.append(f"latency={format_duration(b.latency)}{jitter}")
    if b.close_rate:
        parts.append(f"close-rate={b.close_rate:g} mode={b.close_mode}")
    if b.fail_healthz:
        parts.append("healthz failing")
    return " ".join(parts)


def _listen_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {host}:{port}: the address is already in use; choose another --port or stop what holds it"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}:{port}: no interface has that address; use one of this host's addresses or 0.0.0.0"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {host}:{port}: permission denied; use a port above 1023 or run as root"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port"


def _load(args: argparse.Namespace) -> int:
    report = run_load(
        args.url, requests=args.requests, duration=args.duration, rate=args.rate,
        concurrency=args.concurrency, headers=args.header, keepalive=args.keepalive,
        timeout=args.timeout, method=args.method,
        body=b"x" * args.body_bytes if args.body_bytes else None,
    )
    text = json.dumps(report.to_json(), indent=2) if args.output == "json" else report.format_text()
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `... | head`: the reader left; not an error of the run
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if report.sent == 0:
        kinds = ", ".join(f"{k} x{v}" for k, v in report.errors.items() if v) or "no attempts"
        print(f"error: nothing could be sent to {args.url} ({kinds}); check that the server is "
              "running and the URL's host and port", file=sys.stderr)
        return 1
    return 0

"""A standalone node tunnel: `python -m node_agent.ztunnel --snapshot FILE --ca-dir DIR`.

Before: run in a node's network namespace (`nsenter --net=...`), with the eBPF capture installed
there (node_agent.datapath) and a CA directory (Istio `cacerts` layout) to sign SVIDs in-process.
After: the listeners of `proxy.Tunnel` serve until SIGTERM/SIGINT, which drains (readiness goes
503, open connections get `--drain-seconds` to finish). SIGHUP re-reads the snapshot file.
Metrics on --metrics-port (Prometheus text), access log to --access-log (default stderr).
This is for performance runs and debugging; the node agent runs the same `Tunnel` in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from prometheus_client import CollectorRegistry, start_http_server

from control.ca.authority import CertificateAuthority
from node_agent.ztunnel import snapfile
from node_agent.ztunnel.certsource import CaCertificates
from node_agent.ztunnel.proxy import Tunnel, TunnelConfig
from node_agent.ztunnel.telemetry import Telemetry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m node_agent.ztunnel", description=__doc__)
    ap.add_argument("--snapshot", required=True, help="NodeSnapshot JSON (see snapfile.py)")
    ap.add_argument("--ca-dir", required=True, help="CA directory (cacerts layout)")
    ap.add_argument("--inbound-address", default="0.0.0.0",
                    help="address of the :15008 listener (the node's underlay address)")
    ap.add_argument("--listen-address", default="0.0.0.0",
                    help="address of the capture listeners and readiness")
    ap.add_argument("--outbound-port", type=int, default=15001)
    ap.add_argument("--plaintext-port", type=int, default=15006)
    ap.add_argument("--inbound-port", type=int, default=15008)
    ap.add_argument("--ready-port", type=int, default=15021)
    ap.add_argument("--metrics-port", type=int, default=15020)
    ap.add_argument("--access-log", default="-", help="file, '-' for stderr, 'off'")
    ap.add_argument("--no-transparent", action="store_true")
    ap.add_argument("--no-resumption", action="store_true")
    ap.add_argument("--tunnel-reuse", action=argparse.BooleanOptionalAction,
                    default=TunnelConfig().reuse,
                    help="reuse TLS connections toward node tunnels (framed protocol)")
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--splice", action="store_true",
                    help="same-node connections forwarded in the kernel (sockhash + sk_skb)")
    ap.add_argument("--drain-seconds", type=float, default=10.0)
    ap.add_argument("--idle-timeout", type=float, default=3600.0)
    ap.add_argument("--handshake-timeout", type=float, default=10.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        snapshot = snapfile.load(args.snapshot)
    except snapfile.SnapshotFileError as exc:
        print(f"error: {exc}; fix the snapshot file", file=sys.stderr)
        return 2
    ca = CertificateAuthority.load_or_generate(args.ca_dir)
    registry = CollectorRegistry()
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.listen_address, registry=registry)
    log_stream = None if args.access_log == "off" else (
        sys.stderr if args.access_log == "-" else open(args.access_log, "a", buffering=1))
    la = args.listen_address
    config = TunnelConfig(outbound_addr=(la, args.outbound_port),
                          plaintext_addr=(la, args.plaintext_port),
                          readiness_addr=(la, args.ready_port),
                          inbound_addr=(args.inbound_address, args.inbound_port),
                          tunnel_port=args.inbound_port,
                          transparent=not args.no_transparent,
                          resumption=not args.no_resumption, idle_timeout=args.idle_timeout,
                          splice=args.splice, reuse=args.tunnel_reuse,
                          handshake_timeout=args.handshake_timeout)
    tunnel = Tunnel(CaCertificates(ca), config=config,
                    telemetry=Telemetry(registry=registry, access_log=log_stream))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def reload() -> None:
            try:
                loop.create_task(tunnel.update(snapfile.load(args.snapshot)))
            except snapfile.SnapshotFileError as exc:
                logging.error("snapshot not reloaded: %s", exc)
        loop.add_signal_handler(signal.SIGHUP, reload)
        await tunnel.update(snapshot)
        await tunnel.start()
        print(f"lacewing tunnel ready on {tunnel.addresses}", file=sys.stderr, flush=True)
        await stop.wait()
        await tunnel.drain(timeout=args.drain_seconds)

    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop
            uvloop.install()
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m waypoint`: run a waypoint as its own process.

Before: a bootstrap file (`waypoint.bootstrap`: mesh resources + a `WaypointServices`
document), or the control plane over xDS (`--xds` with the node credential, `--credentials`);
and the waypoint's SVID: fixed files (`--cert/--key/--trust-bundle`), or issued and renewed at
half-life (`waypoint/renewal.py`) from a CA directory (`--ca-dir`) or, with `--xds`, from the
control plane's CA with the node credential. With an SVID the listener is the waypoint's
tunnel port: node tunnels connect with mutual TLS and the tunnel header (docs/tunnel.md), and
enrolled endpoints are reached through their nodes' tunnels. After: the
proxy serves on `--listen` until SIGTERM/SIGINT, metrics on `--metrics` (`/metrics`,
`/healthz/ready`); SIGHUP re-reads the bootstrap file (a new snapshot, applied atomically).
Prints `listening on HOST:PORT` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


GC_GEN0_THRESHOLD = 20000


def tune_gc() -> None:
    """The cyclic collector cost ~10 % of the waypoint's CPU under load: every request makes
    a few hundred container objects, so with CPython's default gen0 threshold (700) it ran
    every few requests and, through the older generations, kept re-scanning everything
    startup made. Freeze what exists now (modules, config, SDKs: never scanned again) and
    collect the young generation every `GC_GEN0_THRESHOLD` allocations instead; memory held by
    cycles stays bounded by that. Process-wide, so only the process entry point does it."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m waypoint", description=__doc__.split("\n")[0])
    p.add_argument("--bootstrap", type=Path, help="snapshot file (YAML); or follow --xds")
    p.add_argument("--xds", metavar="HOST:PORT[,HOST:PORT]",
                   help="control plane replicas to follow over delta xDS (instead of a file)")
    p.add_argument("--credentials", type=Path,
                   help="with --xds: the node credential directory (node-cert.pem, ...)")
    p.add_argument("--node", help="with --xds: the node this waypoint runs on")
    p.add_argument("--waypoint", metavar="NS/NAME", help="with --xds: which waypoint this is")
    p.add_argument("--listen", type=_addr, default=("0.0.0.0", 15008), metavar="HOST:PORT")
    p.add_argument("--metrics", type=_addr, default=("0.0.0.0", 15020), metavar="HOST:PORT")
    p.add_argument("--default-service", metavar="NS/NAME",
                   help="the Service for requests whose Host names none (a listener per service)")
    p.add_argument("--cert", type=Path, help="PEM certificate chain (enables mutual TLS)")
    p.add_argument("--key", type=Path, help="PEM private key")
    p.add_argument("--trust-bundle", type=Path, help="PEM roots that client certificates chain to")
    p.add_argument("--ca-dir", type=Path,
                   help="issue (and renew) the waypoint's own SVID from this CA directory "
                   "(local mode and standalone runs, as the node tunnel's --ca-dir); enables "
                   "mutual TLS. With --xds and neither this nor --cert, the SVID comes from "
                   "the control plane's CA (--credentials)")
    p.add_argument("--svid-ttl", type=int, default=0, metavar="SECONDS",
                   help="lifetime to ask for the waypoint's SVID (default 0: the CA's, 24 h); "
                   "it is renewed at half of it")
    p.add_argument("--source-ip", default=None,
                   help="the waypoint's address, sent as the source to node tunnels "
                   "(default $POD_IP, else the --listen host)")
    p.add_argument("--trace-sample", type=float, default=0.01,
                   help="share of new traces sampled (default 0.01, Istio's)")
    p.add_argument("--stream-idle-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="end a request whose stream moves no byte either way for this long: "
                   "408 if nothing was answered yet, else a reset (Envoy's stream_idle_timeout, "
                   "default 300; 0 turns it off)")
    p.add_argument("--no-fast-lane", action="store_true",
                   help="serve every request on the Python path (the compiled HTTP/1.1 fast "
                   "lane is on by default when built; also LACEWING_WAYPOINT_FAST_LANE=0)")
    p.add_argument("--retry-buffer-bytes", type=int, default=1024 * 1024, metavar="N",
                   help="request body bytes kept for retries and mirroring (default 1 MiB, "
                   "Envoy's per-request buffer limit); a longer body streams on and is "
                   "neither retried nor mirrored")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from waypoint import bootstrap
    from waypoint.proxy import Waypoint, WaypointServer, new_event_loop
    from waypoint.telemetry import Tracing

    if bool(args.bootstrap) == bool(args.xds):
        print("error: give either --bootstrap FILE or --xds ADDRESSES", file=sys.stderr)
        return 2
    if args.xds:
        if not (args.credentials and args.node and args.waypoint and "/" in args.waypoint):
            print("error: --xds needs --credentials DIR, --node NAME and --waypoint NS/NAME",
                  file=sys.stderr)
            return 2
        ns, name = args.waypoint.split("/", 1)
        snap = bootstrap.snapshot(waypoint=(ns, name), version="")  # until the first push
    else:
        try:
            snap = bootstrap.load_file(args.bootstrap)
        except Exception as e:  # noqa: BLE001 - one clear line for the operator
            print(f"error: cannot load {args.bootstrap}: {e}", file=sys.stderr)
            return 2
    ssl_ctx = None
    tunnels = None
    creds = None
    rotation = None
    ca_client = None
    if args.cert or args.key or args.trust_bundle:
        if not (args.cert and args.key and args.trust_bundle):
            print("error: mutual TLS needs --cert, --key and --trust-bundle together",
                  file=sys.stderr)
            return 2
        creds = (args.cert.read_bytes(), args.key.read_bytes(), args.trust_bundle.read_bytes())
    elif args.ca_dir or args.xds:
        from waypoint import renewal

        if args.ca_dir:
            from control.ca.authority import CertificateAuthority

            try:   # the first start of a standalone waypoint may make the root
                CertificateAuthority.load_or_generate(args.ca_dir)
            except Exception as e:  # noqa: BLE001 - one clear line for the operator
                print(f"error: cannot use the CA in {args.ca_dir}: {e}", file=sys.stderr)
                return 2
            source = renewal.ca_dir_source(args.ca_dir, snap.waypoint.identity,
                                           ttl=args.svid_ttl)
        else:
            from node_agent.agent import ca_target
            from node_agent.certs.ca_client import GrpcCaClient

            ca_client = GrpcCaClient.from_node_credential(ca_target(args.xds.split(",")),
                                                          args.credentials)
            source = renewal.ca_client_source(ca_client, snap.waypoint.identity,
                                              ttl=args.svid_ttl)
        rotation = renewal.SvidRotation(source)
    if creds is not None or rotation is not None:
        # Mutual TLS means node tunnels: they start each connection with the tunnel header,
        # and enrolled endpoints are reached through their own node's tunnel.
        import os

        from waypoint.proxy import Tunnels
        from waypoint.tls import client_context, server_context

        source_ip = args.source_ip or os.environ.get("POD_IP") or args.listen[0]
        if creds is not None:
            ssl_ctx = server_context(*creds)
            tunnels = Tunnels(client_context=client_context(*creds), source_ip=source_ip)
        else:   # contexts come with the first certificate (`renewal.attach`)
            tunnels = Tunnels(client_context=None, source_ip=source_ip)  # type: ignore[arg-type]
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    wp = Waypoint(snap, default_service=args.default_service, tunnels=tunnels,
                  tracing=Tracing(service_name=f"waypoint.{snap.waypoint.namespace}",
                                  sample_ratio=args.trace_sample))
    server = WaypointServer(wp, host=args.listen[0], port=args.listen[1], ssl_context=ssl_ctx,
                            metrics_host=args.metrics[0], metrics_port=args.metrics[1],
                            tunnel_header=tunnels is not None, fast_lane=not args.no_fast_lane,
                            retry_buffer_bytes=args.retry_buffer_bytes,
                            stream_idle_timeout_s=args.stream_idle_timeout)
    stop = asyncio.Event()

    def reload() -> None:
        if args.bootstrap is None:
            return
        try:
            wp.update(bootstrap.load_file(args.bootstrap))
            print("reloaded", args.bootstrap, flush=True)
        except Exception as e:  # noqa: BLE001 - keep serving the last good snapshot
            print(f"reload failed, keeping the last snapshot: {e}", file=sys.stderr, flush=True)

    async def first_certificate() -> bool:
        """Wait for the waypoint's first SVID (the CA may not be up yet) or for a stop."""
        from waypoint import renewal

        got = loop.create_task(rotation.first())
        stopping = loop.create_task(stop.wait())
        await asyncio.wait({got, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not got.done():
            got.cancel()
            return False
        server.ssl_context = rotation.server_context
        renewal.attach(rotation, wp, tunnels)
        return True

    async def run() -> None:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)
        renewer = None
        if rotation is not None:
            if not await first_certificate():
                return
            renewer = loop.create_task(rotation.run())
        try:
            await server.start()
        except OSError as e:
            print(f"error: cannot listen on {args.listen[0]}:{args.listen[1]}: {e.strerror}",
                  file=sys.stderr)
            raise SystemExit(1) from None
        follower = None
        if args.xds:
            from waypoint.control import follow

            client = follow(wp, addresses=args.xds.split(","), credentials=args.credentials,
                            node=args.node, namespace=ns, name=name)
            follower = loop.create_task(client.run())
        print(f"listening on {args.listen[0]}:{server.port}", flush=True)
        await stop.wait()
        if follower is not None:
            follower.cancel()
        if renewer is not None:
            renewer.cancel()
        if ca_client is not None:
            await ca_client.close()
        await server.stop()

    tune_gc()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m control`: run the control plane (local mode or Kubernetes).

    python -m control --local-state /run/lacewing/lw-<c>          # a local cluster
    python -m control --kubeconfig ~/.kube/config --ca-dir DIR    # Kubernetes, from outside
    python -m control --in-cluster --ca-dir /etc/cacerts          # Kubernetes, as a pod

Serves the CA and the xDS push on --grpc-address (default [::]:15012, mTLS) and metrics,
readiness and /debug/status on --metrics-address (default 0.0.0.0:15014). Stops cleanly on
SIGTERM/SIGINT. What it runs is control/plane.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from control import process
from control.ca.authority import CaConfigError, CertificateAuthority
from control.ca.spiffe_id import DEFAULT_TRUST_DOMAIN
from control.process import run_until_signalled


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m control", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--local-state", metavar="DIR",
                      help="a local cluster's state directory (reads config/ and runtime/)")
    mode.add_argument("--kubeconfig", metavar="PATH", help="follow this Kubernetes cluster")
    mode.add_argument("--in-cluster", action="store_true",
                      help="follow the Kubernetes cluster this pod runs in")
    p.add_argument("--ca-dir", metavar="DIR",
                   help="CA in Istio's cacerts layout (default: <local-state>/ca); generated if empty")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    p.add_argument("--grpc-address", default="[::]:15012")
    p.add_argument("--metrics-address", default="0.0.0.0:15014")
    p.add_argument("--poll-interval", type=float, default=0.2,
                   help="local mode: seconds between scans of the state directory")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def build_sources(args: argparse.Namespace) -> list:
    if args.local_state:
        from control.sources.directory import DirectorySource
        root = Path(args.local_state)
        return [DirectorySource([root / "config", root / "runtime"], interval=args.poll_interval)]
    from control.sources.kubernetes import KubernetesSource, load_api_client
    return [KubernetesSource(load_api_client(kubeconfig=args.kubeconfig,
                                             in_cluster=args.in_cluster))]


async def amain(args: argparse.Namespace) -> int:
    from control.plane import ControlPlane

    ca_dir = args.ca_dir or (Path(args.local_state) / "ca" if args.local_state else None)
    if ca_dir is None:
        print("control: --ca-dir is required in Kubernetes mode (Istio's cacerts layout)",
              file=sys.stderr)
        return 2
    try:
        ca = CertificateAuthority.load_or_generate(ca_dir, trust_domain=args.trust_domain)
    except CaConfigError as exc:
        print(f"control: {exc}", file=sys.stderr)
        return 2
    try:
        sources = build_sources(args)
    except Exception as exc:  # noqa: BLE001 - kubeconfig/in-cluster problems: say so, exit
        where = args.kubeconfig or ("the in-cluster service account" if args.in_cluster else "")
        print(f"control: cannot configure the Kubernetes client from {where}: {exc}; check the "
              "file (or run inside a pod with a service account)", file=sys.stderr)
        return 2
    host, _, port = args.metrics_address.rpartition(":")
    plane = ControlPlane(ca=ca, sources=sources, grpc_address=args.grpc_address,
                         metrics_host=host.strip("[]") or "0.0.0.0", metrics_port=int(port))
    return await run_until_signalled(plane)


def main(argv: list[str] | None = None) -> int:
    return process.main(amain, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

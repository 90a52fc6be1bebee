"""The host calls that make and unmake network namespaces, links, routes and rules.

Before: names and addresses decided elsewhere (`names`, `topology`). After: the kernel state
exists (or is gone). Everything goes through iproute2 and nftables run as child processes, in
batches where it matters, so a failure names the exact command that failed. Nothing here decides
what to build.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from lacewing.errors import UserError

CLONE_NEWNET = 0x40000000
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "ftp_proxy")


class CommandError(UserError):
    """A host command failed; the message holds the command and what it printed."""


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for processes inside namespaces: no proxy settings (PLATFORM.md), and
    this installation's `bin` first on PATH so that `lacewing` itself is found there."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    bindir = str(Path(sys.executable).parent)
    path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if path.split(":")[0] != bindir:
        env["PATH"] = f"{bindir}:{path}"
    if extra:
        env.update(extra)
    return env


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, env=clean_env(), check=False
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise CommandError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {detail}")
    return proc.stdout


def ip_batch(lines: Iterable[str], *, netns: str | None = None, force: bool = False) -> None:
    """Run iproute2 commands (`ip` without the `ip`), one per line, in one process."""
    text = "\n".join(lines) + "\n"
    argv = ["ip"] + (["-n", netns] if netns else []) + (["-force"] if force else []) + ["-batch", "-"]
    run(argv, input=text, check=not force)


def list_netns() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def add_netns(name: str) -> None:
    run(["ip", "netns", "add", name])
    ip_batch(["link set lo up"], netns=name)


def delete_netns(name: str) -> None:
    if netns_exists(name):
        run(["ip", "netns", "delete", name], check=False)


def pids_in_netns(name: str) -> list[int]:
    if not netns_exists(name):
        return []
    out = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def sysctl(netns: str, settings: dict[str, str]) -> None:
    args = [f"{k}={v}" for k, v in settings.items()]
    run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *args])


def nft(netns: str, ruleset: str) -> None:
    """Load an nftables ruleset (as `nft -f -` reads it) atomically inside `netns`."""
    run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=ruleset)


_libc = ctypes.CDLL(None, use_errno=True)


def socket_in_netns(netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in `netns`, made from this thread (setns is per thread).

    After: the calling thread is back in its own namespace; the socket stays in `netns`.
    """
    with open(f"/run/netns/{netns}", "rb") as target, open("/proc/thread-self/ns/net", "rb") as home:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
        try:
            return socket.socket(family, kind)
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:  # pragma: no cover - kernel refused
                err = ctypes.get_errno()
                raise OSError(err, f"setns back home: {os.strerror(err)}")


def tcp_probe(netns: str, host: str, port: int, *, timeout: float = 0.3) -> bool:
    """True when a TCP connection to host:port from inside `netns` is accepted."""
    try:
        sock = socket_in_netns(netns)
    except OSError:
        return False
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            return True
        except OSError:
            return False


def netns_exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs a command in a pod namespace, with its /etc/netns files mounted."""
    return ["ip", "netns", "exec", netns, *argv]


def nsenter_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs a command in a node namespace keeping the host's mounts (bpffs)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]


def bpffs_mounted(path: Path = Path("/sys/fs/bpf")) -> bool:
    with open("/proc/self/mounts") as fh:
        return any(line.split()[1] == str(path) and line.split()[2] == "bpf" for line in fh)


def mount_bpffs(path: Path = Path("/sys/fs/bpf")) -> bool:
    """Mount bpffs at `path` unless it is already; returns True when this call mounted it."""
    if bpffs_mounted(path):
        return False
    path.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "bpf", "bpf", str(path)])
    return True


def umount(path: Path) -> None:
    run(["umount", str(path)], check=False)


def http_get_in_netns(netns: str, host: str, port: int, path: str, *,
                      timeout: float = 5.0) -> tuple[int, bytes]:
    """GET http://host:port/path from inside `netns` (a node's loopback admin port, say)."""
    import http.client

    sock = socket_in_netns(netns)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        sock.close()

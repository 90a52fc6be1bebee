"""bpffs: make sure it is mounted, name the pinned objects of a node, and remove them.

Before: nothing, or a previous install's pins. After: /sys/fs/bpf is a bpffs (mounted here if
it was not, and never unmounted by us, since others may use it), and callers know each
object's path under /sys/fs/bpf/lw-<cluster>/<node>/. No compiler needed.
"""

from __future__ import annotations

import ctypes
import os
import shutil

from node_agent.bpf.settings import BPFFS, pin_dir

BPF_FS_MAGIC = 0xCAFE4A11


def is_bpffs(path: str = BPFFS) -> bool:
    class _StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]

    libc = ctypes.CDLL(None, use_errno=True)
    buf = _StatFs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC


def ensure_bpffs(path: str = BPFFS) -> bool:
    """Mount bpffs at `path` unless it already is one. True if this call mounted it."""
    if is_bpffs(path):
        return False
    os.makedirs(path, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount bpffs at {path}: {os.strerror(err)}; "
                           f"run as root, or mount it yourself: mount -t bpf bpf {path}")
    return True


def prog_path(cluster: str, node: str, name: str) -> str:
    return f"{pin_dir(cluster, node)}/prog_{name}"


def link_path(cluster: str, node: str, name: str) -> str:
    return f"{pin_dir(cluster, node)}/link_{name}"


def map_path(cluster: str, node: str, name: str) -> str:
    return f"{pin_dir(cluster, node)}/{name}"


def pinned(cluster: str, node: str) -> list[str]:
    d = pin_dir(cluster, node)
    try:
        return sorted(os.listdir(d))
    except FileNotFoundError:
        return []


def remove(cluster: str, node: str) -> None:
    """Unpin everything of this node; remove the cluster folder when it is left empty."""
    d = pin_dir(cluster, node)
    shutil.rmtree(d, ignore_errors=True)
    parent = os.path.dirname(d)
    try:
        os.rmdir(parent)
    except OSError:
        pass

"""The bpf(2) system call through ctypes: pinned objects, map elements, cgroup attachment.

Before: objects pinned in bpffs by `node_agent.bpf.load`. After: the long-running agent works on
those objects by file descriptor — look up, update, delete and iterate map elements, attach or
detach a program to a cgroup, ask a program's id and name — with no compiler and no BCC in the
process. x86_64 and aarch64 only (the syscall number).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterator

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_DELETE_BATCH = 27
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_DETACH = 34

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_CGROUP_SOCK_OPS = 3
BPF_SK_LOOKUP = 36
BPF_F_ALLOW_MULTI = 2

_ATTR_SIZE = 128
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    pass


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    if _NR_BPF is None:
        raise BpfError(errno.ENOSYS, f"bpf(2) number unknown on {platform.machine()}")
    ret = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), len(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return ret


def _attr() -> ctypes.Array:
    return ctypes.create_string_buffer(_ATTR_SIZE)


def _addr(buf) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


BPF_MAP_TYPE_HASH = 1


def map_create(*, map_type: int, key_size: int, value_size: int, max_entries: int,
               name: str = "") -> int:
    """Create a map (for tests and checks; the datapath's maps come from the loader)."""
    a = _attr()
    struct.pack_into("=IIIIIII", a, 0, map_type, key_size, value_size, max_entries, 0, 0, 0)
    struct.pack_into("16s", a, 28, name.encode()[:15])
    return _bpf(BPF_MAP_CREATE, a)


def obj_get(path: str) -> int:
    """Open a pinned program or map; the caller closes the returned fd."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    a = _attr()
    struct.pack_into("=QII", a, 0, _addr(p), 0, 0)
    try:
        return _bpf(BPF_OBJ_GET, a)
    except BpfError as e:
        raise BpfError(e.errno, f"cannot open pinned BPF object {path}: {os.strerror(e.errno)}") from None


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    a = _attr()
    struct.pack_into("=QII", a, 0, _addr(p), fd, 0)
    _bpf(BPF_OBJ_PIN, a)


def prog_info(fd: int) -> tuple[int, str]:
    """(id, name) of a loaded program."""
    info = ctypes.create_string_buffer(256)
    a = _attr()
    struct.pack_into("=IIQ", a, 0, fd, len(info), _addr(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, a)
    prog_id = struct.unpack_from("=I", info, 4)[0]
    name = info.raw[64:80].split(b"\0", 1)[0].decode()
    return prog_id, name


def prog_test_run(fd: int, packet: bytes) -> int:
    """Run a program once on a packet (BPF_PROG_TEST_RUN) and return its verdict. For tests
    that build packets and check verdicts; nothing is sent anywhere."""
    data = ctypes.create_string_buffer(packet, len(packet))
    out = ctypes.create_string_buffer(len(packet) + 256)
    a = _attr()
    struct.pack_into("=IIIIQQII", a, 0, fd, 0, len(packet), len(out), _addr(data), _addr(out),
                     1, 0)
    _bpf(BPF_PROG_TEST_RUN, a)
    return struct.unpack_from("=I", a, 4)[0]


def prog_run_stats(fd: int) -> tuple[int, int]:
    """(run_cnt, run_time_ns) of a loaded program; both stay 0 unless the sysctl
    kernel.bpf_stats_enabled is 1 (the kernel only counts while it is)."""
    info = ctypes.create_string_buffer(256)
    a = _attr()
    struct.pack_into("=IIQ", a, 0, fd, len(info), _addr(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, a)
    run_time_ns, run_cnt = struct.unpack_from("=QQ", info, 192)
    return run_cnt, run_time_ns


def prog_get_fd_by_id(prog_id: int) -> int:
    """Open a loaded program by id; the caller closes the returned fd."""
    a = _attr()
    struct.pack_into("=I", a, 0, prog_id)
    return _bpf(BPF_PROG_GET_FD_BY_ID, a)


def map_info(fd: int) -> dict[str, int | str]:
    info = ctypes.create_string_buffer(128)
    a = _attr()
    struct.pack_into("=IIQ", a, 0, fd, len(info), _addr(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, a)
    typ, mid, ks, vs, maxe, flags = struct.unpack_from("=IIIIII", info, 0)
    name = info.raw[24:40].split(b"\0", 1)[0].decode()
    return {"type": typ, "id": mid, "key_size": ks, "value_size": vs, "max_entries": maxe,
            "flags": flags, "name": name}


def prog_attach(*, target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    a = _attr()
    struct.pack_into("=IIII", a, 0, target_fd, prog_fd, attach_type, flags)
    _bpf(BPF_PROG_ATTACH, a)


def prog_detach(*, target_fd: int, prog_fd: int, attach_type: int) -> None:
    a = _attr()
    struct.pack_into("=III", a, 0, target_fd, prog_fd, attach_type)
    _bpf(BPF_PROG_DETACH, a)


def prog_query(*, target_fd: int, attach_type: int, max_progs: int = 64) -> list[int]:
    """Ids of the programs attached to a cgroup at attach_type (this cgroup only)."""
    ids = (ctypes.c_uint32 * max_progs)()
    a = _attr()
    struct.pack_into("=IIIIQI", a, 0, target_fd, attach_type, 0, 0, ctypes.addressof(ids),
                     max_progs)
    _bpf(BPF_PROG_QUERY, a)
    count = struct.unpack_from("=I", a, 24)[0]
    return list(ids[: min(count, max_progs)])


def link_create(*, prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach a program through a BPF link (e.g. sk_lookup to a network namespace fd); the
    attachment lasts as long as the link has an fd or a pin. The caller closes the fd."""
    a = _attr()
    struct.pack_into("=IIII", a, 0, prog_fd, target_fd, attach_type, 0)
    return _bpf(BPF_LINK_CREATE, a)


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Swap the program of a link in one step (no moment without one)."""
    a = _attr()
    struct.pack_into("=IIII", a, 0, link_fd, new_prog_fd, 0, 0)
    _bpf(BPF_LINK_UPDATE, a)


def link_detach(link_fd: int) -> None:
    """Detach a link's program now, whoever else holds the link (its pin stays until removed)."""
    a = _attr()
    struct.pack_into("=I", a, 0, link_fd)
    _bpf(BPF_LINK_DETACH, a)


def link_info(fd: int) -> dict[str, int]:
    """type, id, prog_id and, for a network namespace link, netns_ino (0 once the namespace
    is gone) and attach_type."""
    info = ctypes.create_string_buffer(64)
    a = _attr()
    struct.pack_into("=IIQ", a, 0, fd, len(info), _addr(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, a)
    typ, link_id, prog_id, _pad, netns_ino, attach_type = struct.unpack_from("=IIIIII", info, 0)
    return {"type": typ, "id": link_id, "prog_id": prog_id, "netns_ino": netns_ino,
            "attach_type": attach_type}


class Map:
    """A pinned (or otherwise open) map, with keys and values as raw bytes."""

    def __init__(self, fd: int, *, owns_fd: bool = True):
        self.fd = fd
        self._owns = owns_fd
        info = map_info(fd)
        self.key_size = int(info["key_size"])
        self.value_size = int(info["value_size"])
        self.max_entries = int(info["max_entries"])
        self.name = str(info["name"])
        self.map_type = int(info["type"])
        # per-CPU maps hand out one value per possible CPU, each rounded up to 8 bytes
        self.percpu = self.map_type in (5, 6, 10)   # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
        self._ncpu = _possible_cpus() if self.percpu else 1
        self._value_buf_size = (((self.value_size + 7) // 8) * 8 * self._ncpu
                                if self.percpu else self.value_size)

    @classmethod
    def open(cls, path: str) -> Map:
        return cls(obj_get(path))

    def close(self) -> None:
        if self._owns and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _elem(self, cmd: int, key: bytes, value=None, flags: int = 0) -> int:
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name}: key of {len(key)} bytes, expected {self.key_size}")
        if self.fd < 0:
            raise BpfError(errno.EBADF, f"map {self.name}: used after close")
        k = ctypes.create_string_buffer(key, self.key_size)
        a = _attr()
        struct.pack_into("=IIQQQ", a, 0, self.fd, 0, _addr(k), _addr(value), flags)
        return _bpf(cmd, a)

    def lookup(self, key: bytes) -> bytes | None:
        v = ctypes.create_string_buffer(self._value_buf_size)
        try:
            self._elem(BPF_MAP_LOOKUP_ELEM, key, v)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return v.raw

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        raw = self.lookup(key)
        if raw is None:
            return []
        step = ((self.value_size + 7) // 8) * 8
        return [raw[i * step: i * step + self.value_size] for i in range(self._ncpu)]

    def update(self, key: bytes, value: bytes, *, flags: int = BPF_ANY) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"map {self.name}: value of {len(value)} bytes, expected {self.value_size}")
        v = ctypes.create_string_buffer(value, self.value_size)
        self._elem(BPF_MAP_UPDATE_ELEM, key, v, flags)

    def delete(self, key: bytes) -> bool:
        try:
            self._elem(BPF_MAP_DELETE_ELEM, key)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        """All keys, iterated with GET_NEXT_KEY (concurrent changes may skip or repeat one)."""
        nxt = ctypes.create_string_buffer(self.key_size)
        cur: bytes | None = None
        while True:
            a = _attr()
            k = ctypes.create_string_buffer(cur, self.key_size) if cur is not None else None
            struct.pack_into("=IIQQ", a, 0, self.fd, 0, _addr(k), _addr(nxt))
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, a)
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            cur = nxt.raw
            yield cur

    def dump(self, *, chunk: int = 4096) -> tuple[bytes, bytes, int]:
        """Every (key, value) at once with BPF_MAP_LOOKUP_BATCH: (keys, values, count), the
        keys and values packed back to back. Not for per-CPU maps."""
        keys = bytearray()
        values = bytearray()
        total = 0
        in_batch = ctypes.create_string_buffer(8)
        out_batch = ctypes.create_string_buffer(8)
        kbuf = ctypes.create_string_buffer(self.key_size * chunk)
        vbuf = ctypes.create_string_buffer(self.value_size * chunk)
        first = True
        while True:
            a = _attr()
            struct.pack_into("=QQQQIIQQ", a, 0, 0 if first else _addr(in_batch),
                             _addr(out_batch), _addr(kbuf), _addr(vbuf), chunk, self.fd, 0, 0)
            done = False
            try:
                _bpf(BPF_MAP_LOOKUP_BATCH, a)
            except BpfError as e:
                if e.errno != errno.ENOENT:
                    raise
                done = True
            count = struct.unpack_from("=I", a, 32)[0]
            keys += kbuf.raw[: count * self.key_size]
            values += vbuf.raw[: count * self.value_size]
            total += count
            if done:
                return bytes(keys), bytes(values), total
            ctypes.memmove(in_batch, out_batch, 8)
            first = False

    def delete_many(self, keys: bytes) -> int:
        """Delete the packed keys (BPF_MAP_DELETE_BATCH); returns how many were deleted."""
        count = len(keys) // self.key_size
        if count == 0:
            return 0
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        a = _attr()
        struct.pack_into("=QQQQIIQQ", a, 0, 0, 0, _addr(kbuf), 0, count, self.fd, 0, 0)
        try:
            _bpf(BPF_MAP_DELETE_BATCH, a)
        except BpfError as e:
            if e.errno != errno.ENOENT:
                raise
        return struct.unpack_from("=I", a, 32)[0]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v


def _possible_cpus() -> int:
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n

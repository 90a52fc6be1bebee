"""Tier 1: the client's pool of idle tunnel connections (node_agent/ztunnel/pool.py)."""

from __future__ import annotations

from node_agent.ztunnel.pool import IdlePool


class Conn:
    def __init__(self, name: str) -> None:
        self.name, self.alive, self.closed = name, True, False


def make(**kw):
    now = [0.0]
    discarded: list[Conn] = []
    pool = IdlePool(max_idle_per_key=kw.get("max_idle", 2), idle_timeout=kw.get("timeout", 20),
                    usable=lambda c: c.alive, discard=discarded.append, clock=lambda: now[0])
    return pool, now, discarded


def test_lifo_per_key_and_keys_never_mix():
    pool, _now, _ = make()
    a1, a2, b1 = Conn("a1"), Conn("a2"), Conn("b1")
    assert pool.put("a", a1) and pool.put("a", a2) and pool.put("b", b1)
    assert pool.take("a") is a2 and pool.take("a") is a1 and pool.take("a") is None
    assert pool.take("c") is None and pool.take("b") is b1 and len(pool) == 0


def test_at_most_max_idle_per_key():
    pool, _now, _ = make(max_idle=2)
    assert pool.put("a", Conn("1")) and pool.put("a", Conn("2"))
    assert not pool.put("a", Conn("3"))      # the caller closes it
    assert pool.put("b", Conn("4")) and len(pool) == 3


def test_dead_or_too_old_connections_are_discarded_not_handed_out():
    pool, now, discarded = make(timeout=20)
    old, dead, fresh = Conn("old"), Conn("dead"), Conn("fresh")
    pool.put("a", old)
    now[0] = 15.0
    pool.put("a", fresh)
    pool.put("b", dead)
    dead.alive = False
    now[0] = 21.0
    assert pool.take("a") is fresh           # 6 s idle
    assert pool.take("a") is None and discarded == [old]
    assert pool.take("b") is None and discarded == [old, dead]


def test_expired_sweeps_and_clear_discards_everything():
    pool, now, discarded = make(timeout=20)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    pool.put("k", a)
    now[0] = 10.0
    pool.put("k", b)
    pool.put("j", c)
    c.alive = False
    now[0] = 25.0
    assert pool.expired() == 2 and discarded == [a, c] and pool.idle() == [b]
    pool.clear()
    assert discarded == [a, c, b] and len(pool) == 0

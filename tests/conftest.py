"""Fixtures shared by every tier: unique names, and local clusters that are always removed."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest


def unique_cluster_name() -> str:
    """Unique per test run, so parallel runs and leftovers never collide."""
    return "t" + secrets.token_hex(4)


@pytest.fixture
def root_required() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root: it makes network namespaces (run `make test` as root)")


@pytest.fixture
def make_cluster(root_required) -> Iterator:
    """Factory: make_cluster(nodes=2) → an up LocalCluster, removed at teardown whatever happens."""
    from lacewing.local.cluster import LocalCluster

    made: list[LocalCluster] = []

    def factory(*, nodes: int = 2, name: str | None = None, mesh: bool = True) -> LocalCluster:
        cluster = LocalCluster(name or unique_cluster_name())
        made.append(cluster)
        cluster.up(nodes=nodes, mesh=mesh)
        return cluster

    try:
        yield factory
    finally:
        for cluster in made:
            cluster.down()

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import LocalCluster, start_cluster


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[LocalCluster]:
    yield from start_cluster()


@pytest.fixture
def cluster(ray_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The shared cluster with both hosts present before and after the test."""
    ray_cluster.restore()
    yield ray_cluster
    ray_cluster.restore()

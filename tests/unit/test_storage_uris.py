"""RATE_LIMIT_STORAGE_URI read the same way for the budgets' Redis client as `limits`
reads it for the request limits: one server, Cluster, Sentinel (docs/redis.md)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from avito_ai.storage import STORAGE_TIMEOUT_S, make_storage, redis_client
from tests.conftest import isolated_settings


def test_a_cluster_uri_names_its_first_nodes_and_credentials() -> None:
    client = redis_client("redis+cluster://ops:p%40ss@10.0.0.1:7000,10.0.0.2:7001")
    assert isinstance(client, RedisCluster)
    nodes = client.nodes_manager.startup_nodes.values()
    assert sorted((n.host, n.port) for n in nodes) == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    kwargs = client.nodes_manager.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("ops", "p@ss")
    assert kwargs["socket_timeout"] == STORAGE_TIMEOUT_S


def test_a_sentinel_uri_names_the_sentinels_and_the_service() -> None:
    client = redis_client("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/mymaster")
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert pool.service_name == "mymaster"  # type: ignore[attr-defined]
    sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    kwargs = [s.connection_pool.connection_kwargs for s in sentinels]
    assert [(k["host"], k["port"]) for k in kwargs] == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    # The password is the primary's and the sentinels', as `limits` uses it.
    assert pool.connection_kwargs["password"] == "pw"
    assert all(k["password"] == "pw" for k in kwargs)


def test_a_sentinel_uri_without_a_service_is_refused_plainly() -> None:
    with pytest.raises(ValueError, match="service name"):
        redis_client("redis+sentinel://10.0.0.1:26379")


@pytest.mark.parametrize(
    "uri",
    [
        "redis://10.0.0.1:6379/0",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
        "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster",
    ],
)
def test_the_limits_accept_the_same_uris(uri: str) -> None:
    assert isolated_settings(rate_limit_storage_uri=uri).rate_limit_storage_uri == uri
    make_storage(uri)  # (connects lazily: nothing listens there)


def test_other_storages_are_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="redis\\+cluster://"):
        isolated_settings(rate_limit_storage_uri="memcached://10.0.0.1:11211")

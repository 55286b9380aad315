"""Fixtures for the real services (PostgreSQL, Kafka, Redis) that `make test` starts.

`pg_url`, `kafka_bootstrap` and `redis_url` hand out the address of a service that answered its
health check. A service that does not answer skips the test with the reason, except under CI
(`CI=true`), where it fails: there `make test` started the services, so silence would hide a
broken stack. The helpers give each test its own database, topic or Redis key prefix, and remove
them afterwards, so tests can share the servers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from connectors.services import (
    probe_kafka,
    probe_postgres,
    probe_redis,
    services_database_url,
    services_redis_url,
)
from connectors.settings import get_settings

KAFKA_ADMIN_TIMEOUT_S = 30.0


def running_under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def service_unavailable(message: str) -> None:
    """Skip locally; fail under CI, where `make test` must have started everything."""
    if running_under_ci():
        pytest.fail(f"{message} (CI=true, so this fails instead of skipping)", pytrace=False)
    pytest.skip(f"{message}; start it with `velo services up`")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of the services PostgreSQL (DATABASE_URL, else postgres@127.0.0.1:5432/velo)."""
    url = services_database_url(get_settings())
    problem = probe_postgres(url)
    if problem is not None:
        service_unavailable(f"PostgreSQL at {_redacted(url)} is not reachable: {problem}")
    return url


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the services Kafka (KAFKA_BOOTSTRAP, else 127.0.0.1:9092)."""
    bootstrap = get_settings().kafka_bootstrap
    problem = probe_kafka(bootstrap, timeout_s=5.0)
    if problem is not None:
        service_unavailable(f"Kafka at {bootstrap} is not reachable: {problem}")
    return bootstrap


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the services Redis (REDIS_URL, else redis://127.0.0.1:6379/0)."""
    url = services_redis_url(get_settings())
    problem = probe_redis(url)
    if problem is not None:
        service_unavailable(f"Redis at {_redacted(url)} is not reachable: {problem}")
    return url


@pytest.fixture
def fresh_database(pg_url: str) -> Iterator[str]:
    """URL of a new, empty, uniquely named database on the services PostgreSQL; dropped after."""
    name = f"velo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(pg_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            # FORCE: a test that leaked a connection must not leak the database too.
            query = sql.SQL("drop database if exists {} with (force)")
            conn.execute(query.format(sql.Identifier(name)))


@pytest.fixture
def kafka_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: `kafka_topic(partitions=4, prefix="test")` creates a unique topic, returns its
    name; all topics it made are deleted after the test."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(partitions: int = 4, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=KAFKA_ADMIN_TIMEOUT_S,
        )
        futures[name].result(timeout=KAFKA_ADMIN_TIMEOUT_S)
        created.append(name)
        return name

    yield make
    if created:
        for future in admin.delete_topics(
            created, operation_timeout=KAFKA_ADMIN_TIMEOUT_S
        ).values():
            future.result(timeout=KAFKA_ADMIN_TIMEOUT_S)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix ("test:<hex>:") on the services Redis; its keys are deleted after."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _redacted(url: str) -> str:
    """The URL without its password, for skip and failure messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"

"""Fixtures shared by every suite: a real redis-server on a free port."""

import pytest

from tests.support.redis import RedisServer


@pytest.fixture(scope="session")
def redis_session():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(redis_session):
    """The session's redis-server, emptied for this test."""
    redis_session.flush()
    return redis_session


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, for tests that stop and restart it."""
    server = RedisServer().start()
    yield server
    server.stop()

"""Fixtures shared by every suite: a real redis-server on a free port, and a temp folder of the
session's own that must be empty of edgeproxy folders when the session ends."""

import os
import shutil
import tempfile

import pytest

from tests.support.redis import RedisServer

# Every process the suite starts (edgeproxy supervisors, redis-server) inherits TMPDIR, so
# the folders they make land here, where the session can check that none is left behind.
# gettempdir() is read first: pytest's own tmp_path stays where pytest keeps it.
tempfile.gettempdir()
SUITE_TMP = tempfile.mkdtemp(prefix="edgeproxy-suite-")
os.environ["TMPDIR"] = SUITE_TMP


def leftovers(root: str) -> list[str]:
    """edgeproxy folders (run folders, Redis data folders) under ``root``."""
    found = []
    for parent, dirs, _ in os.walk(root):
        for name in dirs:
            if name.startswith("edgeproxy-"):
                path = os.path.join(parent, name)
                found.append(f"{path}: {sorted(os.listdir(path))}")
    return found


def pytest_sessionfinish(session, exitstatus):
    left = leftovers(SUITE_TMP)
    shutil.rmtree(SUITE_TMP, ignore_errors=True)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")
            reporter.write_sep("=", "temporary folders left behind by the suite", red=True)
            for line in left:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def redis_session():
    server = RedisServer().start()
    yield server
    server.close()


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
    server.close()

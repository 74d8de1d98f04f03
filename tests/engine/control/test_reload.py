"""Reload pieces without processes: loading a candidate, the file watch, and the worker side
that applies a published config."""

import os

import pytest

from engine.control.reload import (
    FileWatch, apply_published, digest_of, load_candidate, publish,
)
from engine.chain.schema import ConfigError
from tests.support.client import Conn
from tests.support.proxy import InProcessProxy

STATIC = """
[server]
access_log = "off"

[[routes]]
name = "s"
[routes.static]
body = "{body}"
"""


def test_a_good_file_loads_parsed_and_compiled(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(STATIC.format(body="x"))
    cand = load_candidate(str(path))
    assert cand.cfg.routes[0].name == "s"
    assert cand.runtime.config is cand.cfg
    assert cand.digest == digest_of(path.read_bytes())


@pytest.mark.parametrize("text, path, message", [
    ("[[routes]\n", "", "invalid TOML"),
    ('[[routes]]\nname = "r"\nupstream = "nope"\n', "routes[0].upstream", "unknown upstream"),
    ('[[routes]]\nname = "r"\npaths = ["/a/{x"]\n[routes.static]\n', "routes[0].paths[0]", ""),
    ('[admin]\nlisten = "0.0.0.0:9901"\n', "admin.token", "loopback"),
], ids=["toml", "unknown-upstream", "bad-pattern", "public-admin-without-token"])
def test_a_bad_file_raises_with_key_paths_and_its_digest(tmp_path, text, path, message):
    file = tmp_path / "c.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_candidate(str(file))
    assert any(p == path and message in m for p, m in info.value.errors), info.value.errors
    assert info.value.digest == digest_of(text.encode())


def test_a_missing_file_is_a_config_error_without_digest(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_candidate(str(tmp_path / "missing.toml"))
    assert "cannot read" in info.value.errors[0][1] and info.value.digest is None


def test_file_watch_reports_a_change_once_it_holds_still(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("a = 1\n")
    watch = FileWatch(str(path), digest_of(b"a = 1\n"), interval=1.0, settle=0.3)
    assert watch.poll(0.0) is False
    path.write_text("a = 2\n")
    assert watch.poll(0.5) is False  # not due yet (polled at 0.0, every 1.0 s)
    assert watch.poll(1.0) is False  # changed: wait for it to settle
    path.write_text("a = 3\n")
    assert watch.poll(1.3) is False  # changed again while settling: wait again
    assert watch.poll(1.6) is True  # still for one settle period
    watch.tried(digest_of(b"a = 3\n"))  # what the supervisor does when it loads it
    assert watch.poll(2.6) is False and watch.poll(3.6) is False


def test_file_watch_ignores_a_touch_and_a_change_back(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("a = 1\n")
    watch = FileWatch(str(path), digest_of(b"a = 1\n"), interval=1.0, settle=0.3)
    os.utime(path, ns=(1, 1))
    assert [watch.poll(t) for t in (0.0, 0.3, 1.3)] == [False, False, False]
    path.write_text("a = 9\n")
    path.write_text("a = 1\n")
    os.utime(path, ns=(2, 2))
    assert [watch.poll(t) for t in (2.3, 2.6, 3.6)] == [False, False, False]


def test_file_watch_keeps_quiet_while_the_file_is_gone(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("a = 1\n")
    watch = FileWatch(str(path), digest_of(b"a = 1\n"), interval=1.0, settle=0.3)
    path.unlink()
    assert [watch.poll(t) for t in (0.0, 0.3, 1.3)] == [False, False, False]
    path.write_text("a = 2\n")
    assert [watch.poll(t) for t in (2.3, 2.6)] == [False, True]


def test_worker_applies_a_newer_published_config_only(tmp_path):
    with InProcessProxy(STATIC.format(body="one")) as proxy:
        worker = proxy.worker
        assert proxy.call(apply_published, worker, str(tmp_path)) is False  # nothing yet
        publish(str(tmp_path), 2, "c.toml", STATIC.format(body="two"))
        assert proxy.call(apply_published, worker, str(tmp_path)) is True
        assert worker.generation == 2
        with Conn(proxy.port) as c:
            assert c.request("GET", "/").body == b"two"
        publish(str(tmp_path), 1, "c.toml", STATIC.format(body="stale"))
        assert proxy.call(apply_published, worker, str(tmp_path)) is False
        with Conn(proxy.port) as c:
            assert c.request("GET", "/").body == b"two"


def test_worker_skips_the_swap_when_the_config_is_equal(tmp_path):
    with InProcessProxy(STATIC.format(body="one")) as proxy:
        worker = proxy.worker
        before = worker.runtime
        text = STATIC.format(body="one").replace("[server]", '[server]\nlisten = "127.0.0.1:0"')
        publish(str(tmp_path), 2, "c.toml", text)
        assert proxy.call(apply_published, worker, str(tmp_path)) is True
        assert worker.runtime is before and worker.generation == 2


def test_file_watch_reports_a_watched_certificate_renewed_in_place(tmp_path):
    path, cert = tmp_path / "c.toml", tmp_path / "cert.pem"
    path.write_text("a = 1\n")
    cert.write_text("old")
    watch = FileWatch(str(path), digest_of(b"a = 1\n"), (str(cert),), interval=1.0, settle=0.3)
    assert watch.poll(0.0) is False
    cert.write_text("renewed")
    os.utime(cert, ns=(5, 5))
    assert [watch.poll(t) for t in (1.0, 1.3)] == [False, True]  # the config text is the same
    watch.tried(digest_of(b"a = 1\n"))
    assert watch.poll(2.3) is False and watch.poll(3.3) is False

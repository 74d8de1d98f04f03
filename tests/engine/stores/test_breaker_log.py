"""engine.stores.breaker_log: a store breaker's transitions as stderr lines, rate-bounded so a
flapping Redis costs a line per interval and the last line always tells the current state."""

import orjson
import pytest

from engine.stores.breaker_log import BreakerLog


def logged(capfd) -> list:
    return [orjson.loads(ln) for ln in capfd.readouterr().err.splitlines()]


def test_an_outage_is_one_warning_and_one_recovery_line(capfd):
    log = BreakerLog("127.0.0.1:6379/0")
    log.changed(True, 100.0, "redis connect: ConnectionRefusedError")
    log.changed(False, 104.5)
    first, second = logged(capfd)
    assert first["level"] == "warning" and first["event"] == "redis_breaker_open"
    assert first["error"] == "redis connect: ConnectionRefusedError"
    assert first["redis"] == "127.0.0.1:6379/0"
    assert second["event"] == "redis_breaker_closed" and second["down_seconds"] == 4.5
    assert log.due is None


def test_flapping_costs_a_line_per_interval_and_the_last_line_is_the_state(capfd):
    log = BreakerLog("r", interval=10.0, burst=2)
    for i in range(5):  # open, close, open, close, open within a second
        log.changed(i % 2 == 0, 100.0 + i / 10, "down")
    assert [line["event"] for line in logged(capfd)] == ["redis_breaker_open",
                                                         "redis_breaker_closed"]
    assert log.due == pytest.approx(110.0)  # when a line's worth of tokens is back
    log.flush(105.0)  # too early: nothing, and still owed
    assert logged(capfd) == [] and log.due is not None
    log.flush(log.due)
    (line,) = logged(capfd)
    assert line["event"] == "redis_breaker_open" and line["transitions_not_logged"] == 3
    assert log.due is None
    log.flush(200.0)
    assert logged(capfd) == []  # nothing owed


def test_a_transition_back_to_the_logged_state_is_still_reported(capfd):
    log = BreakerLog("r", interval=10.0, burst=1)
    log.changed(True, 0.0, "down")
    log.changed(False, 1.0)
    log.changed(True, 2.0, "down again")
    assert len(logged(capfd)) == 1
    log.flush(log.due)
    (line,) = logged(capfd)
    assert line["event"] == "redis_breaker_open" and line["transitions_not_logged"] == 2

"""engine.stores.ratelimit_memory with explicit clocks: the calendar quota table, the
connection slot table and the load monitor behind adaptive limits (the filter's use of them is
in tests/engine/filters/test_ratelimit.py)."""

import pytest

from engine.stores.ratelimit_memory import DAY, MONTH, LoadMonitor, QuotaTable, SlotTable

FEB_28_2023_2359 = 1677628740.0  # 2023-02-28 23:59:00 UTC


def test_quota_table_is_bounded():
    t = QuotaTable(2)
    for k in "abc":
        t.add(k, 1, 0.0)
    assert len(t) == 2 and t.evictions == 1 and t.peek("a", 1, 0.0)[0] == 0


class Adaptive:
    lag = 0.1
    in_flight = 100
    steps = (2, 4)
    recover_ratio = 0.5
    recover_after = 10.0


def test_load_monitor_steps_up_and_recovers_with_hysteresis():
    m = LoadMonitor(Adaptive)
    assert m.observe(0.01, 10, 0.0) == 0
    assert m.observe(0.2, 10, 1.0) == 1 and m.divisor == 2      # lag over
    assert m.observe(0.01, 150, 2.0) == 2 and m.divisor == 4    # in-flight over
    assert m.observe(0.5, 500, 3.0) == 2                        # at most the last step
    assert m.observe(0.08, 10, 4.0) == 2   # between calm and overloaded: holds
    assert m.observe(0.01, 10, 5.0) == 2   # calm starts
    assert m.observe(0.08, 10, 10.0) == 2  # not calm any more: the calm period restarts
    assert m.observe(0.01, 10, 11.0) == 2
    assert m.observe(0.01, 10, 20.9) == 2
    assert m.observe(0.01, 10, 21.0) == 1 and m.divisor == 2
    assert m.observe(0.01, 10, 31.0) == 0 and m.divisor == 1


def test_load_monitor_samples_lag_from_the_worker_sweep():
    class Worker:
        tick_interval = 1.0
        conns = ()

    m = LoadMonitor(Adaptive)
    m.sample(Worker, 100.0)
    m.sample(Worker, 101.5)  # the sweep came 0.5 s late: the loop was busy
    assert m.last_lag == pytest.approx(0.5) and m.level == 1


def test_quota_table_counts_day_and_month_and_resets_each_at_its_utc_boundary():
    t = QuotaTable(10)
    t.add("k", 2, FEB_28_2023_2359)
    assert t.peek("k", DAY, FEB_28_2023_2359) == (2, 60.0)
    assert t.peek("k", MONTH, FEB_28_2023_2359) == (2, 60.0)
    march_1st = FEB_28_2023_2359 + 60.0
    assert t.peek("k", DAY, march_1st)[0] == 0 and t.peek("k", MONTH, march_1st)[0] == 0
    t.add("k", 1, march_1st)
    t.add("k", 1, march_1st + 86400.0)
    assert t.peek("k", DAY, march_1st + 86400.0)[0] == 1
    assert t.peek("k", MONTH, march_1st + 86400.0)[0] == 2


def test_slot_table_holds_a_key_only_while_it_has_requests_in_flight():
    s = SlotTable()
    s.acquire("a")
    s.acquire("a")
    s.acquire("b")
    assert (s.count("a"), s.count("b"), len(s)) == (2, 1, 2)
    s.release("b")
    s.release("a")
    assert (s.count("a"), s.count("b"), len(s)) == (1, 0, 1)
    s.release("a")
    s.release("a")  # an extra release never goes negative nor leaves a key behind
    assert (s.count("a"), len(s)) == (0, 0)

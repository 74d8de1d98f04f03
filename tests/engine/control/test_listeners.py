"""Listeners: compiled from server.listen or [[listeners]], validated with key paths, and
bound by the supervisor keeping the sockets of every address it listened on before."""

import os
import socket

import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from engine.control.listeners import (
    Listener, ListenError, bind_listeners, close_unshared, listeners_of, worker_pairs,
)

ROUTE = """
[[routes]]
name = "s"
[routes.static]
body = "x"
"""


def listeners(*entries: str) -> str:
    return "".join(f"[[listeners]]\n{e}\n" for e in entries) + ROUTE


def errors_of(text: str) -> list:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.errors


def test_server_listen_alone_is_one_plain_http_listener_named_default():
    (lst,) = listeners_of(parse('[server]\nlisten = "127.0.0.1:8081"\n' + ROUTE))
    assert lst == Listener("default", "127.0.0.1", 8081, b"http")
    assert lst.path == "server.listen" and lst.address == "127.0.0.1:8081"


def test_no_listen_at_all_is_the_default_address():
    (lst,) = listeners_of(parse(ROUTE))
    assert (lst.name, lst.address, lst.scheme) == ("default", "0.0.0.0:8080", b"http")


def test_listener_tables_compile_in_order_with_their_scheme_and_key_path():
    cfg = parse(listeners('name = "public"\nlisten = "0.0.0.0:8080"',
                          'name = "behind-lb"\nlisten = "[::1]:8443"\nforwarded_proto = "https"'))
    public, behind = listeners_of(cfg)
    assert (public.name, public.host, public.port, public.scheme) == (
        "public", "0.0.0.0", 8080, b"http")
    assert (behind.name, behind.host, behind.port, behind.scheme) == (
        "behind-lb", "::1", 8443, b"https")
    assert (public.path, behind.path) == ("listeners[0].listen", "listeners[1].listen")
    assert behind.address == "[::1]:8443"


def test_two_port_zero_listeners_on_one_host_are_two_ports():
    cfg = parse(listeners('name = "a"\nlisten = "127.0.0.1:0"', 'name = "b"\nlisten = "127.0.0.1:0"'))
    a, b = listeners_of(cfg)
    assert a.key != b.key


@pytest.mark.parametrize("text, path, fragment", [
    pytest.param('[server]\nlisten = "127.0.0.1:8080"\n'
                 + listeners('name = "a"\nlisten = "127.0.0.1:8081"'),
                 "server.listen", "cannot be used together with [[listeners]]",
                 id="server-listen-and-listeners"),
    pytest.param("listeners = []\n" + ROUTE, "listeners", "needs at least one listener",
                 id="empty-listeners"),
    pytest.param(listeners('name = "a"\nlisten = "127.0.0.1:8080"',
                           'name = "a"\nlisten = "127.0.0.1:8081"'),
                 "listeners[1].name", 'duplicate listener name "a" (also listeners[0])',
                 id="duplicate-name"),
    pytest.param(listeners('name = "a"\nlisten = "127.0.0.1:8080"',
                           'name = "b"\nlisten = "127.0.0.1:8080"'),
                 "listeners[1].listen", 'overlaps listeners[0].listen ("127.0.0.1:8080")',
                 id="same-address"),
    pytest.param(listeners('name = "a"\nlisten = "localhost:8080"',
                           'name = "b"\nlisten = "127.0.0.1:8080"'),
                 "listeners[1].listen", "overlaps listeners[0].listen", id="localhost-alias"),
    pytest.param(listeners('name = "a"\nlisten = "0.0.0.0:8080"',
                           'name = "b"\nlisten = "127.0.0.1:8080"'),
                 "listeners[1].listen", "overlaps listeners[0].listen", id="ipv4-wildcard"),
    pytest.param(listeners('name = "a"\nlisten = "127.0.0.1:8080"',
                           'name = "b"\nlisten = "[::]:8080"'),
                 "listeners[1].listen", "overlaps listeners[0].listen", id="ipv6-wildcard"),
    pytest.param(listeners('name = "a"\nlisten = "127.0.0.1:8080"',
                           'name = "b"\nlisten = "nowhere"'),
                 "listeners[1].listen", 'expected "host:port"', id="bad-address"),
    pytest.param(listeners('name = "a"\nlisten = "127.0.0.1:8080"\nforwarded_proto = "wss"'),
                 "listeners[0].forwarded_proto", "must be one of 'http', 'https'",
                 id="bad-forwarded-proto"),
    pytest.param(listeners('listen = "127.0.0.1:8080"'), "listeners[0].name", "is required",
                 id="missing-name"),
    pytest.param(listeners('name = "a"'), "listeners[0].listen", "is required",
                 id="missing-listen"),
    pytest.param(listeners('name = "a"\nlisten = "127.0.0.1:8080"\nport = 1'),
                 "listeners[0].port", "unknown key", id="unknown-key"),
    pytest.param('[admin]\nlisten = "127.0.0.1:9901"\n'
                 + listeners('name = "a"\nlisten = "0.0.0.0:9901"'),
                 "admin.listen", 'overlaps listeners[0].listen ("0.0.0.0:9901")',
                 id="admin-on-a-listener-port"),
    pytest.param('[server]\nlisten = "127.0.0.1:9901"\n' + ROUTE, "admin.listen",
                 'overlaps server.listen ("127.0.0.1:9901")', id="admin-on-server-listen"),
])
def test_a_bad_listener_config_names_its_key_path(text, path, fragment):
    found = errors_of(text)
    assert any(p == path and fragment in m for p, m in found), found


@pytest.mark.parametrize("text", [
    pytest.param(listeners('name = "a"\nlisten = "127.0.0.1:8080"',
                           'name = "b"\nlisten = "127.0.0.2:8080"'), id="same-port-two-hosts"),
    pytest.param(listeners('name = "a"\nlisten = "127.0.0.1:0"',
                           'name = "b"\nlisten = "127.0.0.1:0"'), id="port-zero-twice"),
    pytest.param('[admin]\nenabled = false\nlisten = "0.0.0.0:8080"\n' + ROUTE,
                 id="disabled-admin-not-checked"),
])
def test_listeners_that_can_all_be_bound_are_accepted(text):
    parse(text)


# -- binding ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def bound_sets():
    """Close whatever the test bound, whatever it asserted."""
    sets = []
    yield sets
    for bound in sets:
        close_unshared(bound, ())


def test_each_listener_gets_a_group_of_count_sockets_on_its_own_port(bound_sets):
    a, b = Listener("a", "127.0.0.1", 0), Listener("b", "127.0.0.1", 0, b"https")
    bound = bind_listeners([a, b], 16, 2)
    bound_sets.append(bound)
    assert [x.listener for x in bound] == [a, b]
    assert [len(x.sockets) for x in bound] == [2, 2]
    assert bound[0].port != bound[1].port
    assert {s.getsockname()[1] for s in bound[1].sockets} == {bound[1].port}
    assert accepts(bound[0].port) and accepts(bound[1].port)


def test_workers_share_every_listener_and_a_shrunk_count_gives_one_several():
    bound = bind_listeners([Listener("a", "127.0.0.1", 0), Listener("b", "127.0.0.1", 0)],
                           16, 3)
    try:
        pairs = [worker_pairs(bound, i, 2) for i in range(2)]
        assert [[lst.name for _, lst in p] for p in pairs] == [["a", "a", "b", "b"], ["a", "b"]]
        assert {s for p in pairs for s, _ in p} == {s for x in bound for s in x.sockets}
    finally:
        close_unshared(bound, ())


def test_a_reload_keeps_the_sockets_of_unchanged_addresses_and_binds_new_ones(bound_sets):
    port = free_port()
    first = bind_listeners([Listener("a", "127.0.0.1", port)], 16, 1)
    bound_sets.append(first)
    # Same address (renamed, now https), one more worker, and a new listener.
    second = bind_listeners([Listener("a2", "127.0.0.1", port, b"https"),
                             Listener("b", "127.0.0.1", 0)], 16, 2, first)
    bound_sets.append(second)
    assert second[0].sockets[0] is first[0].sockets[0] and len(second[0].sockets) == 2
    assert second[0].listener.scheme == b"https"
    close_unshared(first, second)  # what the supervisor does on commit: nothing of ours
    assert first[0].sockets[0].fileno() != -1
    assert accepts(port) and accepts(second[1].port)


def test_a_port_zero_listener_keeps_its_port_by_name(bound_sets):
    first = bind_listeners([Listener("a", "127.0.0.1", 0), Listener("b", "127.0.0.1", 0)],
                           16, 1)
    bound_sets.append(first)
    second = bind_listeners([Listener("b", "127.0.0.1", 0)], 16, 1, first)
    assert second[0].sockets == first[1].sockets


def test_a_busy_address_raises_naming_the_listener_and_closes_only_what_it_bound(bound_sets):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        first = bind_listeners([Listener("a", "127.0.0.1", 0)], 16, 1)
        bound_sets.append(first)
        new = Listener("c", "127.0.0.1", 0)
        taken = Listener("b", "127.0.0.1", busy, path="listeners[2].listen")
        before = {id(s) for s in socket_list(first)}
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ListenError) as info:
            # "a" grows by one socket and "c" is bound before "b" fails: both are closed.
            bind_listeners([first[0].listener, new, taken], 16, 2, first)
        assert len(os.listdir("/proc/self/fd")) == fds
        assert info.value.path == "listeners[2].listen"
        assert info.value.message == (f"cannot listen on 127.0.0.1:{busy}: "
                                      "Address already in use")
        assert {id(s) for s in socket_list(first)} == before  # the old set is untouched
        assert all(s.fileno() != -1 for s in socket_list(first)) and accepts(first[0].port)
    finally:
        holder.close()


def socket_list(bound) -> list:
    return [s for x in bound for s in x.sockets]

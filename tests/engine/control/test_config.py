"""Config validation: every error names its key path and reason; good configs type-check."""

import pytest

from engine.control.config import parse
from engine.chain.schema import ConfigError

BASE = """
[[upstreams]]
name = "payments"
servers = ["http://127.0.0.1:9001"]

[[routes]]
name = "pay"
paths = ["/pay/*"]
upstream = "payments"
"""


def errors_of(text: str) -> list:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.errors


def test_minimal_config_gets_nginx_like_defaults():
    cfg = parse(BASE)
    s = cfg.server
    assert (s.max_request_line, s.max_header_size, s.max_body_size) == (8192, 32768, 1 << 20)
    assert (s.client_header_timeout, s.keepalive_timeout) == (60.0, 75.0)
    up = cfg.upstreams[0]
    assert (up.connect_timeout, up.read_timeout, up.keepalive) == (60.0, 60.0, 512)
    assert up.servers[0].host == "127.0.0.1" and up.servers[0].port == 9001


def test_units_for_sizes_and_durations():
    cfg = parse('[server]\nmax_body_size = "8m"\nclient_header_timeout = "500ms"\n'
                'keepalive_timeout = "2m"\n' + BASE)
    assert cfg.server.max_body_size == 8 * 1024 * 1024
    assert cfg.server.client_header_timeout == 0.5
    assert cfg.server.keepalive_timeout == 120.0


@pytest.mark.parametrize("text, path, fragment", [
    pytest.param(BASE.replace('upstream = "payments"', 'upstream = "paymnts"'),
                 "routes[0].upstream", 'unknown upstream "paymnts" (did you mean "payments"?)',
                 id="unknown-upstream-suggests"),
    pytest.param(BASE.replace("paths =", "pahts ="), "routes[0].pahts",
                 'unknown key (did you mean "paths"?)', id="misspelled-key"),
    pytest.param('[server]\nlisten = "nowhere"\n' + BASE, "server.listen", "host:port",
                 id="bad-listen"),
    pytest.param('[server]\nmax_body_size = "lots"\n' + BASE, "server.max_body_size",
                 "expected a size", id="bad-size"),
    pytest.param('[server]\nkeepalive_timeout = "soon"\n' + BASE, "server.keepalive_timeout",
                 "expected a duration", id="bad-duration"),
    pytest.param('[server]\nmax_header_count = 0\n' + BASE, "server.max_header_count",
                 "at least 1", id="below-minimum"),
    pytest.param('[server]\nvia = "edge proxy"\n' + BASE, "server.via", "pseudonym",
                 id="via-not-a-token"),
    pytest.param('[server]\nworkers = "many"\n' + BASE, "server.workers", '"auto"',
                 id="bad-workers"),
    pytest.param('[server]\ntrusted_proxies = ["10.0.0.0/33"]\n' + BASE,
                 "server.trusted_proxies", "CIDR", id="bad-cidr"),
    pytest.param(BASE.replace("http://127.0.0.1:9001", "ftp://x"), "upstreams[0].servers[0].url",
                 "https:// URL", id="bad-server-url"),
    pytest.param(BASE.replace('paths = ["/pay/*"]', 'paths = ["pay"]'), "routes[0].paths[0]",
                 "", id="bad-path-pattern"),
    pytest.param(BASE.replace('paths = ["/pay/*"]', 'paths = ["/pay/*"]\nmethods = ["get"]'),
                 "routes[0].methods", "uppercase", id="lowercase-method"),
    pytest.param(BASE.replace('name = "pay"', 'name = "pay"\nrewrite = "/v2/{id}"'),
                 "routes[0].rewrite", "{id}", id="rewrite-param-not-captured"),
    pytest.param(BASE + '\n[[routes]]\nname = "pay"\nupstream = "payments"\n', "routes[1].name",
                 "duplicate", id="duplicate-route"),
    pytest.param(BASE.replace('upstream = "payments"', ""), "routes[0]",
                 "needs an upstream", id="route-without-upstream"),
    pytest.param(BASE.replace('balancer = "x"', "") + "", None, None, id="placeholder-ok"),
    pytest.param(BASE.replace('servers = ["http://127.0.0.1:9001"]',
                              'servers = ["http://127.0.0.1:9001"]\nbalancer = "round_robbin"'),
                 "upstreams[0].balancer", 'did you mean "round_robin"', id="bad-balancer"),
    pytest.param(BASE + '[routes.headers.request]\nset = { "Content-Length" = "1" }\n',
                 "routes[0].headers.request.set", "managed by the proxy",
                 id="transform-framing-header"),
    pytest.param(BASE + '[routes.static]\nstatus = 99\n', "routes[0].static.status",
                 "at least 200", id="static-status-range"),
    pytest.param("[server\n", "", "invalid TOML", id="toml-syntax"),
    pytest.param(BASE.replace('name = "pay"', 'name = "pay"\nhosts = ["api.example.com:80"]'),
                 "routes[0].hosts", "no port", id="host-with-port"),
])
def test_error_names_key_path_and_reason(text, path, fragment):
    if path is None:
        parse(text)
        return
    found = errors_of(text)
    assert any(p == path and fragment in m for p, m in found), found


def test_every_error_is_reported_at_once():
    text = '[server]\nlisten = "x"\nmax_header_count = -1\n' + BASE.replace(
        'upstream = "payments"', 'upstream = "nope"')
    paths = {p for p, _ in errors_of(text)}
    assert {"server.listen", "server.max_header_count", "routes[0].upstream"} <= paths


def test_shipped_config_is_valid():
    from pathlib import Path

    text = (Path(__file__).parents[3] / "config.toml").read_text()
    cfg = parse(text)
    assert cfg.demo is not None, "the shipped config serves out of the box via [demo]"
    assert {r.name for r in cfg.routes} >= {"api", "health"}


STORE_SECTIONS = {
    "rate_limit": '[routes.rate_limit]\nstore = "redis"\non_store_error = "{word}"\n'
                  '[[routes.rate_limit.limits]]\nname = "l"\nlimit = 10\n',
    "idempotency": '[routes.idempotency]\nstore = "redis"\non_store_error = "{word}"\n',
}


@pytest.mark.parametrize("feature", list(STORE_SECTIONS))
@pytest.mark.parametrize("word, meaning", [("allow", "allow"), ("deny", "deny"),
                                           ("pass", "allow"), ("reject", "deny")],
                         ids=["allow", "deny", "old-pass", "old-reject"])
def test_on_store_error_speaks_one_vocabulary_in_every_feature(feature, word, meaning):
    text = BASE + STORE_SECTIONS[feature].format(word=word) + '[redis]\n'
    section = dict(parse(text).routes[0].sections)[feature]
    assert section.on_store_error == meaning


@pytest.mark.parametrize("feature", list(STORE_SECTIONS))
def test_on_store_error_refuses_other_words_naming_the_vocabulary(feature):
    text = BASE + STORE_SECTIONS[feature].format(word="ignore") + '[redis]\n'
    (path, message), = errors_of(text)
    assert path == f"routes[0].{feature}.on_store_error"
    assert message.startswith("must be one of 'allow', 'deny'")


def test_the_reference_lists_the_old_words():
    from engine.control.config import Config
    from engine.chain.schema import reference_markdown

    rows = [ln for ln in reference_markdown(Config, "") if ln.startswith("| `on_store_error`")]
    assert len(rows) == 4  # rate_limit and idempotency, per route and server-wide ([filters])
    for row in rows:
        assert "one of `allow`, `deny`; also accepted: `pass` for `allow`, `reject` for " \
               "`deny`" in row

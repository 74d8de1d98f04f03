"""[redis] validation: each mode's needs, TLS files, and idempotency's min_replicas, every
error naming its key path and reason."""

import pytest

from engine.control.config import parse
from tests.engine.control.test_config import BASE, errors_of


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    from tests.support.redis_ha import Certs
    return Certs(tmp_path_factory.mktemp("certs"))


def test_each_mode_parses_with_what_it_needs(tls_files):
    cfg = parse(BASE + f'''
[redis]
mode = "sentinel"
url = "rediss://edge:pw@mymaster/2"
sentinels = ["10.0.0.1", "10.0.0.2:26380", "[::1]:26379"]
sentinel_password = "s"
tls_ca = "{tls_files.ca}"
tls_cert = "{tls_files.client_cert}"
tls_key = "{tls_files.client_key}"
tls_server_name = "redis.internal"
''')
    assert cfg.redis.mode == "sentinel" and len(cfg.redis.sentinels) == 3
    cfg = parse(BASE + '[redis]\nmode = "cluster"\nurl = "redis://10.0.1.1:7000"\n'
                       'nodes = ["10.0.1.2:7000"]\n')
    assert cfg.redis.nodes == ("10.0.1.2:7000",)


@pytest.mark.parametrize("table, path, match", [
    ('mode = "sentinel"\nurl = "redis://m/0"', "redis.sentinels", "needs the addresses"),
    ('mode = "sentinel"\nurl = "redis://10.0.0.1:26379/0"\nsentinels = ["a"]', "redis.url",
     "names the master"),
    ('mode = "sentinel"\nurl = "unix:///r.sock"\nsentinels = ["a"]', "redis.url", "unix"),
    ('sentinels = ["a:1"]', "redis.sentinels", 'need mode = "sentinel"'),
    ('sentinels = ["a:99999"]', "redis.sentinels", "port"),
    ('mode = "cluster"\nurl = "redis://h:1/3"', "redis.url", "database 0 only"),
    ('nodes = ["h:1"]', "redis.nodes", 'need mode = "cluster"'),
    ('mode = "ring"', "redis.mode", "ring"),
    ('url = "redis://h"\ntls_server_name = "x"', "redis.tls_server_name", "rediss://"),
    ('url = "rediss://h"\ntls_ca = "/no/such.pem"', "redis.tls_ca", "no file"),
    ('url = "rediss://h?ssl_cert_reqs=none"', "redis.url", "tls_ca"),
], ids=["sentinel-without-sentinels", "sentinel-url-with-port", "sentinel-unix",
        "sentinels-without-mode", "sentinel-bad-port", "cluster-db", "nodes-without-cluster",
        "unknown-mode", "tls-key-without-rediss", "missing-ca-file", "url-tls-option"])
def test_bad_redis_tables_name_the_key(table, path, match):
    errors = errors_of(BASE + "[redis]\n" + table + "\n")
    assert any(p == path and match in m for p, m in errors), errors


def test_a_client_certificate_without_its_key_or_a_bad_pem_is_refused(tls_files, tmp_path):
    errors = errors_of(BASE + f'[redis]\nurl = "rediss://h"\ntls_cert = "{tls_files.ca}"\n')
    assert ("redis.tls_key", "tls_cert and tls_key go together") in errors
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    errors = errors_of(BASE + f'[redis]\nurl = "rediss://h"\ntls_ca = "{junk}"\n')
    assert any(p == "redis.tls_ca" and "unusable TLS files" in m for p, m in errors), errors


def test_min_replicas_needs_the_redis_store():
    errors = errors_of(BASE + "[routes.idempotency]\nmin_replicas = 1\n")
    assert ("routes[0].idempotency.min_replicas",
            'needs store = "redis" (replicas are Redis\'s)') in errors

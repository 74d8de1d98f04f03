"""Locust scenarios for any edgeproxy config.

    locust -f bench/locustfile.py --host http://127.0.0.1:8080
    locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless -u 200 -r 50 -t 1m

Weighted tasks: plain GETs (/api/..., /users/{id}, /healthz), POSTs carrying an Idempotency-Key
(mostly new keys, some replays of a recent key with the same body), a rate-limited route and an
authenticated route (API key header, sometimes a wrong key). Paths and keys come from the
environment, defaulting to the shipped config.toml's paths:

    EDGE_GET_PATH          /api/hello          plain GET
    EDGE_USER_PATH         /users/{id}         GET, {id} filled with 1..EDGE_USER_IDS (1000)
    EDGE_HEALTH_PATH       /healthz            GET
    EDGE_IDEMPOTENT_PATH   /api/orders         POST with Idempotency-Key
    EDGE_LIMITED_PATH      /api/limited        GET on a rate-limited route; 429 is expected
    EDGE_AUTH_PATH         /api/private        GET with the API key header
    EDGE_API_KEY_HEADER    X-API-Key
    EDGE_API_KEY           demo-key
    EDGE_WAIT              0                   max seconds a user waits between tasks

A route the config does not have answers 404: that counts as a failure named for the route
("missing route (404): set EDGE_...") and the run goes on. Expected refusals (429 on the limited
route, 401/403 for a wrong API key, 409 for a replay racing its original) count as successes.
"""

import collections
import os
import random
import uuid

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


GET_PATH = _env("EDGE_GET_PATH", "/api/hello")
USER_PATH = _env("EDGE_USER_PATH", "/users/{id}")
USER_IDS = int(_env("EDGE_USER_IDS", "1000"))
HEALTH_PATH = _env("EDGE_HEALTH_PATH", "/healthz")
IDEMPOTENT_PATH = _env("EDGE_IDEMPOTENT_PATH", "/api/orders")
LIMITED_PATH = _env("EDGE_LIMITED_PATH", "/api/limited")
AUTH_PATH = _env("EDGE_AUTH_PATH", "/api/private")
API_KEY_HEADER = _env("EDGE_API_KEY_HEADER", "X-API-Key")
API_KEY = _env("EDGE_API_KEY", "demo-key")
WAIT = float(_env("EDGE_WAIT", "0"))

# Keys this process sent, with their bodies, for replays (shared by its users, bounded).
_sent_keys: collections.deque = collections.deque(maxlen=1000)


class EdgeUser(FastHttpUser):
    wait_time = between(0, WAIT)

    def _call(self, method, path, name, env, ok=(), **kwargs):
        """One request; 2xx/3xx and the ``ok`` statuses pass, 404 names the missing route,
        anything else fails with its status. Never raises on a status."""
        with self.client.request(method, path, name=name, catch_response=True,
                                 **kwargs) as resp:
            status = resp.status_code or 0
            if 200 <= status < 400 or status in ok:
                resp.success()
            elif status == 404:
                resp.failure(f"missing route (404): set {env}")
            elif status == 0:
                resp.failure(f"no response: {resp.error!r}" if hasattr(resp, "error")
                             else "no response")
            else:
                resp.failure(f"status {status}")
            return resp

    @task(10)
    def plain_get(self):
        self._call("GET", GET_PATH, "GET plain", "EDGE_GET_PATH")

    @task(5)
    def user_get(self):
        path = USER_PATH.replace("{id}", str(random.randint(1, USER_IDS)))
        self._call("GET", path, "GET user", "EDGE_USER_PATH")

    @task(2)
    def health(self):
        self._call("GET", HEALTH_PATH, "GET health", "EDGE_HEALTH_PATH")

    @task(4)
    def post_new_key(self):
        key = str(uuid.uuid4())
        body = f'{{"item": {random.randint(1, 10000)}, "qty": {random.randint(1, 5)}}}'
        resp = self._call("POST", IDEMPOTENT_PATH, "POST idempotent (new key)",
                          "EDGE_IDEMPOTENT_PATH", data=body,
                          headers={"Idempotency-Key": key,
                                   "Content-Type": "application/json"})
        if resp.status_code and resp.status_code < 500:
            _sent_keys.append((key, body))

    @task(2)
    def post_replay(self):
        if not _sent_keys:
            return self.post_new_key()
        key, body = random.choice(_sent_keys)
        # 409: the original is still in flight (draft-ietf-httpapi-idempotency-key-header,
        # concurrent requests), an expected answer under load.
        self._call("POST", IDEMPOTENT_PATH, "POST idempotent (replay)",
                   "EDGE_IDEMPOTENT_PATH", ok=(409,), data=body,
                   headers={"Idempotency-Key": key, "Content-Type": "application/json"})

    @task(3)
    def limited(self):
        self._call("GET", LIMITED_PATH, "GET rate-limited", "EDGE_LIMITED_PATH", ok=(429,))

    @task(3)
    def authenticated(self):
        self._call("GET", AUTH_PATH, "GET authenticated", "EDGE_AUTH_PATH",
                   headers={API_KEY_HEADER: API_KEY})

    @task(1)
    def wrong_key(self):
        self._call("GET", AUTH_PATH, "GET authenticated (wrong key)", "EDGE_AUTH_PATH",
                   ok=(401, 403), headers={API_KEY_HEADER: "not-a-key"})

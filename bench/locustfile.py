"""Locust scenarios for the shipped config.toml: every route it declares, weighted.

    edgeproxy run -c config.toml > access.log &     # serves :8080 with its demo origins
    locust --config bench/locust.conf               # headless, 1 min, reports below
    locust -f bench/locustfile.py --host http://127.0.0.1:8080    # web UI on :8089

Reports (headless): bench/results/locust/edgeproxy_stats.csv (and _failures, _exceptions,
_stats_history) and bench/results/locust/edgeproxy.html.

Each request is named "<route>: <METHOD> <path pattern>", so the statistics read per route.
The shipped config refuses some requests on purpose, and those refusals are successes of their
own kind, reported under their own name so they never hide in the route's figures:

- ``api`` allows 600 requests a minute per client address: past it, 429 with Retry-After is
  the limiter working (reported as "api: GET /api/hello (429 rate limited)"). Every locust
  user shares one address, so under load most ``api`` requests are refused; the other routes
  carry the throughput.
- ``orders`` runs a POST once per Idempotency-Key: a replay is answered from the store with
  ``Idempotent-Replayed: true``, or 409 with Retry-After while its original is still in flight
  (reported as "orders: POST /orders (409 in flight)").

Anything else that is not 2xx fails, with the status and the reason in locust's failure table.
"""

import collections
import random
import uuid

from locust import task
from locust.contrib.fasthttp import FastHttpUser

# Keys sent by this process with their bodies, for replays (shared by its users, bounded).
_sent = collections.deque(maxlen=1000)


class ShippedConfigUser(FastHttpUser):
    """One client of the shipped config's routes: api, users, orders, health, default."""

    def _call(self, method, path, name, refusal=None, check=None, **kwargs):
        """One request named ``name``. 2xx passes (after ``check(resp)``, which returns an
        error or None); ``refusal`` = (status, label) is an expected answer, reported under
        "name (status label)"; anything else fails with its status."""
        with self.client.request(method, path, name=name, catch_response=True,
                                 **kwargs) as resp:
            status = resp.status_code or 0
            if refusal is not None and status == refusal[0]:
                resp.request_meta["name"] = f"{name} ({status} {refusal[1]})"
                if not resp.headers.get("Retry-After"):
                    resp.failure(f"{status} without Retry-After")  # RFC 6585 §4, RFC 9110 §10.2.3
                else:
                    resp.success()
            elif 200 <= status < 300:
                error = check(resp) if check is not None else None
                if error:
                    resp.failure(error)
                else:
                    resp.success()
            elif status == 0:
                resp.failure(f"no response: {getattr(resp, 'error', None)!r}")
            else:
                resp.failure(f"status {status}: {resp.text[:200] if resp.text else ''}")
            return resp

    # -- route "api": /api/*, strip_prefix, header transforms, 600/min per client address

    @task(6)
    def api_hello(self):
        self._call("GET", "/api/hello", "api: GET /api/hello", refusal=(429, "rate limited"),
                   check=_has_header("X-Served-By"))

    # -- route "users": /users/{id}, GET PUT DELETE, rewritten to /v1/users/{id}

    @task(6)
    def users_get(self):
        self._call("GET", f"/users/{random.randint(1, 1000)}", "users: GET /users/{id}")

    @task(2)
    def users_put(self):
        self._call("PUT", f"/users/{random.randint(1, 1000)}", "users: PUT /users/{id}",
                   json={"name": "ada"})

    @task(1)
    def users_delete(self):
        self._call("DELETE", f"/users/{random.randint(1, 1000)}", "users: DELETE /users/{id}")

    # -- route "orders": POST /orders, idempotency keys (memory store)

    @task(3)
    def orders_new_key(self):
        key = str(uuid.uuid4())
        body = f'{{"item": {random.randint(1, 10000)}, "qty": {random.randint(1, 5)}}}'
        resp = self._call("POST", "/orders", "orders: POST /orders (new key)", data=body,
                          headers={"Idempotency-Key": key, "Content-Type": "application/json"},
                          check=_not_replayed)
        if resp.status_code == 200:
            _sent.append((key, body))

    @task(2)
    def orders_replay(self):
        if not _sent:
            return self.orders_new_key()
        key, body = random.choice(_sent)
        self._call("POST", "/orders", "orders: POST /orders (replay)", data=body,
                   refusal=(409, "in flight"), check=_replayed,
                   headers={"Idempotency-Key": key, "Content-Type": "application/json"})

    # -- route "health": answered by the proxy itself

    @task(2)
    def health(self):
        self._call("GET", "/healthz", "health: GET /healthz", check=_body(b"ok\n"))

    @task(1)
    def health_head(self):
        self._call("HEAD", "/healthz", "health: HEAD /healthz")

    # -- route "default": everything else, proxied unchanged

    @task(3)
    def default_get(self):
        self._call("GET", f"/static/app.{random.randint(1, 50)}.js", "default: GET /*")

    @task(1)
    def default_post(self):
        self._call("POST", "/forms/contact", "default: POST /*", data=b"x" * 512)


def _has_header(name):
    def check(resp):
        return None if resp.headers.get(name) else f"no {name} header"
    return check


def _body(expected: bytes):
    def check(resp):
        return None if resp.content == expected else f"body {resp.content[:50]!r}"
    return check


def _not_replayed(resp):
    return "a new key was answered as a replay" if resp.headers.get("Idempotent-Replayed") \
        else None


def _replayed(resp):
    # The point of the key: the second POST is not run again (the origin is not called).
    return None if resp.headers.get("Idempotent-Replayed") == "true" \
        else "a replay was executed again (no Idempotent-Replayed: true)"

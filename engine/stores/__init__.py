"""State that outlives a reload: in-process (memory) and shared (Redis) stores."""

# What a feature does when its store is down, in one vocabulary for every feature's
# ``on_store_error``: "allow" the request without the feature (fail open) or "deny" it (fail
# closed), the words of Envoy's failure_mode_allow / failure_mode_deny. They name what happens
# to the request, which reads the same for limits, idempotency and whatever comes next; the
# status a denial gets stays the feature's (429, 503). The words idempotency used first still
# parse.
STORE_ERROR_POLICIES = ("allow", "deny")
STORE_ERROR_ALIASES = {"pass": "allow", "reject": "deny"}

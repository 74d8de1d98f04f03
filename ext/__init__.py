"""Cython hot structures: router, ratelimit, hashring, lru."""

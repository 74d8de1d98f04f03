"""edgeproxy: an edge reverse proxy and API gateway (import name ``engine``)."""

__version__ = "0.1.0"

"""edgeproxy: an edge reverse proxy and API gateway (import name ``engine``)."""

from engine.control import VERSION as __version__  # noqa: F401

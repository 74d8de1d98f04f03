"""Upstream side of the data plane: servers, keep-alive pools, connections, balancers."""

"""The per-route filter chain: phases, the Filter base and the chain compiler."""

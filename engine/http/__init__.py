"""Client side of the data plane: the httptools protocol, framing rules and messages."""

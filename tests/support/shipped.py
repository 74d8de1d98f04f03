"""The shipped config.toml, made hermetic: the same routes, filters and upstream, served on
loopback port 0 with its demo origins moved to free ports."""

import pathlib
import socket

SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "config.toml"


def free_port() -> int:
    # The demo origins need a fixed address in the config; a port the kernel just handed out
    # and released is free unless another process takes it in the next moment.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_config(access_log: str = "off") -> str:
    text = SHIPPED.read_text()
    for port in ("9001", "9002"):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    text = text.replace('listen = "0.0.0.0:8080"', 'listen = "127.0.0.1:0"')
    text = text.replace('access_log = "stdout"', f'access_log = "{access_log}"')
    assert 'listen = "127.0.0.1:0"' in text and "9001" not in text, "config.toml changed shape"
    return text + '\n[admin]\nlisten = "127.0.0.1:0"\n'

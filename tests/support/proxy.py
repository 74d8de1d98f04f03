"""Run the real proxy in-process: a worker on its own uvloop loop in a thread."""

import asyncio
import threading

import uvloop

from engine.control.config import parse
from engine.control.demo import serve_origins
from engine.control.listeners import listeners_of
from engine.control.snapshot import Runtime
from engine.control.listeners import bind_group
from engine.control.worker import Worker


class InProcessProxy:
    """``with InProcessProxy(toml) as p: p.port``. The worker accepts on 127.0.0.1, on a free
    port per listener (``ports``: name -> port; ``port`` is the first); the worker drains
    and stops on exit. The config text gets those addresses unless ``keep_listen``."""

    def __init__(self, config_text: str, keep_listen: bool = False):
        if not keep_listen:
            config_text = _force_listen(config_text)
        self.cfg = parse(config_text)
        self.runtime = Runtime(self.cfg)
        self.loop = None
        self.worker = None
        self.port = None
        self.ports: dict[str, int] = {}
        self._thread = None
        self._ready = threading.Event()
        self._stop = None
        self._error = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start in 10 s")
        if self._error:
            raise self._error
        return self

    def _run(self):
        loop = self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self):
        self._stop = asyncio.get_running_loop().create_future()
        if self.cfg.demo is not None:
            await serve_origins(self.cfg.demo.origins)
        self.worker = Worker(self.runtime)
        for listener in listeners_of(self.cfg):
            sock = bind_group("127.0.0.1", 0, 128, 1, False)[0]
            self.ports[listener.name] = sock.getsockname()[1]
            await self.worker.start(sock, listener)
        self.port = next(iter(self.ports.values()))
        self._ready.set()
        await self._stop
        await self.worker.drain(1.0)

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the proxy's loop and return its result."""
        done = threading.Event()
        box = {}

        def run():
            try:
                box["result"] = fn(*args)
            except BaseException as exc:
                box["error"] = exc
            done.set()

        self.loop.call_soon_threadsafe(run)
        if not done.wait(5):
            raise TimeoutError("proxy loop did not run the call")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def swap(self, config_text: str) -> None:
        runtime = Runtime(parse(_force_listen(config_text)), self.worker.runtime)
        self.call(self.worker.swap, runtime)

    def __exit__(self, *exc):
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(
                lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("proxy thread did not stop in 10 s")


def _force_listen(text: str) -> str:
    if "[[listeners]]" in text:  # each keeps its table, on a free port of 127.0.0.1
        return "\n".join('listen = "127.0.0.1:0"' if ln.strip().startswith("listen =") else ln
                         for ln in text.splitlines()) + "\n"
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("listen")]
    out = []
    inserted = False
    for ln in lines:
        out.append(ln)
        if ln.strip() == "[server]":
            out.append('listen = "127.0.0.1:0"')
            inserted = True
    if not inserted:
        out.insert(0, '[server]\nlisten = "127.0.0.1:0"\naccess_log = "off"')
    return "\n".join(out) + "\n"

"""An origin handler that answers each path as a test scripts it and keeps every request:
what the cache tests put behind the proxy (tests/support/origin.py runs it)."""

import threading


class Script:
    """The origin's answers: ``script[path] = (status, headers, body[, delay seconds])`` or a
    function of the request returning one; every request is kept in ``seen[path]``."""

    def __init__(self):
        self.answers = {}
        self.seen = {}
        self.lock = threading.Lock()

    def __setitem__(self, path, answer):
        self.answers[path] = answer

    def count(self, path):
        return len(self.seen.get(path, ()))

    def __call__(self, req):
        path = req.url.decode().split("?")[0]
        with self.lock:
            self.seen.setdefault(path, []).append(req)
        answer = self.answers.get(path, (200, [], b"default"))
        if callable(answer):
            answer = answer(req)
        delay = None
        if len(answer) == 4:
            status, headers, body, delay = answer
        else:
            status, headers, body = answer
        head = b"HTTP/1.1 %d X\r\n" % status + b"".join(b"%s: %s\r\n" % h for h in headers)
        if status not in (204, 304):
            head += b"Content-Length: %d\r\n" % len(body)
        data = head + b"\r\n" + (body if req.method != b"HEAD" else b"")
        return (data, delay) if delay else data

"""Response: the answer a filter or the proxy makes, and the head response hooks edit. A C type,
so that making one per answer and reading its fields from the compiled hooks costs no Python
frame or attribute dictionary lookup."""


cdef class Response:
    """A response head plus, for answers the proxy makes itself, the whole body.

    For a response streamed from an upstream, ``body`` is None and filters may only edit
    ``status`` and ``headers`` (a list of (name, value) bytes pairs, original case).
    """

    def __init__(self, int status, headers, body=b""):
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self):
        return f"<Response {self.status}>"

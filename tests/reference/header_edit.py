"""Pure-Python twin of engine.filters.header_edit (the same public API), for the differential
test: the obvious way, with .lower() and a set."""


class HeaderEdit:
    def __init__(self, drop, rename, append):
        self.drop = frozenset(n.lower() for n in drop)
        self.rename = {old.lower(): new for old, new in rename}
        self.append = [(n, v) for n, v in append]

    def apply(self, headers: list) -> list:
        out = []
        for name, value in headers:
            lname = name.lower()
            if lname in self.drop:
                continue
            new = self.rename.get(lname)
            out.append((name, value) if new is None else (new, value))
        return out + self.append

    def on_request(self, ctx):
        ctx.headers = self.apply(ctx.headers)

    def on_response(self, ctx, resp):
        resp.headers = self.apply(resp.headers)

"""JSON Pointers (RFC 6901) over parsed JSON: parsed once at load, applied per request.

The edits follow JSON Patch (RFC 6902 §4) where it has one: "-" appends to an array, a
member is created or replaced. Unlike a patch, an edit whose target cannot exist (a name
inside a string, an index past the end) is skipped, not an error: a transform adapts bodies
of many shapes and must not fail a request because one field is absent.
"""

MISSING = object()  # what get and pop find where nothing is


def parse(pointer: str) -> tuple[str, ...]:
    """'/a/b~1c' -> ('a', 'b/c'); '' is the whole document (RFC 6901 §3)."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f'"{pointer}" is not a JSON pointer: it must be "" or start with "/" '
                         "(RFC 6901)")
    tokens = []
    for raw in pointer[1:].split("/"):
        if "~" in raw.replace("~0", "").replace("~1", ""):
            raise ValueError(f'"{pointer}": "~" must be escaped as "~0" (RFC 6901 §3)')
        # §4: ~1 first, then ~0, so "~01" is "~1", not "/".
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tuple(tokens)


def check(pointer: str) -> str:
    """A schema ``check``: a valid, non-empty pointer."""
    if not parse(pointer):
        raise ValueError('"" points at the whole body: use wrap/unwrap for that')
    return pointer


def _index(container: list, token: str, for_insert: bool):
    # RFC 6901 §4: array indexes are decimal without leading zeros; "-" is past the end.
    if token == "-":
        return len(container) if for_insert else None
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        return None
    i = int(token)
    limit = len(container) + (1 if for_insert else 0)
    return i if i < limit else None


def get(doc, tokens: tuple[str, ...]):
    """The value at ``tokens``, or ``MISSING`` when there is none."""
    for token in tokens:
        if isinstance(doc, dict):
            doc = doc.get(token, MISSING)
            if doc is MISSING:
                return MISSING
        elif isinstance(doc, list):
            i = _index(doc, token, False)
            if i is None:
                return MISSING
            doc = doc[i]
        else:
            return MISSING
    return doc


def _parent(doc, tokens, create: bool):
    for token in tokens[:-1]:
        if isinstance(doc, dict):
            child = doc.get(token, MISSING)
            if child is MISSING:
                if not create:
                    return None
                child = doc[token] = {}
            doc = child
        elif isinstance(doc, list):
            i = _index(doc, token, False)
            if i is None:
                return None
            doc = doc[i]
        else:
            return None
    return doc if isinstance(doc, (dict, list)) else None


def put(doc, tokens: tuple[str, ...], value, only_if_absent: bool = False) -> bool:
    """Set the value at ``tokens``, creating missing objects on the way; in an array an
    index inserts and "-" appends (RFC 6902 §4.1). Whether it was set."""
    parent = _parent(doc, tokens, True)
    if parent is None:
        return False
    last = tokens[-1]
    if isinstance(parent, dict):
        if only_if_absent and last in parent:
            return False
        parent[last] = value
        return True
    i = _index(parent, last, True)
    if i is None:
        return False
    parent.insert(i, value)
    return True


def pop(doc, tokens: tuple[str, ...]):
    """Remove and return the value at ``tokens`` (``MISSING`` when there is none)."""
    parent = _parent(doc, tokens, False)
    if parent is None:
        return MISSING
    last = tokens[-1]
    if isinstance(parent, dict):
        return parent.pop(last, MISSING)
    i = _index(parent, last, False)
    return MISSING if i is None else parent.pop(i)

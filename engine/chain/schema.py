"""A self-describing schema: frozen dataclasses whose fields carry doc, bounds and choices.

``build(cls, raw, path, errors)`` validates a TOML table against a dataclass and returns the typed
object, appending every (key_path, message) it finds to ``errors`` instead of stopping at the first.
docs/config-reference.md is generated from the same dataclasses (``reference_markdown``).
"""

import dataclasses
import difflib
import re
import types
import typing

REQUIRED = object()


class Duration(float):
    """Seconds; TOML may say 30, 0.5, "500ms", "30s", "5m", "24h", "7d"."""


class Size(int):
    """Bytes; TOML may say 1048576, "512", "8k", "1m", "1g" (powers of 1024, like nginx)."""


class Json:
    """Any JSON value written in TOML (a JSON Schema, a value set into a body); kept as the
    plain dicts, lists and scalars TOML gave. Dates and times have no JSON form."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgG])?\s*$")
_SIZE_UNITS = {None: 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def key(default=REQUIRED, doc="", *, min=None, max=None, choices=None, aliases=None,
        check=None):
    """A config key: its default, one-line description, bounds and an optional ``check``
    (a function that returns the converted value or raises ValueError with the reason).
    ``aliases`` maps words still accepted to the choice they now spell (old names)."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "aliases": aliases,
            "check": check}
    return dataclasses.field(default=default, metadata=meta)


class ConfigError(Exception):
    """Every problem found in a config, each as (key_path, message)."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.errors))


def suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def join(path: str, name) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def build(cls, raw, path: str, errors: list):
    """Validate ``raw`` (a dict from TOML) into ``cls``; None when it is unusable."""
    if isinstance(raw, str) and getattr(cls, "SHORTHAND", None):
        raw = {cls.SHORTHAND: raw}
    if not isinstance(raw, dict):
        errors.append((path, f"expected a table, got {_tname(raw)}"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    extra = getattr(cls, "EXTRA_SECTIONS", None)  # name -> dataclass, for filter sections
    sections = extra() if extra else {}
    values = {}
    for name in raw:
        if name not in fields and name not in sections:
            errors.append((join(path, name),
                           "unknown key" + suggest(name, [*fields, *sections])))
    # A bad optional key falls back to its default (the error is recorded), so the caller's
    # cross-checks still run and one pass reports every problem; a bad required key makes the
    # whole table unusable (None).
    ok = True
    for name, f in fields.items():
        if name == "sections":
            continue
        if name not in raw:
            if f.default is REQUIRED:
                errors.append((join(path, name), "is required"))
                ok = False
            continue
        before = len(errors)
        value = convert(hints[name], raw[name], join(path, name), errors, f.metadata)
        if len(errors) > before:
            ok = ok and f.default is not REQUIRED
        else:
            values[name] = value
    if sections:
        built = {}
        for name, section_cls in sections.items():
            if name in raw:
                obj = build(section_cls, raw[name], join(path, name), errors)
                if obj is not None:
                    built[name] = obj
        values["sections"] = tuple(sorted(built.items()))
    if not ok:
        return None
    obj = cls(**values)
    # A table's own rule across its keys (cors: credentials never with "*"): (key, message).
    problems = getattr(cls, "problems", None)
    if problems is not None:
        errors.extend((join(path, name), message) for name, message in problems(obj))
    return obj


def convert(tp, value, path, errors, meta=None):
    """Convert ``value`` to schema type ``tp``, then apply the key's bounds and check."""
    before = len(errors)
    result = _convert_type(tp, value, path, errors)
    if result is None or len(errors) > before or not meta:
        return result
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    aliases = meta.get("aliases")
    if aliases and result in aliases:
        result = aliases[result]
    if lo is not None and result < lo:
        errors.append((path, f"must be at least {lo}, got {result!r}"))
    if hi is not None and result > hi:
        errors.append((path, f"must be at most {hi}, got {result!r}"))
    if choices is not None and result not in choices:
        errors.append((path, f"must be one of {', '.join(map(repr, choices))}, got "
                             f"{result!r}" + suggest(str(result), choices)))
    check = meta.get("check")
    if check is not None and len(errors) == before:
        try:
            result = check(result)
        except ValueError as exc:
            errors.append((path, str(exc)))
            return None
    return result


def _convert_type(tp, value, path, errors):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            trial: list = []
            result = _convert_type(option, value, path, trial)
            if not trial:
                return result
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                errors.extend(trial)  # a table for a table type: its own errors are the news
                return None
        names = " or ".join(_describe(o) for o in options if o is not type(None))
        errors.append((path, f"expected {names}, got {_tname(value)} {value!r}"))
        return None
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list):
            errors.append((path, f"expected an array, got {_tname(value)}"))
            return None
        return tuple(convert(item_tp, v, join(path, i), errors) for i, v in enumerate(value))
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            errors.append((path, f"expected a table, got {_tname(value)}"))
            return None
        return tuple((k, convert(vt, v, join(path, k), errors)) for k, v in value.items())
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, errors)
    if tp is Duration:
        return _duration(value, path, errors)
    if tp is Json:
        return _json(value, path, errors)
    if tp is Size:
        return _size(value, path, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
        errors.append((path, f"expected true or false, got {_tname(value)}"))
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        errors.append((path, f"expected an integer, got {_tname(value)}"))
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        errors.append((path, f"expected a number, got {_tname(value)}"))
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        errors.append((path, f"expected a string, got {_tname(value)}"))
        return None
    raise TypeError(f"schema type {tp!r} at {path} is not supported")


def _duration(value, path, errors):
    if isinstance(value, bool):
        pass
    elif isinstance(value, (int, float)):
        if value >= 0:
            return Duration(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return Duration(float(m.group(1)) * _DURATION_UNITS[m.group(2)])
    errors.append((path, f'expected a duration such as 30, "500ms", "60s", "5m", got {value!r}'))
    return None


def _json(value, path, errors):
    if isinstance(value, dict):
        return {k: _json(v, join(path, k), errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v, join(path, i), errors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    errors.append((path, f"{_tname(value)} has no JSON form (write it as a string)"))
    return None


def _size(value, path, errors):
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if value >= 0:
            return Size(value)
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return Size(int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower() or None])
    errors.append((path, f'expected a size such as 1048576, "8k", "1m", got {value!r}'))
    return None


def _tname(value) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _describe(tp) -> str:
    if tp is Duration:
        return "a duration"
    if tp is Size:
        return "a size"
    if tp is Json:
        return "a JSON value"
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "an array"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def reference_markdown(cls, heading: str) -> list[str]:
    """Markdown tables describing ``cls`` and the dataclasses it contains."""
    lines = [f"#### `{heading or 'top level'}`", "", "| key | type | default | description |",
             "|---|---|---|---|"]
    nested = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "sections":
            continue
        tp = hints[f.name]
        inner = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        for sub in inner:
            suffix = "[]" if typing.get_origin(tp) is tuple else ""
            prefix = f"{heading}." if heading else ""
            nested.append((sub, f"{prefix}{f.name}{suffix}"))
        default = "required" if f.default is REQUIRED else _show(f.default)
        doc = f.metadata.get("doc", "")
        bounds = []
        if f.metadata.get("min") is not None:
            bounds.append(f"min {f.metadata['min']}")
        if f.metadata.get("max") is not None:
            bounds.append(f"max {f.metadata['max']}")
        if f.metadata.get("choices"):
            bounds.append("one of " + ", ".join(f"`{c}`" for c in f.metadata["choices"]))
        if f.metadata.get("aliases"):
            bounds.append("also accepted: " + ", ".join(
                f"`{old}` for `{new}`" for old, new in f.metadata["aliases"].items()))
        if bounds:
            doc += " (" + "; ".join(bounds) + ")"
        lines.append(f"| `{f.name}` | {_type_name(tp)} | {default} | {doc} |")
    lines.append("")
    for sub, name in nested:
        lines += reference_markdown(sub, name)
    extra = getattr(cls, "EXTRA_SECTIONS", None)
    if extra:
        for name, sub in extra().items():
            lines += reference_markdown(sub, f"{heading}.{name}" if heading else name)
    return lines


def _show(value) -> str:
    if dataclasses.is_dataclass(value):
        return "see below"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(_show(v).strip("`") for v in value) + "]`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"array of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "table of " + {Json: "JSON values", int: "integers"}.get(typing.get_args(tp)[1],
                                                                        "strings")
    if dataclasses.is_dataclass(tp):
        return "table"
    return {Duration: "duration", Size: "size", Json: "JSON value", str: "string",
            int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


# RFC 9110 §5.6.2 token: field names and methods.
TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def check_methods(values: tuple) -> tuple:
    # RFC 9110 §9.1: a method is a token, case-sensitive; the standard ones are upper case,
    # and a lower-case "get" in a config is a typo that would never match.
    for v in values:
        if not TOKEN_RE.match(v) or v != v.upper():
            raise ValueError(f'"{v}" is not an uppercase HTTP method token (e.g. "POST")')
    return values


def check_header_name(name: str) -> str:
    if not TOKEN_RE.match(name):
        raise ValueError(f'"{name}" is not a valid header name')
    return name


def check_header_value(value: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("header values must not contain CR, LF or NUL")
    return value


def check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


def check_request_path(value: str) -> str:
    """A path (and query) the proxy asks a service for: origin-form (RFC 9112 §3.2.1), so it
    starts with "/" and holds no space, CR, LF, NUL or fragment."""
    if not value.startswith("/") or any(c in value for c in " \r\n\x00#"):
        raise ValueError(f'"{value}" must be a path starting with "/"')
    return value

"""A tiny typed-schema checker for the JSON files odebench reads (student sidecars, teacher files,
result files): types and ranges, failing with one OdebenchError line that names the file and the
offending key, e.g. `stu.json: "sampler.steps" must be an integer >= 1, got 0`.

A schema is a tree of the node types below; `validate(data, schema, source)` walks it. Numbers are
always finite (JSON has no inf/nan, and Python's json module accepts them anyway), booleans are never
numbers, and integers are JSON integers (2, not 2.0).
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterable

from odebench.errors import OdebenchError


class Invalid(Exception):
    """A value that does not fit its schema node; `key` is the path from the document root."""

    def __init__(self, key: str, expected: str, got: str | None) -> None:
        super().__init__(key, expected)
        self.key, self.expected, self.got = key, expected, got


def _child(key: str, name: str | int) -> str:
    return f"{key}[{name}]" if isinstance(name, int) else (f"{key}.{name}" if key else str(name))


def _got(v: Any) -> str:
    """A short description of the offending value: objects and lists by kind, the rest as JSON."""
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    try:
        text = json.dumps(v, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


class Node:
    what = "a value"

    def check(self, v: Any, key: str) -> None:  # pragma: no cover - every node overrides it
        raise NotImplementedError


class AnyValue(Node):
    """Anything JSON can hold (free-form records)."""

    what = "any value"

    def check(self, v, key):
        pass


class Num(Node):
    """A finite number within optional bounds: gt/ge below, lt/le above, abs_le on |x|."""

    def __init__(self, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
                 le: float | None = None, abs_le: float | None = None, integer: bool = False,
                 multiple_of: int | None = None) -> None:
        self.gt, self.ge, self.lt, self.le, self.abs_le = gt, ge, lt, le, abs_le
        self.integer, self.multiple_of = integer, multiple_of
        bounds = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else "",
                  f"< {lt:g}" if lt is not None else "", f"<= {le:g}" if le is not None else ""]
        bounds = [b for b in bounds if b]
        kind = "an integer" if integer else "a finite number"
        if multiple_of:
            kind = f"a multiple of {multiple_of}"
        self.what = kind + (" " + " and ".join(bounds) if bounds else "") + (f" with |x| <= {abs_le:g}" if abs_le is not None else "")

    def check(self, v, key):
        ok_type = isinstance(v, int) if self.integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type or (isinstance(v, float) and not math.isfinite(v)):
            raise Invalid(key, self.what, _got(v))
        if ((self.gt is not None and not v > self.gt) or (self.ge is not None and not v >= self.ge)
                or (self.lt is not None and not v < self.lt) or (self.le is not None and not v <= self.le)
                or (self.abs_le is not None and not abs(v) <= self.abs_le)
                or (self.multiple_of and v % self.multiple_of)):
            raise Invalid(key, self.what, _got(v))


def Int(**bounds) -> Num:  # noqa: N802 - reads as a type in schema literals
    """A JSON integer within optional bounds (see Num)."""
    return Num(integer=True, **bounds)


class Str(Node):
    """A string, optionally non-empty or one of `choices`."""

    def __init__(self, choices: Iterable[str] | None = None, nonempty: bool = False,
                 test: Callable[[str], bool] | None = None, what: str | None = None) -> None:
        self.choices = tuple(choices) if choices is not None else None
        self.nonempty, self.test = nonempty, test
        self.what = what or ("one of " + ", ".join(json.dumps(c) for c in self.choices) if self.choices is not None
                             else "a non-empty string" if nonempty else "a string")

    def check(self, v, key):
        if not isinstance(v, str) or (self.nonempty and not v) or (self.choices is not None and v not in self.choices) \
                or (self.test is not None and not self.test(v)):
            raise Invalid(key, self.what, _got(v))


class Bool(Node):
    what = "true or false"

    def check(self, v, key):
        if not isinstance(v, bool):
            raise Invalid(key, self.what, _got(v))


class Opt(Node):
    """null or the wrapped schema."""

    def __init__(self, inner: Node) -> None:
        self.inner = inner
        self.what = f"{inner.what} or null"

    def check(self, v, key):
        if v is None:
            return
        try:
            self.inner.check(v, key)
        except Invalid as e:
            if e.key != key:
                raise
            raise Invalid(key, self.what, e.got) from None


class OneOf(Node):
    """The first alternative that fits; the message lists them all."""

    def __init__(self, *options: Node) -> None:
        self.options = options
        self.what = " or ".join(o.what for o in options)

    def check(self, v, key):
        for o in self.options:
            try:
                o.check(v, key)
                return
            except Invalid as e:
                if e.key != key:  # the value had the right shape and failed deeper down: that is the error
                    raise
        raise Invalid(key, self.what, _got(v))


class Arr(Node):
    """A list of `item`, with optional length bounds."""

    def __init__(self, item: Node = AnyValue(), min_len: int = 0, max_len: int | None = None) -> None:
        self.item, self.min_len, self.max_len = item, min_len, max_len
        if min_len and max_len is not None:
            self.what = f"a list of {min_len} to {max_len} entries" if min_len != max_len else f"a list of {min_len} entries"
        elif min_len:
            self.what = "a non-empty list" if min_len == 1 else f"a list of at least {min_len} entries"
        else:
            self.what = "a list" if max_len is None else f"a list of at most {max_len} entries"

    def check(self, v, key):
        if not isinstance(v, list) or len(v) < self.min_len or (self.max_len is not None and len(v) > self.max_len):
            raise Invalid(key, self.what, _got(v))
        for i, x in enumerate(v):
            self.item.check(x, _child(key, i))


class Obj(Node):
    """A JSON object with known `fields` (all optional unless `required`); other keys are refused
    (`extra=False`), kept unchecked (`extra=True`), or checked against a schema (`extra=Node`)."""

    def __init__(self, fields: dict[str, Node] | None = None, required: Iterable[str] = (), extra: bool | Node = True,
                 what: str = "an object") -> None:
        self.fields, self.required, self.extra, self.what = dict(fields or {}), tuple(required), extra, what

    def check(self, v, key):
        if not isinstance(v, dict):
            raise Invalid(key, self.what, _got(v))
        for name in self.required:
            if name not in v:
                raise Invalid(_child(key, name), "present", None)
        for name, x in v.items():
            node = self.fields.get(name)
            if node is None:
                if self.extra is False:
                    allowed = ", ".join(sorted(self.fields))
                    raise Invalid(_child(key, name), f"unknown; allowed: {allowed}", None)
                if self.extra is True:
                    continue
                node = self.extra
            node.check(x, _child(key, name))


def validate(data: Any, schema: Node, source: str) -> Any:
    """`data` if it fits `schema`, else one OdebenchError line naming `source` and the offending key."""
    try:
        schema.check(data, "")
    except Invalid as e:
        where = f'"{e.key}"' if e.key else "the file"
        got = f", got {e.got}" if e.got is not None else ""
        if e.expected == "present":
            raise OdebenchError(f"{source}: {where} is missing") from None
        if e.expected.startswith("unknown; "):
            raise OdebenchError(f"{source}: unknown field {where} ({e.expected[9:]})") from None
        raise OdebenchError(f"{source}: {where} must be {e.expected}{got}") from None
    return data

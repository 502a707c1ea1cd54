"""The data that crosses between the program P and the tester T: plain data as tagged JSON (never
objects, never pickles), one message a line, at most ``MAX_MESSAGE`` bytes."""

import json
import os
import sys

MAX_MESSAGE = 16 * 2**20  # one protocol message (a call or a return value), bytes


class _Unsupported(Exception):
    pass


class _Protocol(Exception):
    pass


_DIGITS = getattr(sys, "set_int_max_str_digits", None)


def _unlimited_digits(fn, *args, **kwargs):
    if _DIGITS is None:
        return fn(*args, **kwargs)
    old = sys.get_int_max_str_digits()
    _DIGITS(0)
    try:
        return fn(*args, **kwargs)
    finally:
        _DIGITS(old)


def _encode(x, lenient: bool = False):
    """Plain data → JSON-able, keeping types: lists are JSON arrays, everything else that is not a JSON
    scalar is a one-key object (t tuple, d dict, s set, f frozenset, b bytes, y bytearray, c complex,
    r range, it iterator). ``lenient`` (return values): builtin subclasses become their base type, numpy
    scalars Python scalars, iterators (generators, map, ...) are drained."""
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if t is list:
        return [_encode(v, lenient) for v in x]
    if t is tuple:
        return {"t": [_encode(v, lenient) for v in x]}
    if t is dict:
        return {"d": [[_encode(k, lenient), _encode(v, lenient)] for k, v in x.items()]}
    if t is set:
        return {"s": [_encode(v, lenient) for v in x]}
    if t is frozenset:
        return {"f": [_encode(v, lenient) for v in x]}
    if t is bytes:
        return {"b": x.hex()}
    if t is bytearray:
        return {"y": x.hex()}
    if t is complex:
        return {"c": [x.real, x.imag]}
    if t is range:
        return {"r": [x.start, x.stop, x.step]}
    if lenient:
        for base in (bool, int, float, str, list, tuple, dict, set, frozenset, bytes, bytearray, complex):
            if isinstance(x, base):
                return _encode(base(x), lenient)
        if type(x).__module__ == "numpy" and getattr(x, "ndim", None) == 0 and hasattr(x, "item"):
            return _encode(x.item(), lenient)
        if hasattr(type(x), "__next__") and hasattr(type(x), "__iter__"):
            items = []
            for v in x:
                items.append(_encode(v, lenient))
                if len(items) > 10**6:
                    raise _Unsupported("an iterator of more than a million items")
            return {"it": items}
    raise _Unsupported(f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__)


def _decode(x):
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if t is list:
        return [_decode(v) for v in x]
    if t is not dict or len(x) != 1:
        raise _Protocol(f"unexpected {t.__name__}")
    ((tag, v),) = x.items()
    if tag in ("t", "s", "f", "it") and type(v) is list:
        items = [_decode(i) for i in v]
        return {"t": tuple, "s": set, "f": frozenset, "it": lambda i: iter(tuple(i))}[tag](items)
    if tag == "d" and type(v) is list:
        out = {}
        for pair in v:
            if type(pair) is not list or len(pair) != 2:
                raise _Protocol("bad dict item")
            out[_decode(pair[0])] = _decode(pair[1])
        return out
    if tag in ("b", "y") and type(v) is str:
        return bytes.fromhex(v) if tag == "b" else bytearray.fromhex(v)
    if tag == "c" and type(v) is list and len(v) == 2 and all(type(i) in (int, float) for i in v):
        return complex(v[0], v[1])
    if tag == "r" and type(v) is list and len(v) == 3 and all(type(i) is int for i in v):
        return range(*v)
    raise _Protocol(f"unknown tag {tag!r}")


def _dumps(obj) -> bytes:
    return (_unlimited_digits(json.dumps, obj, ensure_ascii=True, separators=(",", ":")) + "\n").encode()


class _Reader:
    def __init__(self, fd: int):
        self.fd, self.buf = fd, b""

    def line(self):
        """The next message (bytes without the newline), None at end of file."""
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_MESSAGE:
                raise _Protocol("message too long")
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

"""Names for the loader state's fingerprint that read the same in every process.

``repr`` of a function or an object without its own ``__repr__`` holds a memory address, which
differs in the process that resumes (every checkpoint was refused), and two lambdas print
alike (a state from one was accepted by the other). :func:`stable_name` names a function by
module, name and a digest of its code, constants, defaults and closure; anything else by its
repr and attributes, addresses left out.
"""
from __future__ import annotations

import functools
import hashlib
import re
import types


def stable_name(value) -> str:
    """A text for ``value`` (a ``sampling_strategy``, a ``feature_fn``, an encoder) that is the
    same in the process that resumes and differs between values: part of the loader state's
    fingerprint. A function is named by module and
    name plus a digest of its code, constants, defaults and closure (two lambdas differ); a
    ``functools.partial`` by its function and arguments; anything else by its repr (and its
    attributes), with memory addresses left out."""
    if isinstance(value, (str, dict)) or not callable(value):
        return repr(value)
    return f"<callable {_stable(value)}>"


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def plain_repr(obj) -> str:
    """``repr(obj)`` with memory addresses left out (an object without a ``__repr__`` of its own)."""
    return _ADDRESS.sub("", repr(obj))


_plain = plain_repr


def _code_text(code) -> str:
    consts = [_code_text(c) if isinstance(c, types.CodeType) else _plain(c) for c in code.co_consts]
    return f"{code.co_code.hex()}|{consts}|{code.co_names}"


def _stable(fn) -> str:
    if isinstance(fn, functools.partial):
        return f"partial({_stable(fn.func)}, {_plain(fn.args)}, {_plain(fn.keywords)})"
    if isinstance(fn, types.MethodType):
        return f"{_stable(fn.__func__)} of {_plain(fn.__self__)}"
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    code = getattr(fn, "__code__", None)
    if code is not None:
        cells = [c.cell_contents for c in (fn.__closure__ or ()) if c.cell_contents is not fn]
        text = f"{_code_text(code)}|{_plain(fn.__defaults__)}|{_plain(fn.__kwdefaults__)}|{_plain(cells)}"
        return f"{name}#{hashlib.blake2b(text.encode(), digest_size=6).hexdigest()}"
    attrs = _plain(sorted(vars(fn).items(), key=lambda kv: kv[0])) if hasattr(fn, "__dict__") else ""
    digest = hashlib.blake2b(f"{_plain(fn)}|{attrs}".encode(), digest_size=6).hexdigest()
    return f"{type(fn).__module__}.{type(fn).__qualname__}#{digest}"

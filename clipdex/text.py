"""Text from untrusted places, made safe for where it goes next.

Files, sidecars and requests carry any characters. PostgreSQL refuses two kinds in `text` and
`jsonb` (NUL, and lone UTF-16 surrogates, which JSON escapes like ``"\\ud800"`` produce in
Python), and a terminal obeys control characters (a file name with ESC sequences can retitle the
window or forge an output line). One module decides what happens to them.
"""

from __future__ import annotations

import math
import re
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL dropped, lone surrogates as U+FFFD."""
    if not _UNSTORABLE.search(text):
        return text
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def storable_json(value: Any) -> Any:
    """A JSON-able value with every key and string made :func:`storable`, and NaN or infinite
    numbers (which Python's JSON reader accepts and jsonb does not) as null."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {storable(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable_json(v) for v in value]
    return value


def unstorable_reason(text: str) -> str | None:
    """Why PostgreSQL could not store ``text`` as given, or None: for input that is refused."""
    match = _UNSTORABLE.search(text)
    if match is None:
        return None
    return "contains a NUL character" if match.group() == "\x00" else "is not valid Unicode text"


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (newline and tab included: a
    name must not start a line of its own) and bidi overrides are shown escaped, as ``\\x1b``."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

"""What a search can answer instead of results; the web app maps each to an HTTP status."""

from __future__ import annotations

import re

_FIELD_PREFIX = re.compile(r"^([a-z_]+): ")


class QueryError(ValueError):
    """The request cannot be answered as asked; the message says what to change (HTTP 400).

    ``field`` names the parameter at fault, so a form can point at it; messages written as
    "name: what is wrong" name it already."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        match = _FIELD_PREFIX.match(message)
        self.field = field or (match.group(1) if match else None)


class NotFound(LookupError):
    """A referenced image or query does not exist (HTTP 404)."""


class Conflict(LookupError):
    """The thing exists but not as it was indexed: a file that changed on disk (HTTP 409)."""

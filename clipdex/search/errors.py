"""What a search can answer instead of results; the web app maps each to an HTTP status."""

from __future__ import annotations


class QueryError(ValueError):
    """The request cannot be answered as asked; the message says what to change (HTTP 400)."""


class NotFound(LookupError):
    """A referenced image or query does not exist (HTTP 404)."""


class Conflict(LookupError):
    """The thing exists but not as it was indexed: a file that changed on disk (HTTP 409)."""

"""The cursor codec: everything the next page of a search needs, in the link itself, with no
server state (so a read-only database role can page too).

Two kinds, told apart by their contents: a search's cursor carries its query vector (as float16,
exactly as the database compares it) and the last row's (distance, id); a browse's cursor (no
query: newest first) carries the last row's (capture time, id). Both carry the filters and the
page size.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from clipdex.search.errors import QueryError
from clipdex.search.filters import check_text
from clipdex.search.words import query_words
from clipdex.search.request import MAX_ID, MAX_PAGE, MAX_TERMS, MAX_TEXT_LENGTH

NOT_OURS = "cursor: not a cursor this server handed out"


def _pack(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def _unpack(text: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise QueryError(NOT_OURS) from None
    if not isinstance(data, dict):
        raise QueryError(NOT_OURS)
    return data


def _filters_and_limit(data: dict[str, Any]) -> tuple[dict[str, list[str]], int]:
    filters = {str(k): [str(x) for x in v] for k, v in data["f"].items()}
    limit = int(data["k"])
    if not 1 <= limit <= MAX_PAGE:
        raise QueryError(NOT_OURS)
    return filters, limit


def _image_id(value: Any) -> int:
    image_id = int(value)
    if not 1 <= image_id <= MAX_ID:
        raise QueryError(NOT_OURS)
    return image_id


@dataclass(frozen=True)
class Cursor:
    """The next page of a search by a query vector."""

    vector: np.ndarray
    filters: dict[str, list[str]]
    limit: int
    distance: float
    image_id: int
    # A hybrid search: its phrases, the tier of the last row (0: a phrase is written in the photo
    # or its caption, 1: only in an album or file name, 2: the rest), and whether the rest is
    # left out (mode=text).
    phrases: tuple[str, ...] = ()
    tier: int = 0
    words_only: bool = False
    # The model whose space the vector is in: the next page searches the same vectors, never
    # another model's (of the same size, a distance between the two would mean nothing).
    model: str | None = None

    def encode(self) -> str:
        vector = base64.urlsafe_b64encode(self.vector.astype("<f2").tobytes()).decode()
        payload = {"v": vector, "f": self.filters, "k": self.limit, "d": self.distance, "i": self.image_id}
        if self.model:
            payload["m"] = self.model
        if self.phrases:
            payload.update(w=list(self.phrases), h=self.tier, o=self.words_only)
        return _pack(payload)

    @classmethod
    def decode(cls, text: str, dim: int) -> "Cursor":
        cursor = decode_cursor(text, dim)
        if not isinstance(cursor, cls):
            raise QueryError(NOT_OURS)
        return cursor

    @classmethod
    def _from(cls, data: dict[str, Any], dim: int) -> "Cursor":
        try:
            vector = np.frombuffer(base64.urlsafe_b64decode(data["v"]), dtype="<f2").astype(np.float32)
            filters, limit = _filters_and_limit(data)
            phrases = tuple(str(p) for p in data.get("w", []))
            # "t" is the two-tier cursor of clipdex before names were searched: its 1 was the rest.
            tier = int(data["h"]) if "h" in data else {0: 0, 1: 2}.get(int(data.get("t", 0)), -1)
            if tier not in (0, 1, 2) or len(phrases) > MAX_TERMS or any(len(p) > MAX_TEXT_LENGTH for p in phrases):
                raise ValueError("not a hybrid cursor")
            for phrase in phrases:
                check_text("cursor", phrase)
                if not query_words(phrase):
                    raise ValueError("a phrase with no words")
            model = data.get("m")
            if model is not None:
                check_text("cursor", str(model))
            cursor = cls(vector, filters, limit, float(data["d"]), _image_id(data["i"]), phrases, tier,
                         bool(data.get("o", False)), None if model is None else str(model))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, OverflowError):
            raise QueryError(NOT_OURS) from None
        if len(cursor.vector) != dim or not np.all(np.isfinite(cursor.vector)):
            raise QueryError("cursor: not a cursor for this model; run the search again")
        # A query vector is a unit vector (float16 keeps its norm within a few thousandths); a
        # zero or scaled vector would rank by nothing and score NaN.
        if abs(float(np.linalg.norm(cursor.vector)) - 1.0) > 0.01:
            raise QueryError(NOT_OURS)
        if not (math.isfinite(cursor.distance) and -0.01 <= cursor.distance <= 2.01):
            raise QueryError(NOT_OURS)
        return cursor


@dataclass(frozen=True)
class DateCursor:
    """The next page of a browse, newest first: the last row's capture time (None for photos of
    unknown time, which come last) and id."""

    filters: dict[str, list[str]]
    limit: int
    taken_at: datetime | None
    image_id: int

    def encode(self) -> str:
        return _pack({"n": self.taken_at.isoformat() if self.taken_at else None, "f": self.filters,
                      "k": self.limit, "i": self.image_id})

    @classmethod
    def _from(cls, data: dict[str, Any]) -> "DateCursor":
        try:
            filters, limit = _filters_and_limit(data)
            taken_at = datetime.fromisoformat(data["n"]) if data["n"] is not None else None
            if taken_at is not None and taken_at.tzinfo is None:
                raise ValueError("naive")
            return cls(filters, limit, taken_at, _image_id(data["i"]))
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            raise QueryError(NOT_OURS) from None


def cursor_model(text: str) -> str | None:
    """The model a search's cursor was made with (None for a browse, or a cursor from before)."""
    model = _unpack(text).get("m")
    return model if isinstance(model, str) else None


def decode_cursor(text: str, dim: int) -> Cursor | DateCursor:
    data = _unpack(text)
    return DateCursor._from(data) if "n" in data and "v" not in data else Cursor._from(data, dim)

"""The cursor codec: everything the next page of a search needs, in the link itself, with no
server state (so a read-only database role can page too).

Two kinds, told apart by their contents: a search by relevance carries its query vector (as
float16, exactly as the database compares it) and the last row's (distance, id); a page in date
order (a browse, or a search's matches sorted by date) carries the last row's (capture time, id),
and for a search its vector too. Both carry the filters, the page size and a search's match
cut-off (the distance decided on the first page, so later pages keep the same matches).
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
from clipdex.search.matches import CutOff
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
    cut: "CutOff | None" = None   # the matches end at this distance (None: no cut-off)

    def encode(self) -> str:
        payload = {"v": _vector_text(self.vector), "f": self.filters, "k": self.limit, "d": self.distance,
                   "i": self.image_id}
        if self.model:
            payload["m"] = self.model
        if self.phrases:
            payload.update(w=list(self.phrases), h=self.tier, o=self.words_only)
        if self.cut is not None:
            payload["c"] = self.cut.to_list()
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
            vector = _vector_of(data["v"])
            filters, limit = _filters_and_limit(data)
            phrases = _phrases(data)
            # "t" is the two-tier cursor of clipdex before names were searched: its 1 was the rest.
            tier = int(data["h"]) if "h" in data else {0: 0, 1: 2}.get(int(data.get("t", 0)), -1)
            if tier not in (0, 1, 2):
                raise ValueError("not a hybrid cursor")
            cursor = cls(vector, filters, limit, float(data["d"]), _image_id(data["i"]), phrases, tier,
                         bool(data.get("o", False)), _model(data), CutOff.from_list(data.get("c")))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, OverflowError):
            raise QueryError(NOT_OURS) from None
        _check_vector(cursor.vector, dim)
        if not (math.isfinite(cursor.distance) and -1.01 <= cursor.distance <= 2.01):
            raise QueryError(NOT_OURS)
        return cursor


@dataclass(frozen=True)
class DateCursor:
    """The next page in date order (a browse, or a search's matches by date): the last row's
    capture time (None for photos of unknown time, which come last) and id; for a search, its
    vector, cut-off, phrases and model too."""

    filters: dict[str, list[str]]
    limit: int
    taken_at: datetime | None
    image_id: int
    order: str = "newest"
    vector: np.ndarray | None = None
    cut: "CutOff | None" = None
    phrases: tuple[str, ...] = ()
    model: str | None = None

    def encode(self) -> str:
        payload = {"n": self.taken_at.isoformat() if self.taken_at else None, "f": self.filters,
                   "k": self.limit, "i": self.image_id}
        if self.order != "newest":
            payload["s"] = self.order
        if self.vector is not None:
            payload["v"] = _vector_text(self.vector)
        if self.cut is not None:
            payload["c"] = self.cut.to_list()
        if self.phrases:
            payload["w"] = list(self.phrases)
        if self.model:
            payload["m"] = self.model
        return _pack(payload)

    @classmethod
    def _from(cls, data: dict[str, Any], dim: int) -> "DateCursor":
        try:
            filters, limit = _filters_and_limit(data)
            taken_at = datetime.fromisoformat(data["n"]) if data["n"] is not None else None
            if taken_at is not None and taken_at.tzinfo is None:
                raise ValueError("naive")
            order = str(data.get("s", "newest"))
            if order not in ("newest", "oldest"):
                raise ValueError("not a date order")
            vector = _vector_of(data["v"]) if "v" in data else None
            cursor = cls(filters, limit, taken_at, _image_id(data["i"]), order, vector,
                         CutOff.from_list(data.get("c")), _phrases(data), _model(data))
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, binascii.Error):
            raise QueryError(NOT_OURS) from None
        if cursor.vector is not None:
            _check_vector(cursor.vector, dim)
        return cursor


def _vector_text(vector: np.ndarray) -> str:
    return base64.urlsafe_b64encode(vector.astype("<f2").tobytes()).decode()


def _vector_of(text: Any) -> np.ndarray:
    return np.frombuffer(base64.urlsafe_b64decode(text), dtype="<f2").astype(np.float32)


def _check_vector(vector: np.ndarray, dim: int) -> None:
    if len(vector) != dim or not np.all(np.isfinite(vector)):
        raise QueryError("cursor: not a cursor for this model; run the search again")
    # A query vector is a unit vector (float16 keeps its norm within a few thousandths); a
    # zero or scaled vector would rank by nothing and score NaN.
    if abs(float(np.linalg.norm(vector)) - 1.0) > 0.01:
        raise QueryError(NOT_OURS)


def _phrases(data: dict[str, Any]) -> tuple[str, ...]:
    phrases = tuple(str(p) for p in data.get("w", []))
    if len(phrases) > MAX_TERMS or any(len(p) > MAX_TEXT_LENGTH for p in phrases):
        raise ValueError("too many phrases")
    for phrase in phrases:
        check_text("cursor", phrase)
        if not query_words(phrase):
            raise ValueError("a phrase with no words")
    return phrases


def _model(data: dict[str, Any]) -> str | None:
    model = data.get("m")
    if model is None:
        return None
    check_text("cursor", str(model))
    return str(model)


def cursor_model(text: str) -> str | None:
    """The model a search's cursor was made with (None for a browse, or a cursor from before)."""
    model = _unpack(text).get("m")
    return model if isinstance(model, str) else None


def decode_cursor(text: str, dim: int) -> Cursor | DateCursor:
    data = _unpack(text)
    return DateCursor._from(data, dim) if "n" in data else Cursor._from(data, dim)

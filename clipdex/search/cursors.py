"""The cursor codec: everything the next page of a search needs, in the link itself."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass

import numpy as np

from clipdex.search.errors import QueryError
from clipdex.search.request import MAX_ID


@dataclass(frozen=True)
class Cursor:
    """Everything the next page needs, in the link itself: the query vector (as float16, exactly
    as the database compares it), the filters, the page size and the last row of this page. No
    server state, so a read-only database role can page too."""

    vector: np.ndarray
    filters: dict[str, list[str]]
    limit: int
    distance: float
    image_id: int

    def encode(self) -> str:
        vector = base64.urlsafe_b64encode(self.vector.astype("<f2").tobytes()).decode()
        payload = json.dumps({"v": vector, "f": self.filters, "k": self.limit, "d": self.distance,
                              "i": self.image_id}, separators=(",", ":"))
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, dim: int) -> "Cursor":
        try:
            data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            vector = np.frombuffer(base64.urlsafe_b64decode(data["v"]), dtype="<f2").astype(np.float32)
            cursor = cls(vector, {str(k): [str(x) for x in v] for k, v in data["f"].items()},
                         int(data["k"]), float(data["d"]), int(data["i"]))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
            raise QueryError("cursor: not a cursor this server handed out") from None
        if len(cursor.vector) != dim or not np.all(np.isfinite(cursor.vector)):
            raise QueryError("cursor: not a cursor for this model; run the search again")
        # A query vector is a unit vector (float16 keeps its norm within a few thousandths); a
        # zero or scaled vector would rank by nothing and score NaN.
        if abs(float(np.linalg.norm(cursor.vector)) - 1.0) > 0.01:
            raise QueryError("cursor: not a cursor this server handed out")
        if not (math.isfinite(cursor.distance) and -0.01 <= cursor.distance <= 2.01 and 1 <= cursor.image_id <= MAX_ID):
            raise QueryError("cursor: not a cursor this server handed out")
        return cursor

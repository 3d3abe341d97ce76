"""One search request, from plain parameters: what the CLI's flags, a query string, a form or a
JSON body all become. Every validation and cap lives here, so each surface refuses the same
things with the same words.

Parameters (each a list of strings):
  q=<text>        a text to look for (repeatable); `red car^2` gives it weight 2
  not=<text>      a text to steer away from (repeatable)
  like=<id>       an indexed image to look like (repeatable, `123^0.5` for a weight)
  mode=<m>        hybrid (default): photos with the words of q written in them or in their
                  caption first, then those with them in an album or file name, then the rest,
                  each by the vector; vector: the vector alone; text: only photos holding the words
  model=<name>    search this model's vectors (a model's key or open_clip name, `clipdex models`);
                  by default the library's default model, or for a Chinese query a multilingual
                  one when the default reads only English
  strictness=<s>  0..1: how sure a photo must be to count as a match (default 0.5, CLIPDEX_STRICTNESS);
                  the cut-off adapts to each query (clipdex.search.matches); 0 keeps every photo
  sort=<order>    relevance (default), newest or oldest: the matches by date taken
  facets=true     also count the matches by year, source, album, place, person and camera
  limit=<n>       page size, 1..200 (default 40)
  cursor=<c>      the next page of an earlier search (given alone, or with limit, which it overrides)
  and the filters of :class:`Filters`. Uploaded example images come beside the parameters.
Nothing to look for (no q, like or image) is a browse: the photos the filters keep, newest first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from clipdex.search.errors import NotFound, QueryError
from clipdex.search.filters import Filters, check_text

MODES = ("hybrid", "vector", "text")
SORTS = ("relevance", "newest", "oldest")
MAX_PAGE = 200
DEFAULT_PAGE = 40
MAX_TERMS = 16            # texts, negative texts and images together
MAX_TEXT_LENGTH = 1000    # characters of one query text
MAX_ID = 2**63 - 1
IGNORED_PARAMETERS = ("token",)   # an old way to pass the access token; never a filter

_WEIGHT = re.compile(r"^(.*)\^([^\s^]*)$", re.S)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def split_weight(term: str, default: float = 1.0, field: str = "q") -> tuple[str, float]:
    """'red car^1.5' -> ('red car', 1.5); a trailing ^number is a weight (Lucene's boost syntax).
    A trailing ^ followed by anything else is a mistake to point out, not part of the text."""
    match = _WEIGHT.match(term.strip())
    if not match:
        return term.strip(), default
    text, written = match.group(1).strip(), match.group(2)
    if not _NUMBER.fullmatch(written):
        raise QueryError(f"weight of {text!r}: expected a number after ^, got {written!r}", field=field)
    weight = float(written)
    if not math.isfinite(weight) or not 0 < abs(weight) <= 100:
        raise QueryError(f"weight of {text!r} must be between -100 and 100, not 0", field=field)
    return text, weight


def check_image_id(image_id: int) -> int:
    if not 1 <= image_id <= MAX_ID:
        raise NotFound(f"there is no image {image_id}")
    return image_id


def parse_like_term(term: str) -> tuple[int, float]:
    """'123^0.5' -> (123, 0.5): an indexed image's id with an optional weight.

    Only ASCII digits count: str.isdigit() also accepts '¹', which int() refuses. A number past
    bigint is a well-formed id of no image (404, as for /api/images/<id>), and never reaches int().
    """
    value, weight = split_weight(term, field="like")
    if not re.fullmatch(r"[0-9]+", value):
        raise QueryError(f"like: expected an image id (a whole number), got {value!r}")
    if len(value) > len(str(MAX_ID)):
        raise NotFound(f"there is no image {value[:24]}{'…' if len(value) > 24 else ''}")
    return check_image_id(int(value)), weight


def parse_strictness(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise QueryError(f"strictness: expected a number from 0 to 1, got {text!r}", field="strictness") from None
    if not 0 <= value <= 1:
        raise QueryError("strictness must be between 0 (every photo) and 1 (only the surest matches)",
                         field="strictness")
    return value


def parse_limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        raise QueryError(f"limit: expected a whole number, got {text!r}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise QueryError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    return limit


@dataclass
class QuerySpec:
    """What to look for: each part is (value, weight); negatives are subtracted."""

    texts: list[tuple[str, float]] = field(default_factory=list)
    negative_texts: list[tuple[str, float]] = field(default_factory=list)
    image_ids: list[tuple[int, float]] = field(default_factory=list)
    uploads: list[tuple[bytes, float]] = field(default_factory=list)

    @property
    def browse(self) -> bool:
        """Nothing to look for: the filters alone choose the photos (newest first)."""
        return not (self.texts or self.negative_texts or self.image_ids or self.uploads)

    def check(self) -> "QuerySpec":
        """QueryError unless this is something a search can take."""
        if self.negative_texts and not (self.texts or self.image_ids or self.uploads):
            raise QueryError("not: give a text or an example image to steer away from", field="not")
        parts = len(self.texts) + len(self.negative_texts) + len(self.image_ids) + len(self.uploads)
        if parts > MAX_TERMS:
            raise QueryError(f"at most {MAX_TERMS} texts and images in one search")
        for text, _ in self.texts + self.negative_texts:
            check_text("q", text)
            if len(text) > MAX_TEXT_LENGTH:
                raise QueryError(f"a query text may have at most {MAX_TEXT_LENGTH} characters")
        for image_id, _ in self.image_ids:
            check_image_id(image_id)
        return self


@dataclass
class SearchRequest:
    """A new search (spec, filters, page size), or the next page of one (cursor)."""

    spec: QuerySpec = field(default_factory=QuerySpec)
    filters: Filters = field(default_factory=Filters)
    limit: int = DEFAULT_PAGE
    cursor: str | None = None
    mode: str = "hybrid"
    model: str | None = None          # whose vectors to search (default: the library's default model)
    strictness: float | None = None   # the match cut-off (None: the configured default)
    sort: str = "relevance"
    facets: bool = False              # count the matches by facet (first pages only)

    @classmethod
    def parse(cls, params: Mapping[str, Sequence[str]], uploads: Sequence[bytes] = ()) -> "SearchRequest":
        params = {str(k): [str(v) for v in values] for k, values in params.items()}
        for name, values in params.items():
            check_text("parameter name", name)
            for value in values:
                check_text(name, value)
        for name in IGNORED_PARAMETERS:
            params.pop(name, None)
        cursor = next((c for c in params.pop("cursor", []) if c), None)
        spec = QuerySpec(
            texts=[split_weight(t) for t in params.pop("q", []) if t.strip()],
            negative_texts=[split_weight(t) for t in params.pop("not", []) if t.strip()],
            image_ids=[parse_like_term(t) for t in params.pop("like", []) if t.strip()],
            uploads=[(data, 1.0) for data in uploads if data])
        limit = parse_limit(next(iter(params.pop("limit", [])), str(DEFAULT_PAGE)))
        modes = [m.strip() for m in params.pop("mode", []) if m.strip()]
        if len(modes) > 1 or (modes and modes[0] not in MODES):
            raise QueryError(f"mode: one of {', '.join(MODES)}", field="mode")
        models = [m.strip() for m in params.pop("model", []) if m.strip()]
        if len(models) > 1:
            raise QueryError("model: give it once", field="model")
        strictness = [parse_strictness(s) for s in params.pop("strictness", []) if s.strip()]
        sorts = [s.strip() for s in params.pop("sort", []) if s.strip()]
        if len(sorts) > 1 or (sorts and sorts[0] not in SORTS) or len(strictness) > 1:
            raise QueryError(f"sort: one of {', '.join(SORTS)}" if len(strictness) <= 1 else "strictness: give it once",
                             field="sort" if len(strictness) <= 1 else "strictness")
        facets = [f.strip().lower() for f in params.pop("facets", []) if f.strip()]
        if len(facets) > 1 or (facets and facets[0] not in ("true", "false", "1", "0")):
            raise QueryError("facets: true or false", field="facets")
        filters = Filters.parse(params)
        if cursor is not None and (not spec.browse or filters.active or modes or models or strictness or sorts
                                   or facets):
            raise QueryError("cursor: a cursor continues an earlier search as it was; give it alone, or "
                             "start a new search without it", field="cursor")
        request = cls(spec, filters, limit, cursor, modes[0] if modes else "hybrid", models[0] if models else None,
                      strictness[0] if strictness else None, sorts[0] if sorts else "relevance",
                      bool(facets) and facets[0] in ("true", "1"))
        if cursor is None:
            spec.check()
        return request

"""The filter language: metadata conditions on photos, parsed from request parameters, turned
into parameterised SQL over ``images i`` (``locations l`` and ``image_texts t`` through EXISTS)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

from clipdex.search.errors import QueryError
from clipdex.search.words import CAPTION_WEIGHT, compact, query_words, tsquery_of
from clipdex.text import printable, unstorable_reason
from clipdex.vocabulary import FORMAT_NAMES, IMAGE_FORMATS, ORIENTATIONS, SOURCE_KINDS


MAX_PHRASE = 200          # characters of a text filter


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise QueryError(f"{name}: expected true or false, got {value!r}")


def _parse_int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name}: expected a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise QueryError(f"{name}: must be between {low} and {high}, got {number}")
    return number


def _parse_when(name: str, value: str, end: bool) -> datetime:
    """A date (whole day, inclusive) or an ISO date-time, in UTC; naive times are UTC. The last
    day Python knows (9999-12-31) ends at its last microsecond."""
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            if end and day == date.max:
                return datetime.max.replace(tzinfo=timezone.utc)
            return datetime.combine(day + timedelta(days=1) if end else day, time(), timezone.utc)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except OverflowError:
        raise QueryError(f"{name}: {value!r} is outside the dates clipdex can compare (years 1 to 9999)") from None
    except ValueError:
        raise QueryError(f"{name}: expected a date like 2023-07-31 or 2023-07-31T18:00, got {value!r}") from None


def check_text(name: str, value: str) -> str:
    """A parameter's text, or QueryError when PostgreSQL could not take it (NUL, broken Unicode)."""
    reason = unstorable_reason(value)
    if reason is not None:
        raise QueryError(f"{name}: {reason}")
    return value


def _split_values(values: Iterable[str]) -> list[str]:
    return [v.strip() for value in values for v in str(value).split(",") if v.strip()]


def _phrase_tests(alias: str, phrases: Sequence[str], compact_sql: str, weights: str = "",
                  words: str = "words") -> tuple[str, list[Any]]:
    tests, params = [], []
    for phrase in phrases:
        tests.append(f"({alias}.{words} @@ %s::tsquery AND strpos({compact_sql}, %s) > 0)")
        params += [tsquery_of(query_words(phrase), weights), compact(phrase)]
    return " OR ".join(tests), params


def _word_tests(phrases: Sequence[str], names: str) -> tuple[str, str, list[Any]]:
    """The test on ``image_texts t`` and the one on ``locations l`` for ``phrases``, and their
    parameters (in that order)."""
    ocr, ocr_params = _phrase_tests("t", phrases, "t.compact")
    if names == "caption":
        named, named_params = _phrase_tests("l", phrases, "split_part(l.words_compact, '|', 1)", CAPTION_WEIGHT)
    else:
        named, named_params = _phrase_tests("l", phrases, "l.words_compact")
    return ocr, named, ocr_params + named_params


def _place_tests(alias: str, phrases: Sequence[str]) -> tuple[str, list[Any]]:
    """One of ``phrases`` is in the names of the place where the photo was taken (an album-like
    name: "Kyoto" finds the photos taken there whatever the model or the caption say)."""
    return _phrase_tests(alias, phrases, f"{alias}.place_compact", words="place_words")


def _holding_sql(phrases: Sequence[str], names: str) -> tuple[str, list[Any]]:
    ocr, named, params = _word_tests(phrases, names)
    sql = (f"SELECT t.image_id FROM image_texts t WHERE {ocr} "
           f"UNION ALL SELECT l.image_id FROM locations l WHERE {named}")
    if names == "all":
        placed, placed_params = _place_tests("p", phrases)
        sql += f" UNION ALL SELECT p.id FROM images p WHERE {placed}"
        params = params + placed_params
    return sql, params


def words_in_photo(phrases: Sequence[str], names: str, negate: bool = False) -> tuple[str, list[Any]]:
    """SQL over ``images i``: one of ``phrases`` is written in the photo (OCR) or in its caption
    (``names="caption"``), or also in an album or file name of one of its copies or in the name of
    the place it was taken (``names="all"``);
    with ``negate``, none is anywhere there. The GIN indexes find the photos holding every word of
    a phrase; the check on the text without spaces keeps those where the words stand together, as
    typed. The photos holding a phrase are gathered once into an array (a hashed lookup per
    photo, and a plan that starts from them: measured faster than a semi-join, and far faster than
    EXISTS … OR EXISTS, which PostgreSQL probes photo by photo); none holding one is two anti-joins."""
    if negate:
        ocr, named, params = _word_tests(phrases, names)
        sql = (f"NOT EXISTS (SELECT 1 FROM image_texts t WHERE t.image_id = i.id AND ({ocr})) AND "
               f"NOT EXISTS (SELECT 1 FROM locations l WHERE l.image_id = i.id AND ({named}))")
        if names == "all":
            placed, placed_params = _place_tests("i", phrases)
            sql += f" AND NOT coalesce({placed}, false)"
            params = params + placed_params
        return sql, params
    holding, params = _holding_sql(phrases, names)
    return f"i.id = ANY(ARRAY({holding}))", params


def holding_words(conn, phrases: Sequence[str], names: str, limit: int) -> list[int]:
    """Up to ``limit`` ids of the photos holding one of ``phrases`` (as ``words_in_photo``), read
    from the word indexes alone."""
    holding, params = _holding_sql(phrases, names)
    return [r[0] for r in conn.execute(f"SELECT DISTINCT image_id FROM ({holding}) AS found LIMIT %s",
                                       [*params, limit])]


@dataclass(frozen=True)
class Filters:
    """Metadata filters, all combinable (AND)."""

    taken_from: datetime | None = None   # inclusive
    taken_to: datetime | None = None     # exclusive (a date means the whole day)
    source: tuple[str, ...] = ()
    album: tuple[str, ...] = ()
    min_width: int | None = None
    min_height: int | None = None
    orientation: str | None = None
    format: tuple[str, ...] = ()
    camera_make: str | None = None
    camera_model: str | None = None
    has_gps: bool | None = None
    bbox: tuple[float, float, float, float] | None = None   # south, west, north, east
    favorite: bool | None = None
    path: str | None = None              # "root/relative/prefix"
    exclude: tuple[int, ...] = ()        # image ids to leave out (the photo itself, for "more like this")
    text: str | None = None              # words in the photo (OCR), its caption, album, file name or place
    place: str | None = None             # a town, region or country where it was taken (any case; 日本 too)
    person: str | None = None            # a person the export names in it (Takeout's people; any case)
    lookalikes_of: int | None = None     # every copy of this photo's picture (its look-alike group)
    collapse: bool = True                # copies of one picture share a tile (clipdex.search.lookalikes)
    # Set by the search service for a hybrid search, never parsed from a request: one of these
    # phrases is in the photo's text or caption / is not; is in any of its names / is not (the
    # tiers of a hybrid ranking).
    written: tuple[str, ...] = ()
    unwritten: tuple[str, ...] = ()
    named: tuple[str, ...] = ()
    unnamed: tuple[str, ...] = ()

    NAMES = ("taken_from", "taken_to", "source", "album", "min_width", "min_height", "orientation",
             "format", "camera_make", "camera_model", "has_gps", "bbox", "favorite", "path", "exclude", "text",
             "place", "person", "lookalikes_of", "collapse")

    @classmethod
    def parse(cls, params: Mapping[str, Sequence[str]]) -> "Filters":
        """From request parameters (each a list of strings); unknown names are an error."""
        unknown = sorted(str(name) for name in set(params) - set(cls.NAMES))
        if unknown:
            raise QueryError(f"unknown filter {printable(unknown[0])!r}; filters are: {', '.join(cls.NAMES)}",
                             field=unknown[0])
        for name, items in params.items():
            for item in items:
                check_text(name, str(item))
        values: dict[str, Any] = {}

        def one(name: str) -> str | None:
            items = [v for v in params.get(name, []) if str(v).strip()]
            if len(items) > 1:
                raise QueryError(f"{name}: give it once")
            return str(items[0]) if items else None

        if (v := one("taken_from")) is not None:
            values["taken_from"] = _parse_when("taken_from", v, end=False)
        if (v := one("taken_to")) is not None:
            values["taken_to"] = _parse_when("taken_to", v, end=True)
        if values.get("taken_from") and values.get("taken_to") and values["taken_from"] >= values["taken_to"]:
            raise QueryError("taken_from must be before taken_to", field="taken_from")
        sources = _split_values(params.get("source", []))
        for s in sources:
            if s not in SOURCE_KINDS:
                raise QueryError(f"source: {s!r} is not one of {', '.join(SOURCE_KINDS)}")
        values["source"] = tuple(dict.fromkeys(sources))
        values["album"] = tuple(dict.fromkeys(a.strip() for a in params.get("album", []) if a.strip()))
        for name in ("min_width", "min_height"):
            if (v := one(name)) is not None:
                values[name] = _parse_int(name, v, 1, 1_000_000)
        if (v := one("orientation")) is not None:
            if v not in ORIENTATIONS:
                raise QueryError(f"orientation: {v!r} is not one of {', '.join(ORIENTATIONS)}")
            values["orientation"] = v
        formats = []
        for f in _split_values(params.get("format", [])):
            if f.lower() not in FORMAT_NAMES:
                raise QueryError(f"format: {f!r} is not one of {', '.join(sorted(IMAGE_FORMATS))}")
            formats.append(FORMAT_NAMES[f.lower()])
        values["format"] = tuple(dict.fromkeys(formats))
        for name in ("camera_make", "camera_model"):
            if (v := one(name)) is not None:
                values[name] = v.strip()
        for name in ("has_gps", "favorite", "collapse"):
            if (v := one(name)) is not None:
                values[name] = _parse_bool(name, v)
        if (v := one("bbox")) is not None:
            try:
                south, west, north, east = (float(x) for x in v.split(","))
            except ValueError:
                raise QueryError("bbox: expected south,west,north,east in degrees, e.g. 48.8,2.2,48.9,2.5") from None
            if not all(map(math.isfinite, (south, west, north, east))) or not (
                    -90 <= south <= north <= 90 and -180 <= west <= 180 and -180 <= east <= 180):
                raise QueryError("bbox: latitudes within -90..90 with south <= north, longitudes within -180..180")
            values["bbox"] = (south, west, north, east)
        if (v := one("path")) is not None:
            values["path"] = v.strip().strip("/")
        excluded = []
        for text in _split_values(params.get("exclude", [])):
            if not re.fullmatch(r"[0-9]{1,19}", text) or not 1 <= int(text) <= 2**63 - 1:
                raise QueryError(f"exclude: expected image ids, got {text!r}")
            excluded.append(int(text))
        values["exclude"] = tuple(dict.fromkeys(excluded))
        if (v := one("lookalikes_of")) is not None:
            values["lookalikes_of"] = _parse_int("lookalikes_of", v, 1, 2**63 - 1)
        if (v := one("text")) is not None:
            if len(v) > MAX_PHRASE:
                raise QueryError(f"text: at most {MAX_PHRASE} characters", field="text")
            if not query_words(v):
                raise QueryError(f"text: {v!r} has no letters or digits to look for", field="text")
            values["text"] = v.strip()
        for name in ("place", "person"):
            if (v := one(name)) is not None:
                if len(v) > MAX_PHRASE or not compact(v):
                    raise QueryError(f"{name}: a name of at most {MAX_PHRASE} characters with letters in it", field=name)
                values[name] = v.strip()
        return cls(**values)

    def to_params(self) -> dict[str, list[str]]:
        """The inverse of parse, for cursors and links."""
        out: dict[str, list[str]] = {}
        for f in fields(self):
            if f.name not in self.NAMES:
                continue
            value = getattr(self, f.name)
            if value is None or value == () or value == f.default:
                continue
            if isinstance(value, tuple) and f.name != "bbox":
                out[f.name] = [str(v) for v in value]
            elif f.name == "bbox":
                out[f.name] = [",".join(repr(x) for x in value)]
            elif isinstance(value, datetime):
                out[f.name] = [value.isoformat()]
            elif isinstance(value, bool):
                out[f.name] = ["true" if value else "false"]
            else:
                out[f.name] = [str(value)]
        return out

    @property
    def active(self) -> bool:
        """Some filter leaves photos out (folding copies into one tile leaves none out)."""
        return any(getattr(self, f.name) not in (None, ()) for f in fields(self) if f.name != "collapse")

    def sql(self) -> tuple[str, list[Any]]:
        """A WHERE fragment over images `i` (locations through EXISTS) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for value, clause in (
            (self.taken_from, "i.taken_at >= %s"),
            (self.taken_to, "i.taken_at < %s"),
            (self.min_width, "i.width >= %s"),
            (self.min_height, "i.height >= %s"),
            (self.orientation, "i.orientation = %s"),
            (list(self.format), "i.format = ANY(%s)"),
            (self.camera_make, "lower(i.camera_make) = lower(%s)"),
            (self.camera_model, "lower(i.camera_model) = lower(%s)"),
            (self.person, "clipdex_people(i.extra) @> ARRAY[lower(%s)]"),
        ):
            if value:
                clauses.append(clause)
                params.append(value)
        if self.has_gps is not None:
            clauses.append("i.latitude IS NOT NULL" if self.has_gps else "i.latitude IS NULL")
        if self.bbox:
            south, west, north, east = self.bbox
            clauses.append("i.latitude BETWEEN %s AND %s")
            params += [south, north]
            if west <= east:
                clauses.append("i.longitude BETWEEN %s AND %s")
                params += [west, east]
            else:  # the box crosses the antimeridian
                clauses.append("(i.longitude >= %s OR i.longitude <= %s)")
                params += [west, east]
        if self.favorite is not None:
            clauses.append("i.favorite" if self.favorite else "NOT i.favorite")
        if self.exclude:
            clauses.append("i.id <> ALL(%s)")
            params.append(list(self.exclude))
        if self.lookalikes_of is not None:
            clauses.append("(i.id = %s OR i.look_group = (SELECT g.look_group FROM images g WHERE g.id = %s))")
            params += [self.lookalikes_of, self.lookalikes_of]
        if self.place:   # one of the place's names as a whole ("Kyoto", "japan", "日本"), through its GIN index
            clauses.append("(i.place_words @@ %s::tsquery AND strpos('|' || i.place_compact || '|', %s) > 0)")
            params += [tsquery_of(query_words(self.place)), f"|{compact(self.place)}|"]
        for phrases, names, negate in (((self.text,) if self.text else (), "all", False),
                                       (self.written, "caption", False), (self.unwritten, "caption", True),
                                       (self.named, "all", False), (self.unnamed, "all", True)):
            if phrases:
                clause, clause_params = words_in_photo(phrases, names, negate)
                clauses.append(clause)
                params += clause_params
        location: list[str] = []
        for value, clause in ((list(self.source), "l.source = ANY(%s)"), (list(self.album), "l.album = ANY(%s)")):
            if value:
                location.append(clause)
                params.append(value)
        if self.path:
            root, _, prefix = self.path.partition("/")
            location.append("l.root = %s")
            params.append(root)
            if prefix:
                location.append(r"l.relpath LIKE %s ESCAPE '\'")
                params.append(re.sub(r"([\\%_])", r"\\\1", prefix) + "%")
        if location:
            clauses.append("EXISTS (SELECT 1 FROM locations l WHERE l.image_id = i.id AND "
                           + " AND ".join(location) + ")")
        return (" AND ".join(clauses) or "true"), params

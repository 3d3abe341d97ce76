"""Embedded photo metadata (EXIF, XMP), the decision of when a photo was taken, and the facts
an image row gets from both and from what its export says.

Nothing read from a file is trusted: phones, chat apps and editors write blank, placeholder and
corrupt values, so every field that cannot be read sanely becomes None instead of an error.
The capture time comes from, in order of trust: the Takeout sidecar (it carries the user's edits
in Google Photos), the embedded date, the file name, the file's mtime.
"""

from __future__ import annotations

import math
import re
import struct
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from PIL import ExifTags, Image

if TYPE_CHECKING:
    from indexer.sources import SourceInfo

UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
EARLIEST_PLAUSIBLE = datetime(1826, 1, 1, tzinfo=timezone.utc)  # the oldest surviving photograph
MAX_UTC_OFFSET_MINUTES = 18 * 60  # ISO 8601 / EXIF bound; anything wider is corrupt
MAX_INFERRED_OFFSET_MINUTES = 14 * 60  # real zones span -12:00..+14:00; a wider gap is a date edit

Tag = ExifTags.Base
GPS = ExifTags.GPS

# (date tag, sub-second tag, offset tags in order of preference); ModifyDate is left out on
# purpose: it changes whenever the file is edited.
EXIF_DATE_TAGS = (
    (Tag.DateTimeOriginal, Tag.SubsecTimeOriginal, (Tag.OffsetTimeOriginal, Tag.OffsetTime)),
    (Tag.DateTimeDigitized, Tag.SubsecTimeDigitized, (Tag.OffsetTimeDigitized, Tag.OffsetTime)),
)
XMP_NAMESPACES = {
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
}
XMP_DATE_PROPERTIES = tuple(
    f"{{{XMP_NAMESPACES[prefix]}}}{name}"
    for prefix, name in (("photoshop", "DateCreated"), ("exif", "DateTimeOriginal"), ("xmp", "CreateDate"))
)
XMP_USER_COMMENT = f"{{{XMP_NAMESPACES['exif']}}}UserComment"
APPLE_MAKER_NOTE_SIGNATURE = b"Apple iOS\x00"
APPLE_CONTENT_IDENTIFIER_TAG = 0x0011  # equals the Live Photo video's content.identifier

DATE_TEXT = re.compile(
    r"(\d{4})[:-](\d{2})[:-](\d{2})"
    r"(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"\s*(Z|(?:GMT|UTC)?[+-]\d{2}:?\d{2}|GMT|UTC)?"   # Apple Vision Pro writes "GMT+02:00"
)
OFFSET_TEXT = re.compile(r"(?:GMT|UTC)?([+-])(\d{2}):?(\d{2})")
UUID_TEXT = re.compile(r"[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}")

EPOCH_MS_IN_NAME = re.compile(r"mmexport(\d{13})(?!\d)", re.IGNORECASE)
DATETIME_IN_NAME = re.compile(
    r"(?<!\d)((?:19|20)\d{2})([-_]?)(\d{2})\2(\d{2})"  # date, one separator style throughout
    r"(?:[-_ T]|\sat\s)?(\d{2})[-_.]?(\d{2})[-_.]?(\d{2})"  # time ("at" is macOS's form)
    r"(?:[-_.]?(\d{3}))?(?!\d)"  # optional milliseconds (Pixel, Android screenshots)
)
WHATSAPP_DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2})(\d{2})(\d{2})-WA\d", re.IGNORECASE)


@dataclass(frozen=True)
class EmbeddedMetadata:
    """What a file says about itself; taken_local is wall-clock time, valid only with its offset."""

    taken_local: datetime | None
    utc_offset_minutes: int | None
    latitude: float | None
    longitude: float | None
    altitude: float | None
    camera_make: str | None
    camera_model: str | None
    lens_model: str | None
    software: str | None
    exif_orientation: int | None
    screenshot: bool
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CaptureTime:
    """The chosen capture instant (UTC); `source` tells callers how far to trust it."""

    instant: datetime
    utc_offset_minutes: int | None
    source: str


def read_embedded_metadata(image: Image.Image) -> EmbeddedMetadata:
    """Read EXIF and XMP from an opened image. Never raises on bad metadata.

    A PNG whose EXIF is not ahead of the pixel data gets decoded by Pillow to reach its later
    chunks, which is why the XMP is read only after the EXIF.
    """
    tags, gps, byte_order = _exif_tables(image)
    xmp = _xmp_properties(image.info.get("xmp") or image.info.get("XML:com.adobe.xmp"))
    taken_local, offset = _capture_date(tags, xmp)
    latitude, longitude = _gps_position(gps)
    comments = (xmp.get(XMP_USER_COMMENT), _exif_user_comment(tags.get(Tag.UserComment), byte_order))
    content_identifier = _apple_content_identifier(tags.get(Tag.MakerNote))
    return EmbeddedMetadata(
        taken_local=taken_local,
        utc_offset_minutes=offset,
        latitude=latitude,
        longitude=longitude,
        altitude=_gps_altitude(gps),
        camera_make=_clean_text(tags.get(Tag.Make)),
        camera_model=_clean_text(tags.get(Tag.Model)),
        lens_model=_clean_text(tags.get(Tag.LensModel)),
        software=_clean_text(tags.get(Tag.Software)),
        exif_orientation=_orientation(image.info.get("original_orientation"))
        or _orientation(tags.get(Tag.Orientation)),
        screenshot=any(c is not None and c.casefold() == "screenshot" for c in comments),
        extra={"content_identifier": content_identifier} if content_identifier else {},
    )


def date_from_filename(name: str) -> datetime | None:
    """Naive capture time from a camera or app file name (directories are ignored).

    `mmexport<epoch ms>` (WeChat) names an instant, returned as naive UTC; WhatsApp's
    `IMG-YYYYMMDD-WA0003` has only a date, returned as midnight.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if match := EPOCH_MS_IN_NAME.search(base):
        return (UNIX_EPOCH + timedelta(milliseconds=int(match[1]))).replace(tzinfo=None)
    if match := DATETIME_IN_NAME.search(base):
        year, _, month, day, hour, minute, second, millis = match.groups()
        return _datetime_or_none(year, month, day, hour, minute, second, int(millis or 0) * 1000)
    if match := WHATSAPP_DATE_IN_NAME.search(base):
        return _datetime_or_none(*match.groups())
    return None


def resolve_capture_time(embedded: EmbeddedMetadata | None, *, sidecar_utc: datetime | None = None,
                         filename: str | None = None, mtime_ns: int | None = None) -> CaptureTime | None:
    """Pick the capture instant: sidecar, then embedded date, then file name, then mtime.

    The Takeout sidecar wins because it carries the user's date edits; a wall-clock time with no
    known offset is read as UTC and reported with an unknown offset. Implausible candidates fall
    through to the next source.
    """
    local = embedded.taken_local if embedded else None
    known_offset = _sane_offset(embedded.utc_offset_minutes) if embedded else None
    if sidecar_utc is not None:
        instant = _as_utc(sidecar_utc)
        if _plausible(instant):
            offset = known_offset if known_offset is not None else _offset_between(local, instant)
            return CaptureTime(instant, offset, "sidecar")
    if local is not None and _plausible(local):
        instant = (local - timedelta(minutes=known_offset or 0)).replace(tzinfo=timezone.utc)
        if _plausible(instant):
            return CaptureTime(instant, known_offset, "exif")
    named = date_from_filename(filename) if filename else None
    if named is not None and _plausible(named):
        return CaptureTime(named.replace(tzinfo=timezone.utc), None, "filename")
    if mtime_ns is not None:
        try:
            instant = UNIX_EPOCH + timedelta(microseconds=mtime_ns // 1000)
        except OverflowError:
            return None
        if _plausible(instant):
            return CaptureTime(instant, None, "mtime")
    return None


def _plausible(moment: datetime) -> bool:
    """Placeholders (year 9999, 1800) and clocks set far ahead are not capture dates."""
    return EARLIEST_PLAUSIBLE <= _as_utc(moment) <= datetime.now(timezone.utc) + timedelta(days=1)


def _as_utc(moment: datetime) -> datetime:
    """Aware datetimes converted to UTC; naive ones are wall-clock times read as UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _offset_between(local: datetime | None, instant: datetime) -> int | None:
    """The zone implied by a camera wall clock and a UTC instant, to the nearest 15 minutes."""
    if local is None:
        return None
    minutes = (local - instant.replace(tzinfo=None)).total_seconds() / 60
    rounded = 15 * round(minutes / 15)
    return rounded if abs(rounded) <= MAX_INFERRED_OFFSET_MINUTES else None


def _sane_offset(minutes: int | None) -> int | None:
    return minutes if minutes is not None and abs(minutes) <= MAX_UTC_OFFSET_MINUTES else None


def _exif_tables(image: Image.Image) -> tuple[dict, dict, str | None]:
    """IFD0 merged with the Exif IFD, the GPS IFD, and the byte order; empty when unreadable."""
    try:
        exif = image.getexif()
        tags = {**exif, **exif.get_ifd(ExifTags.IFD.Exif)}
        return tags, dict(exif.get_ifd(ExifTags.IFD.GPSInfo)), exif.endian
    except Exception:  # Pillow raises many error types on corrupt files; metadata must not stop indexing
        return {}, {}, None


def _xmp_properties(packet: bytes | str | None) -> dict[str, str]:
    """The wanted XMP values, whether written as attributes or as elements (rdf:Alt gives its first item)."""
    if isinstance(packet, str):
        packet = packet.encode("utf-8")
    if not isinstance(packet, bytes) or b"<!DOCTYPE" in packet:  # XMP has no DTD; refuse entity tricks
        return {}
    root = _parse_xmp(packet.strip(b"\x00 \t\r\n"))
    if root is None:
        return {}
    wanted = (*XMP_DATE_PROPERTIES, XMP_USER_COMMENT)
    values: dict[str, str] = {}
    for element in root.iter():
        for name, value in element.attrib.items():
            if name in wanted:
                values.setdefault(name, value.strip())
        if element.tag in wanted:
            values.setdefault(element.tag, next((t.strip() for t in element.itertext() if t.strip()), ""))
    return values


_XMP_ENDS = (b"</x:xmpmeta>", b"</x:xapmeta>", b"</rdf:RDF>")


def _parse_xmp(packet: bytes) -> ElementTree.Element | None:
    """The packet's XML; writers that leave bytes after the packet's end (padding, a second packet,
    garbage after ``<?xpacket end="r"?>``) get parsed up to the end of their metadata element."""
    try:
        return ElementTree.fromstring(packet)
    except ElementTree.ParseError:
        pass
    for end_tag in _XMP_ENDS:
        end = packet.find(end_tag)
        if end >= 0:
            try:
                return ElementTree.fromstring(packet[:end + len(end_tag)])
            except ElementTree.ParseError:
                continue
    return None


def _capture_date(tags: dict, xmp: dict[str, str]) -> tuple[datetime | None, int | None]:
    """Wall-clock capture time and its offset from EXIF, else from the XMP a screenshot carries."""
    for date_tag, subsec_tag, offset_tags in EXIF_DATE_TAGS:
        parsed = _parse_date(tags.get(date_tag))
        if parsed is None or not _plausible(parsed[0]):
            continue
        local, inline_offset = parsed
        subsec = _clean_text(tags.get(subsec_tag))
        if subsec and subsec.isascii() and subsec.isdigit():
            local = local.replace(microsecond=int(subsec[:6].ljust(6, "0")))
        offsets = (_parse_offset(tags.get(tag)) for tag in offset_tags)
        return local, next((o for o in offsets if o is not None), inline_offset)
    for prop in XMP_DATE_PROPERTIES:
        parsed = _parse_date(xmp.get(prop))
        if parsed is not None and _plausible(parsed[0]):
            return parsed
    return None, None


def _parse_date(value: object) -> tuple[datetime, int | None] | None:
    """EXIF ("2020:12:22 09:41:54") or XMP ("2020-12-22T09:41:54.5+01:00") text -> (naive, offset)."""
    match = DATE_TEXT.fullmatch(_clean_text(value) or "")
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    local = _datetime_or_none(year, month, day, hour or 0, minute or 0, second or 0,
                              (fraction or "0")[:6].ljust(6, "0"))
    return None if local is None else (local, _parse_offset(offset))


def _datetime_or_none(*parts: str | int) -> datetime | None:
    """Impossible dates (month 13, 30 February, hour 25, year 0) mean the text is not a date."""
    try:
        return datetime(*map(int, parts))
    except ValueError:
        return None


def _parse_offset(value: object) -> int | None:
    """EXIF/XMP offset text ("+01:00" is 60) in minutes; blank, "   :  " or out of range is unknown."""
    text = _clean_text(value)
    if text in ("Z", "GMT", "UTC"):
        return 0
    match = OFFSET_TEXT.fullmatch(text or "")
    if match is None or int(match[3]) >= 60:
        return None
    minutes = int(match[2]) * 60 + int(match[3])
    return _sane_offset(-minutes if match[1] == "-" else minutes)


def _clean_text(value: object) -> str | None:
    """EXIF strings are C strings: cut at the first NUL, trim, and treat empty as missing."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    return value.split("\x00", 1)[0].strip() or None


def _exif_user_comment(value: object, byte_order: str | None) -> str | None:
    """UserComment starts with an 8-byte character-set code; UNICODE follows the EXIF byte order."""
    if not isinstance(value, bytes):
        return _clean_text(value)
    code, body = value[:8], value[8:]
    if code == b"UNICODE\x00":
        return _clean_text(body.decode("utf-16-be" if byte_order == ">" else "utf-16-le", "replace"))
    return _clean_text(body if code in (b"ASCII\x00\x00\x00", b"\x00" * 8) else value)


def _gps_position(gps: dict) -> tuple[float | None, float | None]:
    """Signed decimal degrees; out-of-range, half-missing or (0, 0) positions mean no location."""
    latitude = _degrees(gps.get(GPS.GPSLatitude))
    longitude = _degrees(gps.get(GPS.GPSLongitude))
    if latitude is None or longitude is None or latitude > 90 or longitude > 180:
        return None, None
    if latitude == 0 and longitude == 0:
        return None, None
    if _clean_text(gps.get(GPS.GPSLatitudeRef)) in ("S", "s"):
        latitude = -latitude
    if _clean_text(gps.get(GPS.GPSLongitudeRef)) in ("W", "w"):
        longitude = -longitude
    return latitude, longitude


def _degrees(value: object) -> float | None:
    """Degrees/minutes/seconds rationals -> degrees; zero denominators read as NaN and are rejected."""
    parts = value if isinstance(value, tuple) else (value,)
    if not 1 <= len(parts) <= 3:
        return None
    try:
        numbers = [float(part) for part in parts]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not all(math.isfinite(n) and n >= 0 for n in numbers):
        return None
    return sum(n / 60**i for i, n in enumerate(numbers))


def _gps_altitude(gps: dict) -> float | None:
    """Metres above sea level; GPSAltitudeRef 1 (read back as int or byte) means below."""
    try:
        altitude = float(gps[GPS.GPSAltitude])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if not math.isfinite(altitude):
        return None
    return -altitude if gps.get(GPS.GPSAltitudeRef) in (1, b"\x01") else altitude


def _orientation(value: object) -> int | None:
    return value if type(value) is int and 1 <= value <= 8 else None


def _apple_content_identifier(maker_note: object) -> str | None:
    """ContentIdentifier (tag 0x0011) from Apple's MakerNote: a TIFF-style IFD after a 14-byte header,
    offsets counted from the MakerNote start. It pairs a Live Photo still with its video."""
    if not isinstance(maker_note, bytes) or not maker_note.startswith(APPLE_MAKER_NOTE_SIGNATURE):
        return None
    order = {b"MM": ">", b"II": "<"}.get(maker_note[12:14])
    if order is None:
        return None
    try:
        (count,) = struct.unpack_from(order + "H", maker_note, 14)
        for index in range(count):
            entry_at = 16 + 12 * index
            tag, kind, length, offset = struct.unpack_from(order + "HHII", maker_note, entry_at)
            if tag == APPLE_CONTENT_IDENTIFIER_TAG and kind == 2:  # 2 = ASCII
                start = entry_at + 8 if length <= 4 else offset
                text = _clean_text(maker_note[start:start + length])
                return text if text and UUID_TEXT.fullmatch(text) else None
    except struct.error:
        return None
    return None


@dataclass
class ImageFacts:
    """What we know about an image's content; merged into an existing row by trust."""

    taken_at: datetime | None = None
    taken_at_source: str | None = None
    utc_offset_minutes: int | None = None
    latitude: float | None = None
    longitude: float | None = None
    gps_from_sidecar: bool = False
    camera_make: str | None = None
    camera_model: str | None = None
    description: str | None = None
    favorite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def image_facts(info: "SourceInfo", embedded: EmbeddedMetadata | None = None,
                capture: CaptureTime | None = None) -> ImageFacts:
    """What an image row records, from what the export says (``info``) and what the file says
    (``embedded``): a sidecar's place beats EXIF's, EXIF fills what the export lacks."""
    extra = dict(info.image_extra)
    if embedded is not None:
        extra.update(embedded.extra)
        extra.update({k: v for k, v in (("lens", embedded.lens_model), ("software", embedded.software)) if v})
        if embedded.screenshot:
            extra["screenshot"] = True
    gps_from_sidecar = info.latitude is not None
    latitude = info.latitude if gps_from_sidecar else (embedded.latitude if embedded else None)
    longitude = info.longitude if gps_from_sidecar else (embedded.longitude if embedded else None)
    if capture is None and info.sidecar_time is not None:
        capture = resolve_capture_time(None, sidecar_utc=info.sidecar_time)
    return ImageFacts(
        taken_at=capture.instant if capture else None,
        taken_at_source=capture.source if capture else None,
        utc_offset_minutes=capture.utc_offset_minutes if capture else None,
        latitude=latitude, longitude=longitude, gps_from_sidecar=gps_from_sidecar,
        camera_make=embedded.camera_make if embedded else None,
        camera_model=embedded.camera_model if embedded else None,
        description=info.description, favorite=info.favorite, extra=extra,
    )

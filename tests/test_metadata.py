"""indexer.metadata on images generated in memory, and the capture-time rules: sidecar, then the
embedded date, then the file name, then the file's mtime."""

from __future__ import annotations

import dataclasses
import io
import struct
from datetime import datetime, timedelta, timezone

import pillow_heif
import pytest
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo
from PIL.TiffImagePlugin import IFDRational

from indexer.metadata import (CaptureTime, EmbeddedMetadata, date_from_filename, read_embedded_metadata,
                              resolve_capture_time)

pillow_heif.register_heif_opener()

Tag = ExifTags.Base
GPS = ExifTags.GPS
UTC = timezone.utc
LIVE_PHOTO_ID = "5C8A1F3E-2B7D-4E9A-8C61-0F3D2A9B7E44"


def exif_block(ifd0=None, exif_ifd=None, gps=None, endian=None) -> bytes:
    exif = Image.Exif()
    exif.endian = endian
    exif.update(ifd0 or {})
    exif.get_ifd(ExifTags.IFD.Exif).update(exif_ifd or {})
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(gps or {})
    return exif.tobytes()


def reopened(image: Image.Image, image_format: str, **save_options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **save_options)
    buffer.seek(0)
    return Image.open(buffer)


def jpeg(size=(64, 32), **exif_parts) -> Image.Image:
    return reopened(Image.new("RGB", size, "white"), "JPEG", exif=exif_block(**exif_parts))


def read_jpeg(**exif_parts) -> EmbeddedMetadata:
    return read_embedded_metadata(jpeg(**exif_parts))


def png_with_xmp(xmp: str) -> Image.Image:
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    return reopened(Image.new("RGB", (39, 84)), "PNG", pnginfo=info)


def dms(*pairs: tuple[int, int]) -> tuple[IFDRational, ...]:
    return tuple(IFDRational(numerator, denominator) for numerator, denominator in pairs)


def apple_maker_note(content_identifier: str) -> bytes:
    """Header, one-entry big-endian IFD, next-IFD pointer, then the string at offset 32."""
    value = content_identifier.encode() + b"\x00"
    entry = struct.pack(">HHHII", 1, 0x0011, 2, len(value), 32)
    return b"Apple iOS\x00\x00\x01MM" + entry + b"\x00" * 4 + value


def embedded(taken_local=None, offset=None) -> EmbeddedMetadata:
    return EmbeddedMetadata(taken_local, offset, None, None, None, None, None, None, None, None, False, {})


NOTHING = embedded()

SCREENSHOT_XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 6.0.0">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
      xmlns:exif="http://ns.adobe.com/exif/1.0/">
   <photoshop:DateCreated>2023-04-03T10:17:42+02:00</photoshop:DateCreated>
   <exif:PixelXDimension>1170</exif:PixelXDimension>
   <exif:UserComment>Screenshot</exif:UserComment>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""

ATTRIBUTE_XMP = """<x:xmpmeta xmlns:x="adobe:ns:meta/">
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/"
    exif:DateTimeOriginal="2022-01-02T03:04:05.25Z">
 <exif:UserComment><rdf:Alt><rdf:li xml:lang="x-default">Screenshot</rdf:li></rdf:Alt></exif:UserComment>
</rdf:Description></rdf:RDF></x:xmpmeta>"""

CREATE_DATE_XMP = """<x:xmpmeta xmlns:x="adobe:ns:meta/">
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreateDate="2021-06-07T08:09"/>
</rdf:RDF></x:xmpmeta>"""


# --- reading embedded metadata ----------------------------------------------------------------------


def test_iphone_jpeg_gives_every_field():
    meta = read_jpeg(
        ifd0={Tag.Make: "Apple", Tag.Model: "iPhone 12 Pro", Tag.Software: "14.2.1", Tag.Orientation: 6,
              Tag.DateTime: "2023:01:01 00:00:00"},
        exif_ifd={Tag.DateTimeOriginal: "2020:12:22 09:41:54", Tag.SubsecTimeOriginal: "630",
                  Tag.OffsetTimeOriginal: "+01:00", Tag.LensModel: "iPhone 12 Pro back camera 4.2mm f/1.6",
                  Tag.MakerNote: apple_maker_note(LIVE_PHOTO_ID)},
        gps={GPS.GPSLatitudeRef: "S", GPS.GPSLatitude: dms((33, 1), (51, 1), (3540, 100)),
             GPS.GPSLongitudeRef: "E", GPS.GPSLongitude: dms((151, 1), (12, 1), (3060, 100)),
             GPS.GPSAltitudeRef: 0, GPS.GPSAltitude: IFDRational(105, 10)},
    )
    assert (round(meta.latitude, 4), round(meta.longitude, 4)) == (-33.8598, 151.2085)
    assert dataclasses.replace(meta, latitude=None, longitude=None) == EmbeddedMetadata(
        taken_local=datetime(2020, 12, 22, 9, 41, 54, 630000), utc_offset_minutes=60,
        latitude=None, longitude=None, altitude=10.5,
        camera_make="Apple", camera_model="iPhone 12 Pro", lens_model="iPhone 12 Pro back camera 4.2mm f/1.6",
        software="14.2.1", exif_orientation=6, screenshot=False, extra={"content_identifier": LIVE_PHOTO_ID},
    )


def test_heic_reports_original_orientation_and_comes_back_upright():
    exif = exif_block(ifd0={Tag.Orientation: 6},
                      exif_ifd={Tag.DateTimeOriginal: "2020:12:22 09:41:54", Tag.OffsetTimeOriginal: "+01:00"})
    image = reopened(Image.new("RGB", (64, 32)), "HEIF", exif=exif)
    assert image.size == (32, 64)  # libheif already rotated it: never rotate again
    assert image.getexif()[Tag.Orientation] == 1  # pillow-heif reset the tag ...
    meta = read_embedded_metadata(image)
    assert meta.exif_orientation == 6  # ... and the original value is what gets reported
    assert (meta.taken_local, meta.utc_offset_minutes) == (datetime(2020, 12, 22, 9, 41, 54), 60)
    assert resolve_capture_time(meta) == CaptureTime(datetime(2020, 12, 22, 8, 41, 54, tzinfo=UTC), 60, "exif")


def test_jpeg_orientation_is_reported_and_pixels_stay_as_stored():
    image = jpeg(ifd0={Tag.Orientation: 6})
    assert read_embedded_metadata(image).exif_orientation == 6
    assert image.size == (64, 32)


@pytest.mark.parametrize("xmp, taken_local, offset, screenshot", [
    (SCREENSHOT_XMP, datetime(2023, 4, 3, 10, 17, 42), 120, True),
    (ATTRIBUTE_XMP, datetime(2022, 1, 2, 3, 4, 5, 250000), 0, True),
    (CREATE_DATE_XMP, datetime(2021, 6, 7, 8, 9), None, False),
])
def test_png_dates_and_screenshot_flag_come_from_xmp(xmp, taken_local, offset, screenshot):
    meta = read_embedded_metadata(png_with_xmp(xmp))
    assert meta == dataclasses.replace(NOTHING, taken_local=taken_local, utc_offset_minutes=offset,
                                       screenshot=screenshot)


def test_png_screenshot_capture_time_is_its_xmp_date():
    meta = read_embedded_metadata(png_with_xmp(SCREENSHOT_XMP))
    assert resolve_capture_time(meta) == CaptureTime(datetime(2023, 4, 3, 8, 17, 42, tzinfo=UTC), 120, "exif")


def test_png_without_metadata_reads_as_nothing():
    assert read_embedded_metadata(reopened(Image.new("RGB", (16, 16)), "PNG")) == NOTHING


@pytest.mark.parametrize("tail", ['\x00\x00\x00', "\n<garbage from a .NET writer\x01\x02", "<?xpacket end='w'?>\n<x"])
def test_xmp_with_bytes_after_its_end_is_read_up_to_the_metadata(tail):
    """Seen in a real PNG from a metadata library's test set: bytes after `<?xpacket end="r"?>`
    made the XML parser refuse the whole packet, and every XMP field was lost."""
    meta = read_embedded_metadata(png_with_xmp(SCREENSHOT_XMP + tail))
    assert (meta.taken_local, meta.utc_offset_minutes, meta.screenshot) == (datetime(2023, 4, 3, 10, 17, 42), 120, True)


@pytest.mark.parametrize("written, taken_local, offset", [
    ("2024-04-22T14:38:09.526GMT+02:00", datetime(2024, 4, 22, 14, 38, 9, 526000), 120),   # Apple Vision Pro
    ("2024-04-22T14:38:09GMT-05:30", datetime(2024, 4, 22, 14, 38, 9), -330),
    ("2024-04-22T14:38:09 UTC+0100", datetime(2024, 4, 22, 14, 38, 9), 60),
    ("2024-04-22T14:38:09GMT", datetime(2024, 4, 22, 14, 38, 9), 0),
])
def test_xmp_dates_with_a_gmt_offset(written, taken_local, offset):
    meta = read_embedded_metadata(png_with_xmp(CREATE_DATE_XMP.replace("2021-06-07T08:09", written)))
    assert (meta.taken_local, meta.utc_offset_minutes) == (taken_local, offset)
    assert resolve_capture_time(meta).source == "exif"


@pytest.mark.parametrize("xmp", [
    SCREENSHOT_XMP.replace("</x:xmpmeta>", ""),  # not well-formed
    '<!DOCTYPE x [<!ENTITY s "Screenshot">]>' + SCREENSHOT_XMP.split("?>", 1)[1].replace(">Screenshot<", ">&s;<"),
])
def test_broken_or_dtd_carrying_xmp_is_ignored(xmp):
    assert read_embedded_metadata(png_with_xmp(xmp)) == NOTHING


@pytest.mark.parametrize("endian, comment", [
    (None, b"ASCII\x00\x00\x00Screenshot"),
    ("<", b"UNICODE\x00" + "Screenshot".encode("utf-16-le")),
    (">", b"UNICODE\x00" + "Screenshot".encode("utf-16-be")),
])
def test_exif_user_comment_marks_a_screenshot(endian, comment):
    assert read_jpeg(exif_ifd={Tag.UserComment: comment}, endian=endian).screenshot is True


def test_other_user_comment_is_not_a_screenshot():
    assert read_jpeg(exif_ifd={Tag.UserComment: b"ASCII\x00\x00\x00Holiday"}).screenshot is False


def test_date_falls_back_to_digitized_with_its_own_offset_and_never_to_modify_date():
    meta = read_jpeg(ifd0={Tag.DateTime: "2023:01:01 00:00:00"},
                     exif_ifd={Tag.DateTimeOriginal: "0000:00:00 00:00:00",
                               Tag.DateTimeDigitized: "2019:05:06 07:08:09", Tag.SubsecTimeDigitized: "5",
                               Tag.OffsetTimeDigitized: "-04:00"})
    assert (meta.taken_local, meta.utc_offset_minutes) == (datetime(2019, 5, 6, 7, 8, 9, 500000), -240)
    assert read_jpeg(ifd0={Tag.DateTime: "2023:01:01 00:00:00"}).taken_local is None


@pytest.mark.parametrize("date_text", ["0000:00:00 00:00:00", "9999:12:31 23:59:59", "1800:01:01 00:00:00",
                                       "2019:02:30 10:00:00", "    :  :     :  :  ", "", "yesterday"])
def test_garbage_date_original_reads_as_no_date(date_text):
    meta = read_jpeg(exif_ifd={Tag.DateTimeOriginal: date_text, Tag.OffsetTimeOriginal: "+01:00"})
    assert meta.taken_local is None and meta.utc_offset_minutes is None


@pytest.mark.parametrize("offset_text, minutes", [
    ("+01:00", 60), ("-05:30", -330), ("+0545", 345), ("Z", 0), ("+14:00", 840),
    ("   :  ", None), ("", None), ("+19:00", None), ("+01:60", None), ("GMT+1", None),
])
def test_offset_time_original(offset_text, minutes):
    meta = read_jpeg(exif_ifd={Tag.DateTimeOriginal: "2021:03:04 05:06:07", Tag.OffsetTimeOriginal: offset_text})
    assert meta.utc_offset_minutes == minutes


def test_blank_offset_time_original_falls_back_to_offset_time():
    meta = read_jpeg(exif_ifd={Tag.DateTimeOriginal: "2021:03:04 05:06:07", Tag.OffsetTimeOriginal: "   :  ",
                               Tag.OffsetTime: "+09:00"})
    assert meta.utc_offset_minutes == 540


@pytest.mark.parametrize("gps", [
    {GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: dms((48, 0), (51, 1), (0, 1)),
     GPS.GPSLongitudeRef: "E", GPS.GPSLongitude: dms((2, 1), (17, 1), (0, 1))},  # zero denominator
    {GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: dms((95, 1), (0, 1), (0, 1)),
     GPS.GPSLongitudeRef: "E", GPS.GPSLongitude: dms((2, 1), (17, 1), (0, 1))},  # latitude beyond 90
    {GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: dms((48, 1), (51, 1), (0, 1)),
     GPS.GPSLongitudeRef: "W", GPS.GPSLongitude: dms((181, 1), (0, 1), (0, 1))},  # longitude beyond 180
    {GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: dms((0, 1), (0, 1), (0, 1)),
     GPS.GPSLongitudeRef: "E", GPS.GPSLongitude: dms((0, 1), (0, 1), (0, 1))},  # (0, 0) means unknown
    {GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: dms((48, 1), (51, 1), (0, 1))},  # half a position
])
def test_unusable_gps_gives_no_position(gps):
    meta = read_jpeg(gps=gps)
    assert (meta.latitude, meta.longitude) == (None, None)


def test_west_longitude_and_below_sea_level_are_negative():
    meta = read_jpeg(gps={GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: dms((31, 1), (30, 1), (0, 1)),
                          GPS.GPSLongitudeRef: "W", GPS.GPSLongitude: dms((35, 1), (30, 1), (0, 1)),
                          GPS.GPSAltitudeRef: 1, GPS.GPSAltitude: IFDRational(430, 1)})
    assert (meta.latitude, meta.longitude, meta.altitude) == (31.5, -35.5, -430.0)


def test_camera_strings_are_cut_at_nul_and_blank_means_missing():
    meta = read_jpeg(ifd0={Tag.Make: "Canon\x00\x00\x00", Tag.Model: " Canon EOS 5D \x00junk",
                           Tag.Software: "\x00\x00  "})
    assert (meta.camera_make, meta.camera_model, meta.software) == ("Canon", "Canon EOS 5D", None)


@pytest.mark.parametrize("maker_note", [
    apple_maker_note("not-a-uuid"),
    apple_maker_note(LIVE_PHOTO_ID)[:30],  # truncated
    apple_maker_note(LIVE_PHOTO_ID).replace(b"Apple iOS", b"Nikon\x00iOS"),
])
def test_content_identifier_is_kept_only_when_it_reads_as_a_uuid(maker_note):
    assert read_jpeg(exif_ifd={Tag.MakerNote: maker_note}).extra == {}


def test_malformed_values_read_as_missing():
    meta = read_jpeg(ifd0={Tag.Orientation: 9},
                     exif_ifd={Tag.DateTimeOriginal: "2021:03:04 05:06:07", Tag.SubsecTimeOriginal: "abc"},
                     gps={GPS.GPSLatitude: dms((1, 1), (2, 1), (3, 1), (4, 1)),
                          GPS.GPSLongitude: IFDRational(5, 1), GPS.GPSAltitude: IFDRational(5, 0)})
    assert meta == dataclasses.replace(NOTHING, taken_local=datetime(2021, 3, 4, 5, 6, 7))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow warns, then returns what it could read
def test_corrupt_exif_block_reads_as_nothing():
    image = reopened(Image.new("RGB", (8, 8)), "JPEG", exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff")
    assert read_embedded_metadata(image) == NOTHING


# --- dates in file names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("IMG_20190101_123456.jpg", datetime(2019, 1, 1, 12, 34, 56)),
    ("PXL_20231006_063000139.jpg", datetime(2023, 10, 6, 6, 30, 0, 139000)),
    ("VID_20200505_101010.mp4", datetime(2020, 5, 5, 10, 10, 10)),
    ("Screenshot_20200301-161151.png", datetime(2020, 3, 1, 16, 11, 51)),
    ("Screenshot_2017-07-05-10-05-26.png", datetime(2017, 7, 5, 10, 5, 26)),
    ("Screenshot_2024-08-31-00-53-48-647_com.snapchat.jpg", datetime(2024, 8, 31, 0, 53, 48, 647000)),
    ("Screenshot 2023-05-01 at 14.22.10.png", datetime(2023, 5, 1, 14, 22, 10)),
    ("signal-2021-03-04-153012.jpg", datetime(2021, 3, 4, 15, 30, 12)),
    ("00000IMG_00000_BURST20190101123456_COVER.jpg", datetime(2019, 1, 1, 12, 34, 56)),
    ("2019_01_02_03_04_05.jpg", datetime(2019, 1, 2, 3, 4, 5)),
    ("20231227_152817.jpg", datetime(2023, 12, 27, 15, 28, 17)),
    ("IMG20240221145914~2.jpg", datetime(2024, 2, 21, 14, 59, 14)),
    ("IMG-20150125-WA0003.jpg", datetime(2015, 1, 25)),
    ("mmexport1501754071000.jpg", datetime(2017, 8, 3, 9, 54, 31)),
    ("QQ图片20190101123456.jpg", datetime(2019, 1, 1, 12, 34, 56)),
    ("Photos from 2019/IMG_20190101_123456.jpg", datetime(2019, 1, 1, 12, 34, 56)),
    ("C:\\Pic\\2024-07-01-10-00-00\\a9dc44d0eceba80d519ee270a715845f.png", None),
    ("IMG_20191301_123456.jpg", None),
    ("IMG_20190230_120000.jpg", None),
    ("IMG_20190101_250000.jpg", None),
    ("IMG-20150230-WA0001.jpg", None),
    ("IMG_1234.HEIC", None),
    ("D4439109D498DC8CA89FA94E2304C0C9.jpg", None),
    ("13039_327707840323_537645323_9470255_27214_n.jpg", None),
    ("820190615123045.jpg", None),  # a 15-digit number is an id, not a date
])
def test_date_from_filename(name, expected):
    assert date_from_filename(name) == expected


# --- choosing the capture time ----------------------------------------------------------------------------

TAKEOUT_INSTANT = datetime.fromtimestamp(1501754071, UTC)  # photoTakenTime "1501754071"


def test_sidecar_wins_and_keeps_the_embedded_offset():
    meta = embedded(datetime(2017, 8, 3, 12, 54, 31), offset=120)  # date moved by an hour in Google Photos
    assert resolve_capture_time(meta, sidecar_utc=TAKEOUT_INSTANT, filename="IMG_20010101_000000.jpg", mtime_ns=0) \
        == CaptureTime(datetime(2017, 8, 3, 9, 54, 31, tzinfo=UTC), 120, "sidecar")


def test_sidecar_instant_is_normalised_to_utc():
    tokyo = timezone(timedelta(hours=9))
    result = resolve_capture_time(None, sidecar_utc=datetime(2017, 8, 3, 18, 54, 31, tzinfo=tokyo))
    assert result == CaptureTime(datetime(2017, 8, 3, 9, 54, 31, tzinfo=UTC), None, "sidecar")
    assert result.instant.tzinfo is UTC  # equal instants in other zones compare equal, so check the zone


@pytest.mark.parametrize("taken_local, sidecar_utc, offset", [
    (datetime(2024, 7, 29, 4, 45, 7), datetime(2024, 7, 28, 19, 45, 7, tzinfo=UTC), 540),
    (datetime(2024, 7, 29, 1, 17, 7), datetime(2024, 7, 28, 19, 45, 7, tzinfo=UTC), 330),  # clock 2 min fast
    (datetime(2024, 7, 28, 7, 52, 0), datetime(2024, 7, 28, 19, 45, 7, tzinfo=UTC), -720),
    (datetime(2024, 7, 29, 10, 45, 7), datetime(2024, 7, 28, 19, 45, 7, tzinfo=UTC), None),  # 15 h: date edited
    (None, datetime(2024, 7, 28, 19, 45, 7, tzinfo=UTC), None),
])
def test_sidecar_offset_is_inferred_from_the_camera_clock(taken_local, sidecar_utc, offset):
    assert resolve_capture_time(embedded(taken_local), sidecar_utc=sidecar_utc) == \
        CaptureTime(sidecar_utc, offset, "sidecar")


def test_embedded_time_with_offset_is_converted_to_utc():
    meta = embedded(datetime(2020, 12, 22, 9, 41, 54), offset=60)
    assert resolve_capture_time(meta, filename="IMG_20010101_000000.jpg", mtime_ns=0) == \
        CaptureTime(datetime(2020, 12, 22, 8, 41, 54, tzinfo=UTC), 60, "exif")


@pytest.mark.parametrize("offset", [None, 19 * 60])
def test_embedded_time_without_a_sane_offset_is_read_as_utc_with_zone_unknown(offset):
    meta = embedded(datetime(2020, 12, 22, 9, 41, 54), offset=offset)
    assert resolve_capture_time(meta) == CaptureTime(datetime(2020, 12, 22, 9, 41, 54, tzinfo=UTC), None, "exif")


def test_filename_comes_before_mtime():
    assert resolve_capture_time(NOTHING, filename="PXL_20231006_063000139.jpg", mtime_ns=0) == \
        CaptureTime(datetime(2023, 10, 6, 6, 30, 0, 139000, tzinfo=UTC), None, "filename")


def test_qq_image_without_exif_is_dated_by_mtime():
    meta = read_embedded_metadata(reopened(Image.new("RGB", (16, 16)), "PNG"))
    assert resolve_capture_time(meta, filename="D4439109D498DC8CA89FA94E2304C0C9.png",
                                mtime_ns=1_700_000_000_123_456_789) == \
        CaptureTime(datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC), None, "mtime")


def test_nothing_known_gives_none():
    assert resolve_capture_time(None) is None
    assert resolve_capture_time(NOTHING, filename="IMG_1234.JPG") is None


def test_year_9999_in_exif_falls_through_to_the_file_name():
    meta = read_jpeg(exif_ifd={Tag.DateTimeOriginal: "9999:12:31 23:59:59"})
    assert resolve_capture_time(meta, filename="IMG_20190101_123456.jpg") == \
        CaptureTime(datetime(2019, 1, 1, 12, 34, 56, tzinfo=UTC), None, "filename")


def test_dates_before_1826_or_after_tomorrow_fall_through():
    now = datetime.now(UTC)
    local = datetime(2020, 12, 22, 9, 41, 54)
    exif_result = CaptureTime(local.replace(tzinfo=UTC), None, "exif")
    first_plausible = datetime(1826, 1, 1, tzinfo=UTC)
    assert resolve_capture_time(embedded(local), sidecar_utc=first_plausible).source == "sidecar"
    assert resolve_capture_time(embedded(local), sidecar_utc=first_plausible - timedelta(seconds=1)) == exif_result
    assert resolve_capture_time(embedded(local), sidecar_utc=now + timedelta(hours=23)).source == "sidecar"
    assert resolve_capture_time(embedded(local), sidecar_utc=now + timedelta(hours=25)) == exif_result
    assert resolve_capture_time(embedded(datetime(1825, 12, 31, 23, 59)), filename="IMG_20190101_123456.jpg") \
        .source == "filename"
    assert resolve_capture_time(embedded(datetime(1826, 1, 1, 0, 30), offset=60), mtime_ns=0).source == "mtime"
    assert resolve_capture_time(embedded(datetime.min, offset=60), mtime_ns=0).source == "mtime"
    future_name = f"IMG_{now + timedelta(days=2):%Y%m%d_%H%M%S}.jpg"
    assert resolve_capture_time(NOTHING, filename=future_name, mtime_ns=0) == \
        CaptureTime(datetime(1970, 1, 1, tzinfo=UTC), None, "mtime")
    two_days_ahead_ns = int((now + timedelta(days=2)).timestamp()) * 10**9
    assert resolve_capture_time(NOTHING, mtime_ns=two_days_ahead_ns) is None

"""Takeout sidecar matching by name: every naming case the matcher was written against, each as
one folder's file lists -> expected matches (each case stands on its own here; the ids keep that
case list's numbering: `rNN` a naming example, `cNN` a checklist item). A media name missing from
an expected dict must come back unmatched.
"""

import unicodedata

import pytest

from indexer.sources.takeout_match import (
    ALBUM_METADATA_NAMES, EDITED_SUFFIXES, NON_SIDECAR_JSON, SidecarMatch, is_photos_root,
    is_year_folder, match_sidecars, original_name, split_counter, utf16_clip,
)


def hit(sidecar, how="exact", confidence="high", derived_from=None):
    return SidecarMatch(sidecar, how, confidence, derived_from)


def one(case_id, media, sidecar, how="exact", confidence="high"):
    """A folder with one media file and one JSON that must pair up."""
    return pytest.param([media], [sidecar], {media: hit(sidecar, how, confidence)}, id=case_id)


BACKYARD = "Backyard_ceremony_wedding_photography_xxxxxxx_"  # 46 units: what clip46 leaves
ORIGINAL_P = "original_1d4caa6f-16c6-4c3d-901b-9387de10e528_"  # 46 units
EMOJI_23 = "😀😃😄😁😆😅😂🤣🥲☺️😊😇🙂🙃😉😌😍🥰😘😗😙😚😋"  # 23 emoji, 46 UTF-16 units
SHOT = "Screenshot_20231027_123303_Facebook"
PORTRAIT = "PXL_20220405_090123740.PORTRAIT"
NORMANDY = "IMG_20190101_123456_holiday_in_normandy_with_"
LONG_EXPOSURE = "PXL_20230809_203449253.LONG_EXPOSURE-02.ORIGIN"  # 46 units

CASES = [
    one("r01-old-naming-exact", "PXL_20211013_220651983.jpg", "PXL_20211013_220651983.jpg.json"),
    pytest.param(["PXL_20211013_220651958.jpg"], ["PXL_20211013_220651983.jpg.json"], {},
                 id="r02-other-item-no-match"),
    one("r03-c26-counter-moves-after-extension", "DSC_0101(1).JPG", "DSC_0101.JPG(1).json", "counter"),
    pytest.param(["DSC_0102(1).JPG"], ["DSC_0102.JPG(2).json"], {}, id="r04-c28-counters-differ"),
    pytest.param(["DSC_0103.JPG"], ["DSC_0103.JPG(1).json"], {}, id="r05-c27-json-counter-only"),
    # Decision for row 6: no match at all. A counter on the file must reappear in the sidecar
    # name, since `DSC_0104.JPG.json` belongs to `DSC_0104.JPG`; the forgotten-duplicate rule only
    # forgives a missing counter on a 46-unit (cut) sidecar name, as in row 18.
    pytest.param(["DSC_0104(1).JPG"], ["DSC_0104.JPG.json"], {}, id="r06-media-counter-only"),
    one("r07-counter-heic", "IMG_2710(1).HEIC", "IMG_2710.HEIC(1).json", "counter"),
    pytest.param(["IMG_3479.JPG", "IMG_3479(1).JPG", "IMG_3479(2).JPG"],
                 ["IMG_3479.JPG(2).json", "IMG_3479.JPG(1).json", "IMG_3479.JPG.json"],
                 {"IMG_3479.JPG": hit("IMG_3479.JPG.json"),
                  "IMG_3479(1).JPG": hit("IMG_3479.JPG(1).json", "counter"),
                  "IMG_3479(2).JPG": hit("IMG_3479.JPG(2).json", "counter")},
                 id="r08-three-duplicates-one-to-one"),
    pytest.param([f"image({n}).jpg" for n in range(11, 16)], [f"image.jpg({n}).json" for n in range(11, 16)],
                 {f"image({n}).jpg": hit(f"image.jpg({n}).json", "counter") for n in range(11, 16)},
                 id="r09-c29-two-digit-counters"),
    one("r10-c30-only-last-counter-moves",
        "img_(87).(vacation stuff).lol(87).jpg", "img_(87).(vacation stuff).lol.jpg(87).json", "counter"),
    one("r11-c31-spaced-counter-belongs-to-title",
        "Urlaub in Knaufspesch in der Schneifel (38).JPG",
        "Urlaub in Knaufspesch in der Schneifel (38).JP.json", "clipped"),
    one("r12-c34-cut-media-and-sidecar", f"{LONG_EXPOSURE}A.jpg", f"{LONG_EXPOSURE}.json", "clipped"),
    one("r13-c36-double-dot",
        "PXL_20230814_201154491.LONG_EXPOSURE-01.COVER.jpg",
        "PXL_20230814_201154491.LONG_EXPOSURE-01.COVER..json", "clipped"),
    one("r14-c37-cut-eats-extension",
        "05yqt21kruxwwlhhgrwrdyb6chhwszi9bqmzu16w0 2.jpg",
        "05yqt21kruxwwlhhgrwrdyb6chhwszi9bqmzu16w0 2.jp.json", "clipped"),
    one("r15-c39-emoji-counted-in-utf16", f"{EMOJI_23}😛.jpg", f"{EMOJI_23}.json", "clipped"),
    pytest.param([f"{BACKYARD}m.jpg", f"{BACKYARD}m(1).jpg", f"{BACKYARD}m(494).jpg"],
                 [f"{BACKYARD}.json", f"{BACKYARD}(1).json", f"{BACKYARD}(494).json"],
                 {f"{BACKYARD}m.jpg": hit(f"{BACKYARD}.json", "clipped"),
                  f"{BACKYARD}m(1).jpg": hit(f"{BACKYARD}(1).json", "counter"),
                  f"{BACKYARD}m(494).jpg": hit(f"{BACKYARD}(494).json", "counter")},
                 id="r16-cut-names-one-to-one-by-counter"),
    pytest.param([f"{BACKYARD}m(185).jpg"], [f"{BACKYARD}(494).json"], {}, id="r17-cut-name-wrong-counter"),
    pytest.param([f"{ORIGINAL_P}P.jpg", f"{ORIGINAL_P}P(1).jpg"], [f"{ORIGINAL_P}.json"],
                 {f"{ORIGINAL_P}P.jpg": hit(f"{ORIGINAL_P}.json", "clipped"),
                  f"{ORIGINAL_P}P(1).jpg": hit(f"{ORIGINAL_P}.json", "forgotten-duplicate", "low")},
                 id="r18-c41-forgotten-duplicate-is-low"),
    one("r19-c38-counter-after-cut-extension",
        "13039_327707840323_537645323_9470255_27214_n(1).jpg",
        "13039_327707840323_537645323_9470255_27214_n.j(1).json", "counter"),
    one("r20-new-naming", "20161105_170829.jpg", "20161105_170829.jpg.supplemental-metadata.json"),
    pytest.param([f"{SHOT}.jpg", f"{SHOT}(1).jpg", f"{SHOT}-edited.jpg"],
                 [f"{SHOT}.jpg.supple.json", f"{SHOT}.jpg.supple(1).json"],
                 {f"{SHOT}.jpg": hit(f"{SHOT}.jpg.supple.json"),
                  f"{SHOT}(1).jpg": hit(f"{SHOT}.jpg.supple(1).json", "counter"),
                  f"{SHOT}-edited.jpg": hit(f"{SHOT}.jpg.supple.json", "edited", derived_from=f"{SHOT}.jpg")},
                 id="r21-c24-cut-suffix-with-counter-and-edit"),
    one("r22-c17-supplemental-metadat",
        "MVIMG_20191230_232926.jpg", "MVIMG_20191230_232926.jpg.supplemental-metadat.json"),
    one("r23-c18-supplemental-me",
        "Screenshot_20200301-161151.png", "Screenshot_20200301-161151.png.supplemental-me.json"),
    one("r24-c45-tilde-is-not-a-counter",
        "MVIMG_20200207_134534~2.jpg", "MVIMG_20200207_134534~2.jpg.supplemental-metad.json"),
    one("r25-new-naming-counter", "Scan35(1).jpg", "Scan35.jpg.supplemental-metadata(1).json", "counter"),
    one("r26-c25-counter-ten", "CLIP0001(10).AVI", "CLIP0001.AVI.supplemental-metadata(10).json", "counter"),
    one("r27-edited-without-original",
        "IMAG0061-edited.JPG", "IMAG0061.JPG.supplemental-metadata.json", "edited"),
    one("r28-edited-tilde",
        "IMG-20230325-WA0122~2-edited.jpg", "IMG-20230325-WA0122~2.jpg.supplemental-metadat.json", "edited"),
    one("r29-c51-edited-title-without-extension",
        "2234089303984509579-edited.jpg", "2234089303984509579.supplemental-metadata.json", "edited"),
    one("r30-c42-suffix-gone-at-46",
        "Screenshot_2024-08-31-00-53-48-647_com.snapchat.jpg",
        "Screenshot_2024-08-31-00-53-48-647_com.snapcha.json", "clipped"),
    one("r31-uncut-51-unit-media",
        "Screenshot_20220207_102421_com.snapchat.android.jpg",
        "Screenshot_20220207_102421_com.snapchat.androi.json", "clipped"),
    one("r32-c19-supplementa",
        "Screenshot_2017-07-05-10-05-26.png", "Screenshot_2017-07-05-10-05-26.png.supplementa.json"),
    one("r33-c20-supp",
        "D7157814-D2D5-4A62-AFCE-9CF465CB7D66.jpeg", "D7157814-D2D5-4A62-AFCE-9CF465CB7D66.jpeg.supp.json"),
    one("r34-c21-suppl",
        "0bca7b90-299e-4000-b29a-d97037b18456.jpg", "0bca7b90-299e-4000-b29a-d97037b18456.jpg.suppl.json"),
    one("r35-c22-only-the-dot-left",
        "IMG_20190101_123456_holiday_in_normandy_x.jpg",
        "IMG_20190101_123456_holiday_in_normandy_x.jpg..json"),
    one("r36-c35-cut-media-name", f"{NORMANDY}fa.jpg", f"{NORMANDY}f.json", "clipped"),
    one("r37-counter-on-cut-name",
        "VID_20200615_181520_birthday_party_at_grandmas_(1).mp4",
        "VID_20200615_181520_birthday_party_at_grandmas(1).json", "counter"),
    pytest.param([f"{PORTRAIT}-modifié.jpg", f"{PORTRAIT}.jpg"], [f"{PORTRAIT}.jpg.json"],
                 {f"{PORTRAIT}.jpg": hit(f"{PORTRAIT}.jpg.json"),
                  f"{PORTRAIT}-modifié.jpg":
                      hit(f"{PORTRAIT}.jpg.json", "edited", derived_from=f"{PORTRAIT}.jpg")},
                 id="r38-c47-edited-copy-is-derived"),
    pytest.param(["PXL_20220405_090123741.PORTRAIT-modifié.jpg"], [f"{PORTRAIT}.jpg.json"], {},
                 id="r39-c49-edited-of-other-item"),
    # Decision for rows 40/41: the "(1)" edited copy matches, but at low confidence. It is derived,
    # so sharing cannot hurt another file, and its date is the original's.
    pytest.param(["IMG-20150125-WA0003-modifié.jpg", "IMG-20150125-WA0003-modifié(1).jpg"],
                 ["IMG-20150125-WA0003.jpg.json"],
                 {"IMG-20150125-WA0003-modifié.jpg": hit("IMG-20150125-WA0003.jpg.json", "edited"),
                  "IMG-20150125-WA0003-modifié(1).jpg": hit("IMG-20150125-WA0003.jpg.json", "edited", "low")},
                 id="r40-edited-counter-falls-back-low"),
    pytest.param(["simple_file_20200101-edited.jpg", "simple_file_20200101-edited(1).jpg"],
                 ["simple_file_20200101.jpg.json"],
                 {"simple_file_20200101-edited.jpg": hit("simple_file_20200101.jpg.json", "edited"),
                  "simple_file_20200101-edited(1).jpg":
                      hit("simple_file_20200101.jpg.json", "edited", "low")},
                 id="r41-edited-counter-falls-back-low"),
    pytest.param(["image-edited.jpg"], ["image.jpg.json", "image-edited.jpg.json"],
                 {"image-edited.jpg": hit("image-edited.jpg.json")},
                 id="r42-c50-exact-beats-suffix-stripping"),
    one("r43-c43-extension-added-by-google", "2013-08-22.png", "2013-08-22.json", "no-extension"),
    one("r44-sanitised-title", "27_06_12 - 1.mov", "27_06_12 - 1.mov.json"),
    one("r45-c33-case-insensitive", "IMG_4081(1).jpg", "IMG_4081.JPG(1).json", "counter"),
    one("r46-c32-counter-left-in-place", "skytree (2).jpg", "skytree (2).jpg.supplemental-metadata.json"),
    one("r47-c52-collage-own-sidecar",
        "DSC_0245-COLLAGE(1).jpg", "DSC_0245-COLLAGE.jpg.supplemental-metadata(1).json", "counter"),
    pytest.param(["PXL_20231118_035751175.MP.jpg", "PXL_20231118_035751175.MP"],
                 ["PXL_20231118_035751175.MP.jpg.json"],
                 {"PXL_20231118_035751175.MP.jpg": hit("PXL_20231118_035751175.MP.jpg.json"),
                  "PXL_20231118_035751175.MP": hit("PXL_20231118_035751175.MP.jpg.json", "motion-part",
                                                   derived_from="PXL_20231118_035751175.MP.jpg")},
                 id="r48-c55-mp-motion-part"),
    one("r49-mp-tilde-still", "PXL_20210102_221126856.MP~2.jpg", "PXL_20210102_221126856.MP~2.jpg.json"),
    pytest.param(["MVIMG_20180418_113218.jpg", "MVIMG_20180418_113218"], ["MVIMG_20180418_113218.jpg.json"],
                 {"MVIMG_20180418_113218.jpg": hit("MVIMG_20180418_113218.jpg.json"),
                  "MVIMG_20180418_113218": hit("MVIMG_20180418_113218.jpg.json", "motion-part",
                                               derived_from="MVIMG_20180418_113218.jpg")},
                 id="r50-c56-extensionless-motion-part"),
    pytest.param(["IMG_4573.HEIC", "IMG_4573.MP4"], ["IMG_4573.HEIC.json"],
                 {"IMG_4573.HEIC": hit("IMG_4573.HEIC.json"),
                  "IMG_4573.MP4": hit("IMG_4573.HEIC.json", "live-photo", derived_from="IMG_4573.HEIC")},
                 id="r51-c53-live-photo-video-inherits"),
    one("r52-c54-video-own-sidecar", "IMG_2367.MP4", "IMG_2367.MP4.supplemental-metadata.json"),
    pytest.param(["IMG_2367.HEIC", "IMG_2367.MP4"],
                 ["IMG_2367.HEIC.json", "IMG_2367.MP4.supplemental-metadata.json"],
                 {"IMG_2367.HEIC": hit("IMG_2367.HEIC.json"),
                  "IMG_2367.MP4": hit("IMG_2367.MP4.supplemental-metadata.json")},
                 id="r52-c54-video-own-sidecar-beats-live-photo"),
    pytest.param(["Metadaten", "métadonnées", "print-subscriptions", "shared_album_comments"],
                 ["Metadaten.json", unicodedata.normalize("NFD", "métadonnées.json"),
                  "print-subscriptions.json", "shared_album_comments.json"], {},
                 id="r54-r60-c11-album-and-other-json-are-no-sidecars"),
    one("c14-old-naming", "IMG_1234.HEIC", "IMG_1234.HEIC.json"),
    one("c15-new-naming", "IMG_1234.HEIC", "IMG_1234.HEIC.supplemental-metadata.json"),
    pytest.param(["photo.jpg"], ["photo.jpg.json", "photo.jpg.supplemental-metadata.json"],
                 {"photo.jpg": hit("photo.jpg.supplemental-metadata.json")},
                 id="c16-both-namings-newest-wins-other-left-over"),
    pytest.param(["Scan35(1).jpg"],
                 ["Scan35.jpg.supplemental-metadata.json", "Scan35.jpg.supplemental-metadata(1).json"],
                 {"Scan35(1).jpg": hit("Scan35.jpg.supplemental-metadata(1).json", "counter")},
                 id="c23-counter-sidecar-not-the-plain-one"),
    pytest.param([f"{BACKYARD}m(494).jpg"], [f"{BACKYARD}(1).json", f"{BACKYARD}(494).json"],
                 {f"{BACKYARD}m(494).jpg": hit(f"{BACKYARD}(494).json", "counter")},
                 id="c40-cut-name-takes-its-own-counter"),
    pytest.param(["IMAG0061-edited.JPG", "IMAG0061.JPG"], ["IMAG0061.JPG.supplemental-metadata.json"],
                 {"IMAG0061.JPG": hit("IMAG0061.JPG.supplemental-metadata.json"),
                  "IMAG0061-edited.JPG": hit("IMAG0061.JPG.supplemental-metadata.json", "edited",
                                             derived_from="IMAG0061.JPG")},
                 id="c46-edited-flagged-as-copy-of-original"),
    one("c48-german-edited-suffix",
        "IMG-20150125-WA0003-bearbeitet.jpg", "IMG-20150125-WA0003.jpg.json", "edited"),
]

MORE_CASES = [
    pytest.param([unicodedata.normalize("NFD", "Gdańsk.JPG")], ["gdańsk.jpg.json"],
                 {unicodedata.normalize("NFD", "Gdańsk.JPG"): hit("gdańsk.jpg.json")},
                 id="nfd-and-case-compared-folded-returned-as-given"),
    pytest.param(["Gdańsk.jpg", unicodedata.normalize("NFD", "Gdańsk.jpg")], ["Gdańsk.jpg.json"],
                 {"Gdańsk.jpg": hit("Gdańsk.jpg.json"),
                  unicodedata.normalize("NFD", "Gdańsk.jpg"): hit("Gdańsk.jpg.json")},
                 id="same-file-spelled-twice-across-parts"),
    one("edited-suffix-cut-off-by-47-unit-stem",
        "IMG_20200101_120000_vacaciones_en_la_pla-ha edi.jpg",
        "IMG_20200101_120000_vacaciones_en_la_pla.jpg.s.json", "edited"),
    pytest.param(["foto-ha edi.jpg"], ["foto.jpg.json"], {}, id="cut-off-suffix-ignored-on-short-stem"),
    pytest.param(["IMG_5(1).jpg", "IMG_5-edited(1).jpg", "IMG_5.jpg"],
                 ["IMG_5.jpg.json", "IMG_5.jpg(1).json"],
                 {"IMG_5.jpg": hit("IMG_5.jpg.json"),
                  "IMG_5(1).jpg": hit("IMG_5.jpg(1).json", "counter"),
                  "IMG_5-edited(1).jpg": hit("IMG_5.jpg(1).json", "edited", derived_from="IMG_5(1).jpg")},
                 id="edited-counter-first-tries-counted-sidecar"),
    # Stem of 46 units: the edited copy's 47-unit stem ends in a bare "-" and clips to the same
    # sidecar name; the original must still own it, although "-" sorts before ".".
    pytest.param([f"{LONG_EXPOSURE}-.jpg", f"{LONG_EXPOSURE}.jpg"], [f"{LONG_EXPOSURE}.json"],
                 {f"{LONG_EXPOSURE}.jpg": hit(f"{LONG_EXPOSURE}.json", "clipped"),
                  f"{LONG_EXPOSURE}-.jpg":
                      hit(f"{LONG_EXPOSURE}.json", "edited", derived_from=f"{LONG_EXPOSURE}.jpg")},
                 id="original-beats-its-edited-copy-to-a-shared-cut-name"),
    one("gpth-neo-counter-before-suffix",
        "IMG_2367(1).HEIC", "IMG_2367.HEIC(1).supplemental-metadata.json", "counter"),
    one("motion-part-without-its-still",
        "PXL_20210102_221126856.MP~2",
        "PXL_20210102_221126856.MP~2.jpg.supplemental-metadata.json", "motion-part"),
    one("forgotten-duplicate-alone-stays-low",
        f"{ORIGINAL_P}P(1).jpg", f"{ORIGINAL_P}.json", "forgotten-duplicate", "low"),
    pytest.param(["IMG_12.jpg"], ["IMG_1.json"], {}, id="short-json-base-is-no-forgotten-duplicate"),
    # Google Photos creations: their own sidecar when Google wrote one, else their source photo's,
    # marked as derived and low (as GPTH does; the suffixes are English in every export language).
    pytest.param(["IMG_1.jpg", "IMG_1-COLLAGE.jpg", "IMG_1-ANIMATION.gif", "IMG_1-EFFECTS(1).jpg",
                  "IMG_1-smile.jpg", "IMG_1-MIX.jpg", "IMG_1-MOTION.jpg"],
                 ["IMG_1.jpg.supplemental-metadata.json"],
                 {"IMG_1.jpg": hit("IMG_1.jpg.supplemental-metadata.json"),
                  **{name: hit("IMG_1.jpg.supplemental-metadata.json", "creation", "low", derived_from="IMG_1.jpg")
                     for name in ("IMG_1-COLLAGE.jpg", "IMG_1-ANIMATION.gif", "IMG_1-EFFECTS(1).jpg",
                                  "IMG_1-smile.jpg", "IMG_1-MIX.jpg", "IMG_1-MOTION.jpg")}},
                 id="creations-take-their-source-photos-sidecar"),
    pytest.param(["DSC_0245.jpg", "DSC_0245-COLLAGE.jpg"], ["DSC_0245.jpg.json", "DSC_0245-COLLAGE.jpg.json"],
                 {"DSC_0245.jpg": hit("DSC_0245.jpg.json"), "DSC_0245-COLLAGE.jpg": hit("DSC_0245-COLLAGE.jpg.json")},
                 id="a-creation-with-its-own-sidecar-keeps-it"),
    pytest.param(["IMG_9-COLLAGE.jpg", "IMG_9.jpg"], [], {}, id="a-creation-of-a-photo-without-sidecar-has-none"),
    pytest.param(["-COLLAGE.jpg", "holiday-mix.jpg"], ["holiday.jpg.json"], {},
                 id="no-source-photo-no-creation-match"),
]


@pytest.mark.parametrize(("media", "jsons", "expected"), CASES + MORE_CASES)
def test_match_sidecars(media, jsons, expected):
    assert match_sidecars(media, jsons) == expected


@pytest.mark.parametrize(("media", "jsons", "expected"), CASES + MORE_CASES)
def test_a_json_is_primary_for_at_most_one_file(media, jsons, expected):
    """Files spelled alike after NFC and case folding are one file (copies from two parts)."""
    holders = {}
    for name, match in match_sidecars(media[::-1], jsons).items():
        if match.confidence == "high" and match.how not in {"edited", "motion-part", "live-photo", "creation"}:
            holders.setdefault(match.sidecar, set()).add(unicodedata.normalize("NFC", name).casefold())
    assert all(len(files) == 1 for files in holders.values())


def test_result_does_not_depend_on_input_order():
    media = [f"{BACKYARD}m(494).jpg", f"{BACKYARD}m.jpg", f"{BACKYARD}m(1).jpg",
             f"{SHOT}-edited.jpg", f"{SHOT}.jpg"]
    jsons = [f"{BACKYARD}(1).json", f"{BACKYARD}(494).json", f"{BACKYARD}.json", f"{SHOT}.jpg.supple.json"]
    assert match_sidecars(media, jsons) == match_sidecars(media[::-1], jsons[::-1])


TITLED_MEDIA = f"{NORMANDY}fa.jpg"


@pytest.mark.parametrize(("media", "jsons", "titles", "expected"), [
    pytest.param([TITLED_MEDIA], ["holiday.json"], {"holiday.json": f"{NORMANDY}family.jpg"},
                 {TITLED_MEDIA: hit("holiday.json", "title")}, id="cut-name-found-by-title"),
    pytest.param([TITLED_MEDIA], ["holiday.json"], None, {}, id="no-titles-no-title-rule"),
    pytest.param(["27_06_12 - 1.mov"], ["x.json"], {"x.json": "27/06/12 - 1"},
                 {"27_06_12 - 1.mov": hit("x.json", "title")}, id="sanitised-extensionless-title"),
    pytest.param(["IMG_1.jpg"], ["a.json", "b.json"], {"a.json": "IMG_1.jpg", "b.json": "IMG_1.jpg"}, {},
                 id="ambiguous-titles-give-no-match"),
    pytest.param(["A.jpg", "B.jpg"], ["A.jpg.json"], {"A.jpg.json": "B.jpg"}, {"A.jpg": hit("A.jpg.json")},
                 id="title-rule-never-takes-a-held-json"),
    pytest.param(["IMG_4573.MP4"], ["x.json"], {"x.json": "IMG_4573.HEIC"}, {},
                 id="other-extension-does-not-fit"),
])
def test_title_rule(media, jsons, titles, expected):
    assert match_sidecars(media, jsons, titles) == expected


@pytest.mark.parametrize(("media_name", "title", "expected"), [
    pytest.param(f"{LONG_EXPOSURE}A.jpg", "PXL_20230809_203449253.LONG_EXPOSURE-02.ORIGINAL.jpg",
                 "PXL_20230809_203449253.LONG_EXPOSURE-02.ORIGINAL.jpg", id="r12-c34-full-name-from-title"),
    pytest.param(f"{NORMANDY}fa.jpg", f"{NORMANDY}family.jpg", f"{NORMANDY}family.jpg",
                 id="r36-c35-full-name"),
    pytest.param("27_06_12 - 1.mov", "27/06/12 - 1", "27_06_12 - 1.mov", id="r44-c44-slash-sanitised"),
    pytest.param("2013-08-22.png", "2013-08-22", "2013-08-22.png",
                 id="r43-extensionless-title-keeps-file-ext"),
    pytest.param("12_30 party.jpg", "12:30 party.jpg", "12_30 party.jpg", id="colon-sanitised"),
    pytest.param("IMG_4081(1).jpg", "IMG_4081.JPG", "IMG_4081.JPG", id="counter-dropped-title-case-kept"),
    pytest.param("IMG_4573.MP4", "IMG_4573.HEIC", "IMG_4573.MP4", id="live-video-keeps-own-name"),
    pytest.param("IMAG0061-edited.JPG", "IMAG0061.JPG", "IMAG0061-edited.JPG",
                 id="edited-copy-keeps-own-name"),
    pytest.param("IMG_1.jpg", "IMG_12.jpg", "IMG_1.jpg", id="short-name-needs-equal-stem"),
    pytest.param("IMG_1.jpg", None, "IMG_1.jpg", id="no-title"),
])
def test_original_name(media_name, title, expected):
    assert original_name(media_name, title) == expected


@pytest.mark.parametrize(("stem", "expected"), [
    ("IMG_3479(1)", ("IMG_3479", 1)),
    ("image(11)", ("image", 11)),
    ("img_(87).(vacation stuff).lol(87)", ("img_(87).(vacation stuff).lol", 87)),
    ("skytree (2)", ("skytree (2)", None)),
    ("MVIMG_20200207_134534~2", ("MVIMG_20200207_134534~2", None)),
    ("IMG(1)x", ("IMG(1)x", None)),
    ("(1)", ("(1)", None)),
])
def test_split_counter(stem, expected):
    assert split_counter(stem) == expected


@pytest.mark.parametrize(("text", "units", "expected"), [
    ("abcdef", 4, "abcd"),
    ("abc", 46, "abc"),
    ("a😀b", 2, "a"),
    ("a😀b", 3, "a😀"),
    (f"{EMOJI_23}😛", 46, EMOJI_23),
    (f"{EMOJI_23}😛", 47, EMOJI_23),
    (f"{EMOJI_23}😛", 48, f"{EMOJI_23}😛"),
])
def test_utf16_clip_never_splits_a_surrogate_pair(text, units, expected):
    assert utf16_clip(text, units) == expected


@pytest.mark.parametrize("name", ["Google Photos", "Google Fotos", "Google Foto", "Fotky Google",
                                  "Google Фото", "Google Снимки", "GOOGLE PHOTOS"])
def test_c05_photos_root(name):
    assert is_photos_root(name)


@pytest.mark.parametrize("name", ["Google Drive", "Takeout", "Photos", "Google Photos 2"])
def test_not_photos_root(name):
    assert not is_photos_root(name)


@pytest.mark.parametrize("name", ["Photos from 2023", "Fotos von 2023", "Photos de 2023", "Fotos de 2023",
                                  "Fotos del 2023", "Foto da 2002", "รูปภาพจาก 2023", "2005-02-05"])
def test_c06_year_folder(name):
    assert is_year_folder(name)


@pytest.mark.parametrize("name", ["Trip to Gdańsk", "1 anno fa", "Untitled(1)", "2023", "Photos from 23",
                                  "2005-13-05", "Photos from 2023 (1)"])
def test_not_year_folder(name):
    assert not is_year_folder(name)


def test_name_lists():
    assert {"metadata.json", "métadonnées.json", "metadaten.json", "метаданные.json"} <= ALBUM_METADATA_NAMES
    assert all(name == name.lower() for name in ALBUM_METADATA_NAMES | NON_SIDECAR_JSON)
    assert "user-generated-memory-titles.json" in NON_SIDECAR_JSON
    assert {"-edited", "-bearbeitet", "-modifié", "-ha editado", "-編集済み", "-editat"} <= set(EDITED_SUFFIXES)

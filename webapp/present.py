"""The core's results as people and scripts see them: the web app adds its own links (url_for),
and the detail page its wording (a file name as title, the time where the photo was taken, the
place as a name)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import url_for

from clipdex.places import map_url, nearest_place
from clipdex.search import Hit, Page


def hit_json(hit: Hit) -> dict[str, Any]:
    return {**hit.to_dict(), "name": os.path.basename(hit.path or "") or None,
            "thumbnail_url": url_for("pages.thumbnail", image_id=hit.id),
            "detail_url": url_for("pages.detail_page", image_id=hit.id)}


def page_json(page: Page) -> dict[str, Any]:
    return {**page.to_dict(), "results": [hit_json(h) for h in page.hits]}


def detail_json(detail: dict[str, Any]) -> dict[str, Any]:
    return {**detail, "thumbnail_url": url_for("pages.thumbnail", image_id=detail["id"]),
            "original_url": url_for("pages.original", image_id=detail["id"])}


def local_time(taken_at: str | datetime | None, offset_minutes: int | None) -> str | None:
    """'1 Jan 2019, 10:10 (UTC+1)' in the photo's own time zone when its offset is known; else the
    time as recorded, marked 'time zone unknown'."""
    if taken_at is None:
        return None
    moment = datetime.fromisoformat(taken_at) if isinstance(taken_at, str) else taken_at
    if offset_minutes is None:
        return f"{_when(moment.astimezone(timezone.utc))} (time zone unknown)"
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    hours, minutes = divmod(abs(offset_minutes), 60)
    zone = f"UTC{'+' if offset_minutes >= 0 else '-'}{hours}" + (f":{minutes:02d}" if minutes else "")
    return f"{_when(local)} ({'UTC' if offset_minutes == 0 else zone})"


def _when(moment: datetime) -> str:
    return f"{moment.day} {moment:%b %Y}, {moment:%H:%M}"


def detail_view(detail: dict[str, Any]) -> dict[str, Any]:
    """What the detail page shows beyond the stored fields."""
    extra = dict(detail.get("extra") or {})
    people = extra.pop("people", None)
    view = {
        "title": os.path.basename(detail.get("path") or "") or f"Photo {detail['id']}",
        "taken": local_time(detail.get("taken_at"), detail.get("utc_offset_minutes")),
        "people": people if isinstance(people, list) else [],
        "extra": extra,
        "place": None,
        "map_url": None,
    }
    latitude, longitude = detail.get("latitude"), detail.get("longitude")
    if latitude is not None and longitude is not None:
        view["place"] = str(nearest_place(latitude, longitude) or "")
        view["map_url"] = map_url(latitude, longitude)
    return view

"""The core's results as the JSON API shows them: the web app adds its own links (url_for)."""

from __future__ import annotations

from typing import Any

from flask import url_for

from clipdex.search import Hit, Page


def hit_json(hit: Hit) -> dict[str, Any]:
    return {**hit.to_dict(), "thumbnail_url": url_for("pages.thumbnail", image_id=hit.id),
            "detail_url": url_for("pages.detail_page", image_id=hit.id)}


def page_json(page: Page) -> dict[str, Any]:
    return {**page.to_dict(), "results": [hit_json(h) for h in page.hits]}


def detail_json(detail: dict[str, Any]) -> dict[str, Any]:
    return {**detail, "thumbnail_url": url_for("pages.thumbnail", image_id=detail["id"]),
            "original_url": url_for("pages.original", image_id=detail["id"])}

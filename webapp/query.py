"""Turns a search request (query string, form with uploads, or JSON body) into the core's terms.

Parameters, the same in every form:
  q=<text>        a text to look for (repeatable); `red car^2` gives it weight 2
  not=<text>      a text to steer away from (repeatable, weight 1 unless given)
  like=<id>       an indexed image to look like (repeatable, `123^0.5` for a weight)
  image=<file>    an uploaded image to look like (multipart, repeatable)
  limit=<n>       page size, 1..200 (default 40)
  cursor=<c>      the next page of an earlier search (all other parameters are ignored)
  and any filter of clipdex.search.Filters: taken_from, taken_to, source, album, min_width,
  min_height, orientation, format, camera_make, camera_model, has_gps, bbox, favorite, path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import Request

from clipdex.search import (DEFAULT_PAGE, MAX_PAGE, Filters, QueryError, QuerySpec, check_text, parse_like_term,
                            split_weight)

QUERY_NAMES = ("q", "not", "like", "limit", "cursor", "token")
MAX_TERMS = 16


@dataclass
class SearchRequest:
    spec: QuerySpec
    filters: Filters
    limit: int
    cursor: str | None


def _json_body(request: Request) -> Any:
    try:
        return json.loads(request.get_data(cache=True))
    except RecursionError:
        raise QueryError("the JSON body is nested too deeply") from None
    except ValueError:   # not JSON, or not UTF-8
        raise QueryError("the JSON body must be an object of parameters") from None


def _params(request: Request) -> dict[str, list[str]]:
    params = _raw_params(request)
    for name, values in params.items():
        check_text("parameter name", name)
        for value in values:
            check_text(name, value)
    return params


def _raw_params(request: Request) -> dict[str, list[str]]:
    if request.is_json:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise QueryError("the JSON body must be an object of parameters")
        params: dict[str, list[str]] = {}
        for key, value in body.items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, (dict, list)) for v in values):
                raise QueryError(f"{key}: expected text or numbers")
            params[str(key)] = ["" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
                                for v in values]
        return params
    params = {k: request.args.getlist(k) for k in request.args if k}
    for k in request.form:
        if k:  # a multipart part without a name has no parameter to be
            params.setdefault(k, []).extend(request.form.getlist(k))
    return params


def parse_search(request: Request, max_upload_bytes: int) -> SearchRequest:
    params = _params(request)
    cursor = (params.pop("cursor", None) or [None])[0] or None
    texts = [split_weight(t) for t in params.pop("q", []) if t.strip()]
    negatives = [split_weight(t) for t in params.pop("not", []) if t.strip()]
    likes = []
    for term in params.pop("like", []):
        if not term.strip():
            continue
        likes.append(parse_like_term(term))
    uploads = []
    for upload in request.files.getlist("image") if not request.is_json else []:
        data = upload.read(max_upload_bytes + 1)
        if not data:
            continue
        if len(data) > max_upload_bytes:
            raise QueryError(f"the uploaded image is larger than {max_upload_bytes / 2**20:.0f} MiB")
        uploads.append((data, 1.0))
    if len(texts) + len(negatives) + len(likes) + len(uploads) > MAX_TERMS:
        raise QueryError(f"at most {MAX_TERMS} texts and images in one search")
    for text, _ in texts + negatives:
        if len(text) > 1000:
            raise QueryError("a query text may have at most 1000 characters")
    limit_text = (params.pop("limit", None) or [str(DEFAULT_PAGE)])[0]
    try:
        limit = int(limit_text)
    except ValueError:
        raise QueryError(f"limit: expected a whole number, got {limit_text!r}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise QueryError(f"limit must be between 1 and {MAX_PAGE}")
    params.pop("token", None)
    filters = Filters.parse(params)
    return SearchRequest(QuerySpec(texts, negatives, likes, uploads), filters, limit, cursor)

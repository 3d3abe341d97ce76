"""HTTP flattened into the search core's plain parameters: a query string, a form (with uploaded
images) or a JSON object all become one :class:`SearchRequest`. Validation is the core's."""

from __future__ import annotations

import json
from typing import Any

from flask import Request

from clipdex.search import QueryError, SearchRequest


def _json_body(request: Request) -> Any:
    try:
        return json.loads(request.get_data(cache=True))
    except RecursionError:
        raise QueryError("the JSON body is nested too deeply") from None
    except ValueError:   # not JSON, or not UTF-8
        raise QueryError("the JSON body must be an object of parameters") from None


def _params(request: Request) -> dict[str, list[str]]:
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


def _uploads(request: Request, max_upload_bytes: int) -> list[bytes]:
    uploads = []
    for upload in request.files.getlist("image") if not request.is_json else []:
        data = upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise QueryError(f"the uploaded image is larger than {max_upload_bytes / 2**20:.0f} MiB")
        uploads.append(data)
    return uploads


def search_request(request: Request, max_upload_bytes: int) -> SearchRequest:
    return SearchRequest.parse(_params(request), _uploads(request, max_upload_bytes))

"""HTTP flattened into the search core's plain parameters: a query string, a form (with uploaded
images) or a JSON object all become one :class:`SearchRequest`. Validation is the core's.

Uploaded example images are also kept for a while (webapp/uploads.py) under a key that a later
request can give instead of the file (``upload=<key>``): the page puts it in its address.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from flask import Request

from clipdex.search import QueryError, SearchRequest
from webapp.uploads import KEY_LENGTH, UploadStore


class UploadGone(LookupError):
    """An upload key the server no longer keeps (HTTP 410)."""


@dataclass
class WebSearch:
    request: SearchRequest
    new_uploads: list[tuple[str, bytes]] = field(default_factory=list)   # (key, bytes) uploaded now


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


def search_request(request: Request, max_upload_bytes: int, store: UploadStore) -> WebSearch:
    params = _params(request)
    kept = []
    for key in params.pop("upload", []):
        if not re.fullmatch(rf"[0-9a-f]{{{KEY_LENGTH}}}", key):
            raise QueryError(f"upload: not a key this server handed out: {key[:40]!r}")
        data = store.get(key)
        if data is None:
            raise UploadGone("the example image is no longer kept on the server (uploads are kept for an hour, "
                             "in memory): drop it again")
        kept.append(data)
    new = [(store.put(data), data) for data in _uploads(request, max_upload_bytes)]
    return WebSearch(SearchRequest.parse(params, kept + [data for _, data in new]), new)

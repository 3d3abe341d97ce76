"""Access control: with an access token set, every request must carry it (header, or the cookie
that ``?token=`` sets once), and a few headers keep the page to itself."""

from __future__ import annotations

import hmac
import io
from urllib.parse import urlencode

from flask import Flask, Request, redirect, request

from clipdex.config import Settings

COOKIE = "clipdex_token"
OPEN_PATHS = ("/healthz",)


class InMemoryUploadRequest(Request):
    """Uploaded query images stay in memory (MAX_CONTENT_LENGTH caps them) and never touch disk:
    Werkzeug would otherwise spool uploads over 500 KiB to a temporary file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE) or request.args.get("token")


def install(app: Flask, settings: Settings) -> None:
    app.request_class = InMemoryUploadRequest
    token = settings.access_token

    @app.before_request
    def require_token():
        if token is None or request.path in OPEN_PATHS:
            return None
        presented = _presented_token()
        if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
            from webapp.errors import error_response

            return error_response(401, "An access token is required: open the link with ?token=… once.")
        if request.args.get("token") and request.method == "GET" and not request.path.startswith("/api/"):
            # Trade the token in the address for a cookie, and drop it from the address bar.
            query = urlencode([(k, v) for k, v in request.args.items(multi=True) if k != "token"])
            response = redirect(request.path + (f"?{query}" if query else ""))
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict",
                                secure=request.is_secure, max_age=90 * 24 * 3600)
            return response
        return None

    @app.after_request
    def headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'")
        return response

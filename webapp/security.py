"""Access control and a few headers that keep the page to itself.

- No access token (the default, loopback only): the server answers only to loopback host names
  (``localhost``, ``127.0.0.1``, ``[::1]``) and those in ``CLIPDEX_WEB_HOSTNAMES``. A web page the
  user visits cannot then point its own domain at 127.0.0.1 (DNS rebinding) and read the photos.
- A token: every request carries it, as ``Authorization: Bearer …`` or as the HttpOnly cookie the
  sign-in form sets. Never in the address, which ends up in logs and browser history.
"""

from __future__ import annotations

import hmac
import io
from urllib.parse import quote, urlsplit

from flask import Flask, Request, redirect, render_template, request

from clipdex.config import Settings

COOKIE = "clipdex_token"
OPEN_PATHS = ("/healthz", "/login")
OPEN_PREFIXES = ("/static/",)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
COOKIE_DAYS = 90


class InMemoryUploadRequest(Request):
    """Uploaded query images stay in memory (MAX_CONTENT_LENGTH caps them) and never touch disk:
    Werkzeug would otherwise spool uploads over 500 KiB to a temporary file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def host_name(host_header: str) -> str:
    """The name part of a Host header: no port, no IPv6 brackets, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def _matches(presented: str | None, token: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target if not urlsplit(target).netloc else "/"


def install(app: Flask, settings: Settings) -> None:
    app.request_class = InMemoryUploadRequest
    token = settings.access_token
    allowed_hosts = LOOPBACK_NAMES | {h.lower() for h in settings.web_hostnames}

    @app.before_request
    def check_host():
        if token is not None:
            return None
        name = host_name(request.host or "")
        if name in allowed_hosts or name.endswith(".localhost"):
            return None
        from webapp.errors import error_response

        return error_response(
            421, f"This clipdex answers only to localhost, not to {name[:100]!r}. To reach it under another "
                 "name, list that name in CLIPDEX_WEB_HOSTNAMES (or set CLIPDEX_ACCESS_TOKEN).")

    @app.before_request
    def require_token():
        if token is None or request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return None
        presented = _presented_token()
        if _matches(presented, token):
            return None
        from webapp.errors import error_response, wants_json

        if not wants_json() and request.method == "GET":
            target = request.full_path if request.query_string else request.path
            return redirect("/login?next=" + quote(target, safe=""), code=303)
        if presented is None:
            return error_response(401, "An access token is required: send it as `Authorization: Bearer <token>`, "
                                       "or sign in at /login.")
        return error_response(401, "Wrong access token.")

    @app.route("/login", methods=["GET", "POST"])
    def login():
        target = _safe_next(request.values.get("next"))
        if token is None:
            return redirect(target, code=303)
        if request.method == "GET":
            return render_template("login.html", next=target, wrong=False)
        if not _matches(request.form.get("token", ""), token):
            return render_template("login.html", next=target, wrong=True), 401
        response = redirect(target, code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                            max_age=COOKIE_DAYS * 24 * 3600)
        return response

    @app.after_request
    def headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'")
        return response

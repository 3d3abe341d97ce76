"""One error shape for the API (`{"error": {"status", "message"}}`), a plain page for humans, and
never a stack trace in a response."""

from __future__ import annotations

import logging

import psycopg
from flask import Flask, render_template, request
from werkzeug.exceptions import HTTPException

from clipdex.database import DatabaseError
from clipdex.model import ModelUnavailable
from clipdex.search import Conflict, NotFound, QueryError
from webapp.query import UploadGone

log = logging.getLogger(__name__)

MESSAGES = {
    404: "There is nothing at this address.",
    405: "This address does not accept that method.",
    413: "The upload is too large.",
}


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def error_response(status: int, message: str, field: str | None = None):
    """The error as JSON for the API and scripts ({"error": {status, message, field?}}), as a page
    for a browser. ``field`` names the request parameter at fault, so a form can point at it."""
    if wants_json():
        error = {"status": status, "message": message}
        if field:
            error["field"] = field
        return {"error": error}, status
    return render_template("error.html", status=status, message=message), status


def _too_large_message(app: Flask) -> str:
    """What was too large: the body, or (for a small body) the number or size of its form parts."""
    limit = app.config["CLIPDEX_SETTINGS"].upload_max_bytes
    length = request.content_length
    if length is None or length > app.config["MAX_CONTENT_LENGTH"]:
        return f"The upload is larger than {limit / 2**20:.0f} MiB."
    parts = request.max_form_parts
    return (f"The form has too many parts (at most {parts}) or a text field over "
            f"{request.max_form_memory_size // 1024} KiB; send fewer, smaller fields.")


def install(app: Flask) -> None:
    @app.errorhandler(QueryError)
    def bad_query(exc):
        return error_response(400, str(exc), field=exc.field)

    @app.errorhandler(NotFound)
    def not_found(exc):
        return error_response(404, str(exc))

    @app.errorhandler(Conflict)
    def conflict(exc):
        return error_response(409, str(exc))

    @app.errorhandler(UploadGone)
    def gone(exc):
        return error_response(410, str(exc), field="upload")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = MESSAGES.get(exc.code) or exc.description or exc.name
        if exc.code == 413:
            message = _too_large_message(app)
        return error_response(exc.code or 500, message)

    @app.errorhandler(ModelUnavailable)
    @app.errorhandler(DatabaseError)
    def unavailable(exc):
        log.error("service unavailable: %s", exc)
        return error_response(503, str(exc))

    @app.errorhandler(psycopg.OperationalError)
    def database_away(exc):
        # A restart or a network cut: say so at once; the pool reconnects when the server is back.
        log.error("database unavailable: %s", str(exc).strip())
        return error_response(503, "The database is not answering right now; try again in a moment.")

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "Something went wrong on the server; the details are in its log.")

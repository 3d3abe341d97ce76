"""One error shape for the API (`{"error": {"status", "message"}}`), a plain page for humans, and
never a stack trace in a response."""

from __future__ import annotations

import logging

from flask import Flask, render_template, request
from werkzeug.exceptions import HTTPException

from clipdex.database import DatabaseError
from clipdex.model import ModelUnavailable
from clipdex.search import NotFound, QueryError

log = logging.getLogger(__name__)

MESSAGES = {
    404: "There is nothing at this address.",
    405: "This address does not accept that method.",
    413: "The upload is too large.",
}


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def error_response(status: int, message: str):
    if wants_json():
        return {"error": {"status": status, "message": message}}, status
    return render_template("error.html", status=status, message=message), status


def install(app: Flask) -> None:
    @app.errorhandler(QueryError)
    def bad_query(exc):
        return error_response(400, str(exc))

    @app.errorhandler(NotFound)
    def not_found(exc):
        return error_response(404, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = MESSAGES.get(exc.code) or exc.description or exc.name
        if exc.code == 413:
            limit = app.config["CLIPDEX_SETTINGS"].upload_max_bytes
            message = f"The upload is larger than {limit / 2**20:.0f} MiB."
        return error_response(exc.code or 500, message)

    @app.errorhandler(ModelUnavailable)
    @app.errorhandler(DatabaseError)
    def unavailable(exc):
        log.error("service unavailable: %s", exc)
        return error_response(503, str(exc))

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "Something went wrong on the server; the details are in its log.")

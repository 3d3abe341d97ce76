"""The Flask web app: search page, detail and status pages, and the JSON API over the same core.

``create_app(settings)`` is the only way in: the settings object is all the app reads. The
database pool and the model are built on first use, in the process that serves requests.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from clipdex.config import Settings

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> "Flask":
    from flask import Flask   # here, not at import: `clipdex --help` finds `serve` through this package

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["CLIPDEX_SETTINGS"] = settings
    # Uploads beyond this are refused with 413 before they are read into memory.
    app.config["MAX_CONTENT_LENGTH"] = settings.upload_max_bytes + 64 * 1024
    app.json.sort_keys = False

    from webapp import api, errors, pages, runtime, security

    app.extensions["clipdex"] = runtime.AppRuntime(settings)
    security.install(app, settings)
    errors.install(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "model": app.extensions["clipdex"].model_state}

    return app

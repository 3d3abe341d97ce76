"""WSGI entry point for gunicorn: ``gunicorn 'webapp.wsgi:app'``.

Set CLIPDEX_WEB_HOST to the address gunicorn binds: on anything but loopback the app refuses to
start without CLIPDEX_ACCESS_TOKEN.
"""

from clipdex.config import Settings
from webapp import create_app
from webapp.server import check_exposure

settings = Settings.from_env()
check_exposure(settings)
app = create_app(settings)

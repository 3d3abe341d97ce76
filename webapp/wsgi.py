"""WSGI entry point for another server: ``waitress-serve webapp.wsgi:app``, or any WSGI server
behind a proxy that buffers requests (``clipdex serve`` does both for you).

Set CLIPDEX_WEB_HOST to the address the server binds: on anything but loopback the app refuses to
start without CLIPDEX_ACCESS_TOKEN.
"""

from clipdex.config import Settings
from webapp import create_app
from webapp.server import check_exposure

settings = Settings.from_env()
check_exposure(settings)
app = create_app(settings)

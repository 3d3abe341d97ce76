"""The app for Celery's own command line (``celery -A indexer.celery_app flower``), configured from
the CLIPDEX_* environment when this module is imported. clipdex itself never imports it: `clipdex
worker` builds its app from the settings it was given."""

from clipdex.config import Settings
from indexer.worker import make_celery

app = make_celery(Settings.from_env())

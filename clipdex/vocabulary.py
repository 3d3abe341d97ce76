"""The words clipdex uses in code, in its schema and in its docs, each defined once here.

The migrations write these values as literals (a migration is frozen in time); a test migrates a
database and checks that its CHECK constraints and defaults say exactly what this module says.
"""

from __future__ import annotations

# Where a photo came from (locations.source, ingest_sources.source, the `source` filter).
SOURCE_KINDS = ("takeout", "iphone", "qq", "folder")

# Image formats clipdex decodes, by content (images.format, the `format` filter): the name
# Pillow gives each, its MIME type for originals, and the file extensions that promise it.
IMAGE_FORMATS = ("jpeg", "png", "gif", "webp", "heif", "avif", "bmp", "tiff")
PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "heif": "HEIF", "avif": "AVIF",
                  "bmp": "BMP", "tiff": "TIFF"}
MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
              "heif": "image/heic", "avif": "image/avif", "bmp": "image/bmp", "tiff": "image/tiff"}
FORMAT_EXTENSIONS = {"jpeg": ("jpg", "jpeg", "jpe", "jfif"), "png": ("png",), "gif": ("gif",), "webp": ("webp",),
                     "heif": ("heic", "heif", "hif"), "avif": ("avif",), "bmp": ("bmp", "dib"),
                     "tiff": ("tif", "tiff")}
# What the `format` filter accepts: a format's name or any of its extensions.
FORMAT_NAMES = {name: fmt for fmt, extensions in FORMAT_EXTENSIONS.items() for name in (fmt, *extensions)}
# A file with one of these names is expected to be a still image: if it is not, that is a failure.
IMAGE_EXTENSIONS = frozenset(ext for extensions in FORMAT_EXTENSIONS.values() for ext in extensions)
RAW_EXTENSIONS = frozenset({"dng", "cr2", "cr3", "nef", "nrw", "arw", "srf", "sr2", "orf", "rw2", "raf", "pef",
                            "srw", "x3f", "3fr", "iiq", "erf", "kdc", "mrw"})
# Certainly not still images: skipped by name, silently, in every source.
NON_IMAGE_EXTENSIONS = frozenset({
    "json", "aae", "xmp", "mov", "mp4", "m4v", "3gp", "3g2", "avi", "mkv", "webm", "mts", "m2ts",
    "wmv", "mpg", "mpeg", "flv", "html", "htm", "txt", "csv", "db", "sqlite", "ini", "xml", "plist",
    "pdf", "zip", "tgz", "gz", "rar", "7z", "tar", "amr", "silk", "slk", "mp3", "wav", "m4a", "aac",
    "ogg", "opus", "lnk", "url", "exe", "dll", "log", "thm", "lrv", "mp", "js", "css",
})

ORIENTATIONS = ("portrait", "landscape", "square")
CAPTURE_TIME_SOURCES = ("mtime", "filename", "exif", "sidecar")   # least to most trusted

# Ingest bookkeeping.
RUN_MODES = ("local", "celery")
BATCH_STATES = ("queued", "done", "failed")
FAILURE_STAGES = ("read", "decode", "metadata", "embed", "write", "batch", "ocr")

# HNSW search: the candidate list (CLIPDEX_EF_SEARCH's default, and the database default that psql
# sessions get) and the bound on an iterative index scan (per search, and for psql).
EF_SEARCH = 200
MAX_SCAN_TUPLES = 200_000
# A model split into vector cells (clipdex.vector_cells): the cells a search walks, nearest first
# (under a selective filter also those about as near, clipdex.search.plan.near_ties); the cells
# psql's walk (migration 0015's clipdex_walk_sql default) takes, about as many as a selective
# search walks on average; and the vectors from which a model is split.
CELL_PROBES = 3
CELL_PROBES_SELECTIVE = 4
CELLS_FROM = 500_000

"""All of clipdex's configuration, read in one place.

Every setting is an environment variable with the ``CLIPDEX_`` prefix; the CLI passes its flags
as overrides. Nothing else in the code base reads the environment: components receive a
:class:`Settings` object (the Flask app factory, the Celery app factory, the pipeline).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from clipdex.vocabulary import CELLS_FROM, EF_SEARCH


class ConfigError(ValueError):
    """A setting has a value clipdex cannot use; the message names the variable."""


def _parse_roots(text: str) -> dict[str, Path]:
    roots: dict[str, Path] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, path = part.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(
                f"CLIPDEX_ROOTS: expected name=/path pairs separated by commas, got {part!r}"
            )
        if not valid_root_name(name):
            raise ConfigError(
                f"CLIPDEX_ROOTS: root name {name!r} may only use letters, digits, '.', '_' and '-'"
            )
        roots[name] = Path(path).expanduser()
    return roots


def valid_root_name(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


def _parse_int(env: str, minimum: int = 0) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{env}: expected a whole number, got {text!r}") from None
        if value < minimum:
            raise ConfigError(f"{env}: must be at least {minimum}, got {value}")
        return value

    return parse


def _parse_fraction(env: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{env}: expected a number from 0 to 1, got {text!r}") from None
        if not 0 <= value <= 1:
            raise ConfigError(f"{env}: must be between 0 and 1, got {value}")
        return value

    return parse


def _parse_seconds(env: str, minimum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{env}: expected a number of seconds, got {text!r}") from None
        if not minimum <= value < float("inf"):
            raise ConfigError(f"{env}: must be at least {minimum:g} seconds, got {text!r}")
        return value

    return parse


def _parse_bool(env: str) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{env}: expected true or false, got {text!r}")

    return parse


def _parse_choice(env: str, *choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ConfigError(f"{env}: expected one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def _optional(text: str) -> str | None:
    return text.strip() or None


def _setting(env: str, default: Any, doc: str, parse: Callable[[str], Any] | None = None) -> Any:
    """Declares a field with its environment variable and documentation (the README table)."""
    return field(default=default, metadata={"env": env, "doc": doc, "parse": parse})


def _default_home() -> Path:
    return Path("~/.local/share/clipdex").expanduser()


@dataclass(frozen=True)
class Settings:
    home: Path = _setting(
        "CLIPDEX_HOME", None,
        "Data folder: the embedded PostgreSQL lives in `home/pg`. Default `~/.local/share/clipdex`.",
        lambda s: Path(s).expanduser(),
    )
    database_url: str | None = _setting(
        "CLIPDEX_DATABASE_URL", None,
        "PostgreSQL URL (pgvector >= 0.7). Unset: the embedded PostgreSQL 18 + pgvector 0.8 in "
        "`CLIPDEX_HOME`, started on demand.",
        _optional,
    )
    broker_url: str | None = _setting(
        "CLIPDEX_BROKER_URL", None,
        "Celery broker for distributed indexing (`redis://…` or `amqp://…`). Unset: local mode only.",
        _optional,
    )
    model: str = _setting(
        "CLIPDEX_MODEL", "xlm-roberta-base-ViT-B-32",
        "open_clip model to index with: a built-in name (`ViT-B-32`), `hf-hub:org/repo` or `local-dir:/path` "
        "(a folder with `open_clip_config.json` and weights). Unset: the library's default model "
        "(`clipdex models`), and this one for a new library. Searches always use the library's default "
        "unless they name a model.",
    )
    pretrained: str | None = _setting(
        "CLIPDEX_PRETRAINED", None,
        "Weights tag for a built-in model name. Unset: the weights clipdex recommends for that name "
        "(`laion5b_s13b_b90k` for the default, `laion2b_s34b_b79k` for `ViT-B-32`: README, \"Several models side by side\"); "
        "`none` gives random weights (benchmarks only). Ignored for `hf-hub:` and `local-dir:`.",
        _optional,
    )
    device: str = _setting(
        "CLIPDEX_DEVICE", "auto",
        "`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`. fp16 on CUDA, fp32 on CPU.",
    )
    gpu_decode: str = _setting(
        "CLIPDEX_GPU_DECODE", "auto",
        "JPEG decode on the model's device (torchvision's nvJPEG, batched): `auto` (on when the model "
        "runs on CUDA), `on` (on any device: on the CPU it is slower than the default), `off` (Pillow on "
        "the decode threads). A JPEG the device cannot decode (progressive, CMYK, cut short) is decoded "
        "by Pillow.",
        _parse_choice("CLIPDEX_GPU_DECODE", "auto", "on", "off"),
    )
    roots: dict[str, Path] = _setting(
        "CLIPDEX_ROOTS", None,
        "Library roots as `name=/local/path,…`. Files are stored as (root name, relative path), so "
        "machines that mount the library at different paths agree.",
        _parse_roots,
    )
    batch_size: int = _setting(
        "CLIPDEX_BATCH_SIZE", 64, "Images per model forward pass.",
        _parse_int("CLIPDEX_BATCH_SIZE", 1),
    )
    task_files: int = _setting(
        "CLIPDEX_TASK_FILES", 256, "Files per indexing batch (one Celery task).",
        _parse_int("CLIPDEX_TASK_FILES", 1),
    )
    decode_threads: int = _setting(
        "CLIPDEX_DECODE_THREADS", 0,
        "Threads that read and decode images while the model runs; 0 = one per CPU core.",
        _parse_int("CLIPDEX_DECODE_THREADS", 0),
    )
    max_pixels: int = _setting(
        "CLIPDEX_MAX_PIXELS", 250_000_000,
        "Images whose header claims more pixels are recorded as failures (decompression bombs). "
        "The default covers 200 MP phone photos (12240×16320).",
        _parse_int("CLIPDEX_MAX_PIXELS", 1),
    )
    decode_memory: int = _setting(
        "CLIPDEX_DECODE_MEMORY", 1 << 30,
        "Bytes of decoded pixels that may exist at once in one process (indexer threads, or the web "
        "app's uploads and previews); a larger image waits, then decodes alone.",
        _parse_int("CLIPDEX_DECODE_MEMORY", 1),
    )
    max_file_bytes: int = _setting(
        "CLIPDEX_MAX_FILE_BYTES", 512 * 1024 * 1024,
        "Larger files are recorded as failures instead of being read.",
        _parse_int("CLIPDEX_MAX_FILE_BYTES", 1),
    )

    defer_index_files: int = _setting(
        "CLIPDEX_DEFER_INDEX_FILES", 10_000,
        "A run that adds at least this many images (and at least as many as the model already has) "
        "builds the model's HNSW index once at its end instead of updating it image by image.",
        _parse_int("CLIPDEX_DEFER_INDEX_FILES", 1),
    )
    cells_from: int = _setting(
        "CLIPDEX_CELLS_FROM", CELLS_FROM,
        "A model with at least this many vectors keeps one HNSW graph per k-means cell of its vectors "
        "(about 62,500 each) instead of one graph, drawn when its index is built after a bulk load or by "
        "`clipdex db index --cells`; a search walks the 3 cells nearest the query, 4 under a filter keeping "
        "less than 10 % and in psql (BENCHMARKS.md §4).",
        _parse_int("CLIPDEX_CELLS_FROM", 1),
    )
    forget_missing: bool = _setting(
        "CLIPDEX_FORGET_MISSING", True,
        "A run forgets the files indexed under the folder it scans that are no longer there (a photo "
        "with no copy left leaves the index). Off: keep them (`--keep-missing` for one run). A scan "
        "that finds no file at all, or cannot read a folder, forgets nothing there.",
        _parse_bool("CLIPDEX_FORGET_MISSING"),
    )
    watch_settle: float = _setting(
        "CLIPDEX_WATCH_SETTLE", 2.0,
        "`clipdex watch` indexes a changed folder once nothing in it has changed for this many "
        "seconds and the files it saw change keep their size: a photo still being copied is read "
        "once, whole.",
        _parse_seconds("CLIPDEX_WATCH_SETTLE", 0.1),
    )
    watch_rescan: float = _setting(
        "CLIPDEX_WATCH_RESCAN", 900.0,
        "`clipdex watch` scans its folders whole this often (seconds), for changes no event "
        "announced (network shares often send none).",
        _parse_seconds("CLIPDEX_WATCH_RESCAN", 1.0),
    )
    ocr: bool = _setting(
        "CLIPDEX_OCR", True,
        "Read the text in photos (Chinese and English) after indexing them, so `--text` finds "
        "screenshots, receipts and signs by their words. Off: `clipdex ocr` reads them later.",
        _parse_bool("CLIPDEX_OCR"),
    )
    follow_external_links: bool = _setting(
        "CLIPDEX_FOLLOW_EXTERNAL_LINKS", False,
        "Follow symbolic links that lead out of every library root (off: such a link is recorded once "
        "as not followed, and nothing behind it is read or served).",
        _parse_bool("CLIPDEX_FOLLOW_EXTERNAL_LINKS"),
    )
    lock_timeout: int = _setting(
        "CLIPDEX_LOCK_TIMEOUT", 30,
        "Seconds the indexer waits for a database lock (vector index changes) before it stops and names "
        "the session holding it.",
        _parse_int("CLIPDEX_LOCK_TIMEOUT", 1),
    )
    task_timeout: int = _setting(
        "CLIPDEX_TASK_TIMEOUT", 3600,
        "Seconds a Celery batch may stay unacknowledged before Redis hands it to another worker "
        "(the broker's visibility timeout); set it above your slowest batch.",
        _parse_int("CLIPDEX_TASK_TIMEOUT", 1),
    )
    ef_search: int = _setting(
        "CLIPDEX_EF_SEARCH", EF_SEARCH,
        "The least HNSW candidate list per search: higher finds more of the true nearest photos, "
        "slower. It grows with the graph walked (the model's, or a cell's) as x(N/100k)^0.7, up to 1000 "
        "(pgvector's limit) from about a million vectors; 200 gives recall@10 0.995 at 100k (BENCHMARKS.md).",
        _parse_int("CLIPDEX_EF_SEARCH", 10),
    )
    strictness: float = _setting(
        "CLIPDEX_STRICTNESS", 0.5,
        "How sure a photo must be to count as a match of a search, 0 to 1 (a search's `strictness=` "
        "overrides it): the cut-off adapts to each query against a sample of the library; 0 lists every "
        "photo by relevance, with no cut-off (BENCHMARKS.md §11).",
        _parse_fraction("CLIPDEX_STRICTNESS"),
    )
    web_host: str = _setting(
        "CLIPDEX_WEB_HOST", "127.0.0.1", "Address `clipdex serve` binds to.",
    )
    web_port: int = _setting(
        "CLIPDEX_WEB_PORT", 5000, "Port `clipdex serve` listens on.",
        _parse_int("CLIPDEX_WEB_PORT", 1),
    )
    web_hostnames: tuple[str, ...] = _setting(
        "CLIPDEX_WEB_HOSTNAMES", (),
        "Host names the web app answers to besides localhost when no access token is set "
        "(comma-separated); any other Host header gets 421, against DNS rebinding.",
        lambda s: tuple(h.strip().lower() for h in s.split(",") if h.strip()),
    )
    access_token: str | None = _setting(
        "CLIPDEX_ACCESS_TOKEN", None,
        "Token the web app requires (`Authorization: Bearer …`, or the cookie its sign-in page sets). "
        "Required to serve on anything but a loopback address.",
        _optional,
    )
    upload_max_bytes: int = _setting(
        "CLIPDEX_UPLOAD_MAX_BYTES", 25 * 1024 * 1024,
        "Largest query image the web app accepts.",
        _parse_int("CLIPDEX_UPLOAD_MAX_BYTES", 1),
    )
    offline: bool = _setting(
        "CLIPDEX_OFFLINE", False,
        "Never try to download model weights; use only local files and the Hugging Face cache.",
        _parse_bool("CLIPDEX_OFFLINE"),
    )

    # Whether the model was chosen (CLIPDEX_MODEL, --model, or in code) rather than left to its
    # default: an indexer whose model was not chosen embeds with the library's default model
    # (clipdex.model_registry.follow_library), so an upgrade that changes the built-in default never
    # leaves new photos out of the vectors searches use.
    model_named: bool = field(default=True, metadata={"env": None, "doc": None, "parse": None})

    def __post_init__(self) -> None:
        # Frozen dataclass: fill computed defaults through object.__setattr__.
        if self.home is None:
            object.__setattr__(self, "home", _default_home())
        if self.roots is None:
            object.__setattr__(self, "roots", {})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Reads ``CLIPDEX_*`` variables, then applies overrides (CLI flags) that are not None."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env = f.metadata["env"]
            if env is not None and env in environ:
                parse = f.metadata["parse"] or str
                values[f.name] = parse(environ[env])
        for name, value in overrides.items():
            if value is None:
                continue
            f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
            if f is None:
                raise TypeError(f"unknown setting {name!r}")
            if isinstance(value, str) and f.metadata["parse"] is not None:
                value = f.metadata["parse"](value)
            values[name] = value
        values["model_named"] = "model" in values
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def effective_decode_threads(self) -> int:
        return self.decode_threads or max(1, os.cpu_count() or 1)

    def child_environ(self) -> dict[str, str]:
        """This process's environment with these settings in it, for a child process."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPDEX_")}
        return {**env, **self.to_environ()}

    def to_environ(self) -> dict[str, str]:
        """The variables that reproduce these settings in a child process (workers, servers)."""
        env: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or f.metadata["env"] is None:
                continue
            if not self.model_named and f.name in ("model", "pretrained"):
                continue    # the child follows the library's model too
            if f.name == "roots":
                if not value:
                    continue
                value = ",".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, tuple):
                if not value:
                    continue
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f.metadata["env"]] = str(value)
        return env


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, in declaration order."""
    rows = []
    for f in dataclasses.fields(Settings):
        if f.metadata["env"] is None:
            continue
        default = f.default
        if f.name == "home":
            default = "~/.local/share/clipdex"
        rows.append((f.metadata["env"], "" if default is None else str(default), f.metadata["doc"]))
    return rows

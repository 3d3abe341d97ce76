"""Loads an open_clip model once per process and turns images and texts into unit vectors.

Every model goes through :func:`load_model`, whatever its source: a built-in architecture with a
weights tag (``xlm-roberta-base-ViT-B-32`` + ``laion5b_s13b_b90k``), ``hf-hub:org/repo``, or
``local-dir:/path``.
Nothing is imported or loaded at import time: torch and open_clip come in on first use, so
``clipdex --help`` stays instant and Celery's parent process never touches CUDA.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np

from clipdex.config import Settings

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

# The weights clipdex takes for a built-in name when CLIPDEX_PRETRAINED is unset (README, "Several models side by side"):
# the multilingual default, the English model that was the default before it, and larger siblings.
RECOMMENDED_WEIGHTS = {
    "xlm-roberta-base-ViT-B-32": "laion5b_s13b_b90k",
    "xlm-roberta-large-ViT-H-14": "frozen_laion5b_s13b_b90k",
    "nllb-clip-base-siglip": "v1",
    "ViT-B-32": "laion2b_s34b_b79k",
}

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
RANDOM_WEIGHTS = "none"


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded; the message is one sentence that says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: an open_clip model name and, for built-in names, a weights tag."""

    name: str
    pretrained: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "ModelSpec":
        if settings.model.startswith((LOCAL_DIR, HF_HUB)):
            return cls(settings.model, None)
        pretrained = settings.pretrained or RECOMMENDED_WEIGHTS.get(settings.model)
        if pretrained is None:
            raise ModelUnavailable(
                f"CLIPDEX_MODEL={settings.model}: name its weights with CLIPDEX_PRETRAINED (python -c "
                f"'import open_clip; print(open_clip.list_pretrained_tags_by_model(\"{settings.model}\"))'), "
                "or `none` for random weights")
        return cls(settings.model, pretrained)

    @property
    def local_dir(self) -> Path | None:
        if self.name.startswith(LOCAL_DIR):
            return Path(self.name[len(LOCAL_DIR):]).expanduser()
        return None

    @property
    def random_weights(self) -> bool:
        return self.local_dir is None and not self.name.startswith(HF_HUB) and (
            self.pretrained is None or self.pretrained.lower() == RANDOM_WEIGHTS
        )

    def key(self) -> str:
        """The name vectors are stored under: equal keys mean interchangeable vectors.

        A ``local-dir:`` model is keyed by its folder name and a fingerprint of its files, not
        its path, so machines that keep the same weights in different places agree.
        """
        local = self.local_dir
        if local is not None:
            return f"local-dir:{local.resolve().name}@{_fingerprint(local)}"
        if self.name.startswith(HF_HUB):
            return self.name
        if self.random_weights:
            return f"{self.name}/random-seed-0"
        return f"{self.name}/{self.pretrained}"


def _fingerprint(folder: Path) -> str:
    """A cheap content fingerprint of a local model: config bytes plus size and edges of weights."""
    if not folder.is_dir():
        raise ModelUnavailable(
            f"CLIPDEX_MODEL points at {folder}, which is not a folder; a local-dir: model is a "
            "folder holding open_clip_config.json and the weights."
        )
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".json", ".safetensors", ".bin", ".pth", ".pt"):
            continue
        digest.update(path.name.encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:12]


def resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub, so an offline machine fails in seconds, not after retries."""
    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Puts huggingface_hub in offline mode (cache only) for the duration, when asked to."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _unavailable_message(spec: ModelSpec, reason: str) -> str:
    what = spec.name if spec.pretrained is None else f"{spec.name} ({spec.pretrained})"
    return (
        f"Cannot load the weights of {what}: {reason}; download them on a machine with internet "
        "access (or copy an open_clip folder with open_clip_config.json and weights) and set "
        "CLIPDEX_MODEL=local-dir:/path/to/that/folder."
    )


class ClipModel:
    """An open_clip model in eval mode with its tokenizer and image preprocessing."""

    def __init__(self, spec: ModelSpec, device: str, offline: bool = False) -> None:
        import torch

        self.spec = spec
        self.key = spec.key()
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self._model, self.preprocess, self._tokenizer = self._load(spec, device, offline)
        self._model.eval()
        self.dim = int(self._probe_dim())
        size = getattr(self._model.visual, "image_size", 224)
        self.image_size: tuple[int, int] = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self._lock = threading.Lock()

    @staticmethod
    def _load(spec: ModelSpec, device: str, offline: bool):
        import open_clip
        import torch

        precision = "fp16" if device.startswith("cuda") else "fp32"
        local = spec.local_dir
        if local is not None and not (local / "open_clip_config.json").is_file():
            raise ModelUnavailable(
                f"{local} has no open_clip_config.json; a local-dir: model needs that file and the "
                "weights (open_clip_model.safetensors or .bin) side by side."
            )
        needs_hub = local is None and not spec.random_weights
        go_offline = needs_hub and (offline or not _hub_reachable())
        pretrained = None if spec.random_weights else spec.pretrained
        if spec.random_weights:
            torch.manual_seed(0)  # every process builds the same random model
        overrides = _local_text_tower(local) if local is not None else {}
        try:
            with _hub_offline(go_offline):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.name, pretrained=pretrained, precision=precision, device=device, **overrides
                )
                if overrides:   # the tokenizer of the tower found in the folder
                    text_cfg = overrides["text_cfg"]
                    tokenizer = open_clip.tokenizer.HFTokenizer(
                        text_cfg["hf_tokenizer_name"], context_length=text_cfg.get("context_length", 77),
                        **text_cfg.get("tokenizer_kwargs", {}))
                else:
                    tokenizer = open_clip.get_tokenizer(spec.name)
        except ModelUnavailable:
            raise
        except Exception as exc:  # open_clip raises plain RuntimeError/OSError for missing weights
            text = str(exc)
            if "not found in built-ins" in text or "not a known tag" in text:
                raise ModelUnavailable(
                    f"open_clip does not know model {spec.name!r} with weights {spec.pretrained!r}; "
                    "`python -c 'import open_clip; print(open_clip.list_pretrained())'` lists them."
                ) from None
            if needs_hub and ("download" in text.lower() or "offline" in text.lower() or go_offline):
                reason = (
                    "they are not in the local cache and huggingface.co cannot be reached"
                    if go_offline
                    else "the download failed"
                )
                raise ModelUnavailable(_unavailable_message(spec, reason)) from None
            raise ModelUnavailable(f"Cannot load open_clip model {spec.name}: {text}") from None
        return model, preprocess, tokenizer

    @property
    def multilingual(self) -> bool:
        """The text tower reads many languages (a Hugging Face XLM-RoBERTa, NLLB or mT5 tower),
        not only English (open_clip's own text transformer, trained on English captions)."""
        config = getattr(getattr(self._model, "text", None), "config", None)
        return getattr(config, "model_type", None) in MULTILINGUAL_TEXT_TOWERS

    def _probe_dim(self) -> int:
        import torch

        with torch.inference_mode():
            tokens = self._tokenizer(["a photo"]).to(self.device)
            return self._model.encode_text(tokens).shape[-1]

    def preprocess_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        import torch

        return torch.stack([self.preprocess(im) for im in images])

    def encode_images(self, batch: "torch.Tensor | Sequence[Image.Image]") -> np.ndarray:
        """Unit-length float32 vectors for a batch: preprocessed tensors (N,3,H,W) or PIL images."""
        import torch

        if not isinstance(batch, torch.Tensor):
            batch = self.preprocess_images(batch)
        return vectors_of(self.start_encoding(batch))

    def start_encoding(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """Queues the image tower on a batch (host or device tensor) and returns its features on
        the device without waiting for them: on CUDA the forward pass runs while the caller
        prepares the next batch (``vectors_of`` waits). On the CPU it is done on return."""
        import torch

        with self._lock, torch.inference_mode():
            return self._model.encode_image(pixels.to(self.device, dtype=self.dtype, non_blocking=True))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            tokens = self._tokenizer(list(texts))
            pad = self._text_padding
            if pad is not None:
                # A Hugging Face tower masks padding out of attention and pooling, so the columns
                # that are padding in every row can go: a short query costs its own length, not
                # the context length (the same vectors, measured to 3e-7).
                used = (tokens != pad).any(dim=0).nonzero()
                if len(used):
                    tokens = tokens[:, :int(used[-1]) + 1]
            return vectors_of(self._model.encode_text(tokens.to(self.device)))

    @property
    def _text_padding(self) -> int | None:
        """The pad token id of a Hugging Face text tower (None for open_clip's own, whose causal
        mask and positions are fixed at the context length)."""
        tower = getattr(self._model, "text", None)
        config = getattr(tower, "config", None)
        return getattr(config, "pad_token_id", None) if hasattr(tower, "transformer") else None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "pretrained": self.spec.pretrained,
            "dim": self.dim,
            "image_size": list(self.image_size),
            "multilingual": self.multilingual,
        }


# Hugging Face model types of open_clip's multilingual text towers (xlm-roberta-*-ViT-*, nllb-clip-*).
MULTILINGUAL_TEXT_TOWERS = ("xlm-roberta", "m2m_100", "mt5")


def _local_text_tower(folder: Path) -> dict[str, Any]:
    """For a local-dir: model with a Hugging Face text tower: its config and tokenizer are read from
    the folder (open_clip hands ``hf_model_name`` to transformers as is, so a relative name would
    be read from the working directory and an absolute one breaks when the folder moves), and the
    tower is built from that config, its weights coming with the rest from the checkpoint."""
    import json

    try:
        config = json.loads((folder / "open_clip_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{folder}/open_clip_config.json cannot be read: {exc}") from None
    text_cfg = (config.get("model_cfg") or {}).get("text_cfg") or {}
    if not text_cfg.get("hf_model_name"):
        return {}
    tower = Path(text_cfg["hf_model_name"])
    tower = tower if tower.is_absolute() and tower.is_dir() else folder / tower
    if not (tower / "config.json").is_file():
        tower = folder
    if not (tower / "config.json").is_file():
        raise ModelUnavailable(
            f"{folder} holds a model whose text tower is {text_cfg['hf_model_name']!r} from Hugging Face; "
            "put that tower's config.json and tokenizer files in the folder (or a subfolder named by "
            "hf_model_name) so it loads offline."
        )
    return {"text_cfg": {**text_cfg, "hf_model_name": str(tower), "hf_tokenizer_name": str(tower),
                         "hf_model_pretrained": False}}


def vectors_of(features: "torch.Tensor") -> np.ndarray:
    """Unit-length float32 vectors on the host from a batch's features (waits for the device)."""
    array = features.float().cpu().numpy()
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (array / norms).astype(np.float32)


_loaded: dict[tuple[str, str | None, str], ClipModel] = {}
_load_lock = threading.Lock()


def load_model(settings: Settings) -> ClipModel:
    """The process's model for these settings, loaded on first call."""
    spec = ModelSpec.from_settings(settings)
    device = resolve_device(settings.device)
    cache_key = (spec.name, spec.pretrained, device)
    with _load_lock:
        model = _loaded.get(cache_key)
        if model is None:
            log.info("loading open_clip model %s on %s", spec.key(), device)
            model = ClipModel(spec, device, offline=settings.offline)
            _loaded[cache_key] = model
    return model


class LazyModel:
    """Stands in for a model and loads it on first use: a search answered from the text cache
    never imports torch."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._model: ClipModel | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> ClipModel:
        if self._model is None:
            self._model = load_model(self._settings)
        return self._model

    def __getattr__(self, name: str):
        return getattr(self.load(), name)

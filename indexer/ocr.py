"""Reading the text in a photo: PP-OCRv4 (Chinese and English) through rapidocr-onnxruntime, whose
wheel carries the detection, direction and recognition weights, so it runs offline.

OCR costs one to three seconds a photo on this 2-core machine, far more than the embedding, and
most photos hold no text. So every photo first goes through a cheap gate: the whole engine on a
small copy (long side GATE_SIDE). Detection alone is no gate: on photos it finds "text boxes" in
foliage, tiles and noise (15 of 20 of bench/ocr.py's text-free photos), while recognition on those
boxes returns a stray character or nothing. A photo where the glimpse reads no line of two or more
characters with confidence GATE_SCORE is recorded as textless; one where it does is read in full
(detection at the photo's own resolution up to OCR_SIDE, the direction of each line, 0° or 180°,
then recognition). Lines standing on their side (a screenshot rotated by 90°) are turned upright
by the engine before recognition.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
from PIL import Image

from clipdex.imaging import DecodeBudget, decode

OCR_SIDE = 2000            # long side of the copy that is read in full (the engine's own cap)
GATE_SIDE = 640            # long side of the copy the gate looks at
GATE_SCORE = 0.5           # confidence a line of the glimpse needs to open the full read
MIN_SCORE = 0.5            # recognition confidence below which a line is dropped
MAX_LINES = 400            # lines kept per photo (a page of small print has ~100)
MAX_TEXT = 20_000          # characters kept per photo


@dataclass
class TextLine:
    text: str
    box: list[list[int]]       # four corners, clockwise from top left, in the upright photo's pixels
    score: float

    def to_json(self) -> dict:
        return {"text": self.text, "box": self.box, "score": round(self.score, 3)}


@dataclass
class ReadText:
    lines: list[TextLine] = field(default_factory=list)
    gated: bool = False         # the glimpse read no text: the full read never ran

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


def engine_name() -> str:
    """What produced a row, so a later engine can tell which rows to read again."""
    return f"rapidocr-onnxruntime {metadata.version('rapidocr-onnxruntime')} PP-OCRv4"


def cuda_available() -> bool:
    """onnxruntime-gpu is installed in place of onnxruntime (the `ocr-gpu` extra) and sees a GPU."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


class OcrEngine:
    """One per process, loaded on first use (about a second; 16 MB of weights). With ``device``
    other than ``cpu`` it runs on onnxruntime's CUDA provider when that is there (the first
    visible GPU: a worker per GPU is started with CUDA_VISIBLE_DEVICES); the text is the same
    either way, so the engine's name does not say which."""

    def __init__(self, *, use_gate: bool = True, device: str = "cpu") -> None:
        self.use_gate = use_gate
        self.device = device
        self.provider = "cpu"
        self._lock = threading.Lock()
        self._full = self._gate = None
        self.name = engine_name()

    def _load(self) -> None:
        with self._lock:
            if self._full is None:
                from rapidocr_onnxruntime import RapidOCR

                cuda = self.device != "cpu" and cuda_available()
                on = {f"{part}_use_cuda": cuda for part in ("det", "cls", "rec")}
                self.provider = "cuda" if cuda else "cpu"
                self._full = RapidOCR(text_score=MIN_SCORE, max_side_len=OCR_SIDE, **on)
                self._gate = RapidOCR(det_limit_type="max", det_limit_side_len=GATE_SIDE, max_side_len=GATE_SIDE,
                                      text_score=GATE_SCORE, **on)

    def read_image(self, image: Image.Image) -> ReadText:
        """The text of an upright RGB image, in reading order (top to bottom, left to right)."""
        self._load()
        if self.use_gate:
            small = image
            if max(image.size) > GATE_SIDE:
                small = image.copy()
                small.thumbnail((GATE_SIDE, GATE_SIDE), Image.Resampling.BILINEAR)
            glimpse, _ = self._gate(_bgr(small))
            if not any(len(str(text).strip()) >= 2 for _box, text, _score in glimpse or []):
                return ReadText(gated=True)
        found, _ = self._full(_bgr(image))
        lines = []
        for box, text, score in found or []:
            text = " ".join(str(text).split())
            if text and float(score) >= MIN_SCORE:
                corners = [[int(round(x)), int(round(y))] for x, y in np.asarray(box).tolist()]
                lines.append(TextLine(text, corners, float(score)))
        lines.sort(key=_reading_order(lines))
        kept, length = [], 0
        for line in lines[:MAX_LINES]:
            if length + len(line.text) > MAX_TEXT:
                break
            kept.append(line)
            length += len(line.text) + 1
        return ReadText(kept)

    def read_bytes(self, data: bytes, *, max_pixels: int, budget: DecodeBudget | None = None) -> ReadText:
        """Decodes a file's bytes upright (EXIF orientation applied) at OCR resolution and reads
        it; raises NotAnImage or DecodeFailure as the indexer's decode does."""
        decoded = decode(data, min_side=OCR_SIDE // 2, max_pixels=max_pixels, budget=budget)
        image = decoded.image
        if max(image.size) > OCR_SIDE:
            image = image.copy()
            image.thumbnail((OCR_SIDE, OCR_SIDE), Image.Resampling.LANCZOS)
        return self.read_image(image)


def _bgr(image: Image.Image) -> np.ndarray:
    """The pixel layout the engine takes (OpenCV's BGR)."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _reading_order(lines: list[TextLine]):
    """Top to bottom by line, left to right within a line: a line whose vertical centre lies
    within half a line height of the one before it belongs to the same row."""
    if not lines:
        return lambda line: 0
    heights = sorted(max(1, max(y for _, y in l.box) - min(y for _, y in l.box)) for l in lines)
    row = heights[len(heights) // 2] / 2

    def key(line: TextLine):
        ys = [y for _, y in line.box]
        return (round(((min(ys) + max(ys)) / 2) / row), min(x for x, _ in line.box))
    return key


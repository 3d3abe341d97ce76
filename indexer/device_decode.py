"""JPEG decode on the model's device: on a GPU worker the CPU decode is the wall (a 12 MP camera
JPEG costs about 28 ms of a core even at 1/8 DCT scale), so the decode threads only read, hash
and parse headers, and the main thread decodes a group's JPEGs in one batched call of
torchvision's ``decode_jpeg`` (nvJPEG on CUDA), then reduces, orients, makes the thumbnail and
runs the model's own preprocessing there, before the forward pass.

A file the device decoder refuses goes back to the CPU path (Pillow) alone, never failing its
group. The same code runs on CPU (``CLIPDEX_GPU_DECODE=on`` with ``CLIPDEX_DEVICE=cpu``: libjpeg-turbo
at full size, slower than ``draft()``), which is how the tests exercise it.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from clipdex.imaging import JpegHeader
from clipdex.model import ClipModel
from indexer.thumbnail import THUMBNAIL_SIDE

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

# Pixels decoded in one call: a 12 MP photo is 36 MB on the device until it is reduced, so a group
# of 256 is decoded some 16 photos at a time (600 MB), whatever the device's size.
PIXELS_PER_CALL = 200_000_000


@dataclass
class DeviceJpeg:
    """A JPEG left for the device: its bytes (a uint8 tensor on the host, as the decoder takes
    them) and the EXIF orientation still to apply. The decode threads make it instead of the
    pixels (prepare.py), so the copy of the bytes is theirs, not the main thread's."""

    data: "torch.Tensor"
    pixels: int                 # width × height, from the header
    orientation: int | None
    with_thumbnail: bool

    @classmethod
    def of(cls, data: bytes, header: JpegHeader, with_thumbnail: bool) -> "DeviceJpeg":
        import torch

        return cls(torch.frombuffer(bytearray(data), dtype=torch.uint8), header.width * header.height,
                   header.orientation, with_thumbnail)


@dataclass
class Decoded:
    """One JPEG done on the device: the model's input (on the device) and the thumbnail's pixels
    (height × width × 3, uint8, on the host) or None when none was asked for."""

    pixels: "torch.Tensor"
    thumbnail: Any   # a tensor on the device until decode() brings them all to the host


class DeviceDecoder:
    """Decodes groups of JPEGs on one device into the inputs of one model."""

    def __init__(self, model: ClipModel, device: str) -> None:
        self.model = model
        self.device = device
        self.side = max(model.image_size)

    @classmethod
    def for_model(cls, model: ClipModel) -> "DeviceDecoder | None":
        """A decoder for the model's device, or None when its preprocessing does not take tensors
        (then every file takes the CPU path)."""
        import torch

        # torchvision 0.29 says its image decoders will move to TorchCodec; until a release drops
        # them they are what decodes on the GPU here, and the notice is for us, not for a user.
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        decoder = cls(model, model.device)
        try:
            probe = torch.rand(3, 97, 131, device=model.device)
            out = decoder._preprocess(probe)
            if tuple(out.shape) != (3, *model.image_size):
                raise ValueError(f"gives {tuple(out.shape)}")
        except Exception as exc:
            log.warning("the model's preprocessing cannot run on tensors (%s): JPEGs are decoded on the CPU", exc)
            return None
        return decoder

    def decode(self, jpegs: list[DeviceJpeg]) -> list[Decoded | Exception]:
        """One answer per JPEG, in order: its pixels, or why the device could not decode it."""
        answers: list[Decoded | Exception] = []
        start = 0
        while start < len(jpegs):
            end, pixels = start, 0
            while end < len(jpegs) and (end == start or pixels + jpegs[end].pixels <= PIXELS_PER_CALL):
                pixels += jpegs[end].pixels
                end += 1
            answers += self._decode_call(jpegs[start:end])
            start = end
        # The previews come to the host once every kernel is queued: one wait, not one per photo.
        for answer in answers:
            if isinstance(answer, Decoded) and answer.thumbnail is not None:
                answer.thumbnail = answer.thumbnail.permute(1, 2, 0).cpu().numpy()
        return answers

    def _decode_call(self, jpegs: list[DeviceJpeg]) -> list[Decoded | Exception]:
        """One batched decode; when it fails (it returns nothing then), each file again alone, so
        only the files the decoder refuses are left out."""
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            images = decode_jpeg([j.data for j in jpegs], mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            if len(jpegs) == 1:
                raise
            return [self._one(j) for j in jpegs]
        return [self._finish(image, j) for image, j in zip(images, jpegs)]

    def _one(self, jpeg: DeviceJpeg) -> Decoded | Exception:
        try:
            return self._decode_call([jpeg])[0]
        except RuntimeError as exc:
            return exc

    def _finish(self, image: "torch.Tensor", jpeg: DeviceJpeg) -> Decoded | Exception:
        """Reduces, orients, and preprocesses one decoded image (3 × H × W, uint8, on the device)."""
        try:
            reduced = orient(_reduce(image, max(self.side, THUMBNAIL_SIDE)), jpeg.orientation)
            thumbnail = _thumbnail_pixels(reduced) if jpeg.with_thumbnail else None
            return Decoded(self._preprocess(reduced.float().div_(255)), thumbnail)
        except RuntimeError as exc:   # out of device memory, a kernel error: the CPU path takes it
            return exc

    def _preprocess(self, image: "torch.Tensor") -> "torch.Tensor":
        """The model's own open_clip transforms (resize, crop, normalize) on a float image in
        [0, 1] on the device, in the model's precision."""
        return self.model.preprocess(image).to(self.model.dtype)


def _reduce(image: "torch.Tensor", keep: int) -> "torch.Tensor":
    """Box-averages by the largest integer factor that keeps ``keep`` pixels on the short side,
    as ``draft()`` does in the DCT on the CPU path, so later resizes start from few pixels."""
    import torch

    factor = min(image.shape[-2:]) // keep
    if factor < 2:
        return image
    # Half precision on the GPU (it sums in float32 there): a 12 MP photo takes 72 MB, not 144.
    work = torch.float16 if image.is_cuda else torch.float32
    pooled = torch.nn.functional.avg_pool2d(image.unsqueeze(0).to(work), factor, factor)
    return pooled.squeeze(0).round_().to(torch.uint8)


ORIENTATIONS: dict[int, Callable[[Any], Any]] = {
    2: lambda t: t.flip(-1),                       # mirrored left to right
    3: lambda t: t.flip(-1, -2),                   # upside down
    4: lambda t: t.flip(-2),                       # mirrored top to bottom
    5: lambda t: t.transpose(-1, -2),              # mirrored along the main diagonal
    6: lambda t: t.transpose(-1, -2).flip(-1),     # turned 90° clockwise to view
    7: lambda t: t.transpose(-1, -2).flip(-1, -2),  # mirrored along the other diagonal
    8: lambda t: t.transpose(-1, -2).flip(-2),     # turned 90° counter-clockwise to view
}


def orient(image: "torch.Tensor", orientation: int | None) -> "torch.Tensor":
    """The EXIF orientation applied to a C × H × W tensor, as Pillow's ``exif_transpose`` does."""
    turn = ORIENTATIONS.get(orientation or 1)
    return image if turn is None else turn(image).contiguous()


def _thumbnail_pixels(image: "torch.Tensor") -> "torch.Tensor":
    """The preview's pixels, fitting THUMBNAIL_SIDE², resized on the device (the WebP encoding is
    CPU work for the decode threads: thumbnail.make_thumbnail)."""
    import torch

    height, width = image.shape[-2:]
    scale = THUMBNAIL_SIDE / max(height, width)
    if scale < 1:
        size = [max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5))]
        image = torch.nn.functional.interpolate(image.unsqueeze(0).float(), size=size, mode="bicubic",
                                                antialias=True, align_corners=False)
        image = image.squeeze(0).clamp_(0, 255).round_().to(torch.uint8)
    return image

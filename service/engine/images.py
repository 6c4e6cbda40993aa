"""Image bytes to the pixel tensor of an image tower: Pillow decodes, numpy does the rest.

The result is what transformers' `CLIPImageProcessor` (4.57) computes from the same decoded
image, bit for bit: Pillow's plain `convert("RGB")` (alpha dropped, not composited), a Pillow
resize (shortest edge to N with the long side `int(N * long / short)`, or exactly height x
width), transformers' centre crop (offset `(h - crop) // 2`, zero padding when the image is
smaller), rescale in float64 then float32, normalise in float32; channels first. Deliberate
differences, all documented in the README: EXIF orientation is applied first (transformers,
open_clip, FastEmbed and Infinity ignore it, so a phone photo reaches them sideways); 16-bit
greyscale is scaled to 8 bits where Pillow's convert would clip it at 255 (a white image);
beyond EXACT_RESIZE_PIXELS (extreme aspect ratios) only the cropped window is resized; and
the optional JPEG draft mode (ImageLimits.draft) trades exactness for decoding speed.

Cost is bounded before any pixel is decoded: the encoded size first, then the format (only
JPEG, PNG, WebP, GIF and BMP decoders are tried), then the pixel and frame counts read from the
header. Animations give their first frame. Every failure is an `InvalidImage` saying what is
wrong. Call this in a worker thread: Pillow releases the GIL while it decodes and resizes.
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImage
from .manifest import RESAMPLE_FILTERS, VisionConfig

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
# Resizes whose full result has at most this many pixels are done whole, as transformers does
# (bit-exact; aspect ratios up to about 1:80 at 224 px, at most ~70 ms here); beyond it only the
# part that survives the centre crop is resized (see to_pixels).
EXACT_RESIZE_PIXELS = 1 << 22
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF or BMP"

# Pillow's own bomb guard is process-global state (Image.MAX_IMAGE_PIXELS): it warns above about
# 89 MP and refuses above about 179 MP whatever the server was configured with, and pytest or any
# warnings.catch_warnings() turns its warning back on. The engine owns this limit instead
# (ImageLimits.max_pixels, always set, checked on the header of every image before decoding), so
# the global guard is switched off here, explicitly. Should anything switch it back on, its
# error still arrives as an InvalidImage (see _pillow).
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one image, each checked before the pixels are decoded."""

    max_bytes: int = 10 * 1024 * 1024  # encoded size
    max_pixels: int = 40_000_000  # width x height, read from the header
    max_frames: int = 1000  # animations: only the first frame is used, but all are counted
    # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale while the image stays at least twice
    # the resize target (draft_side). A 12 MP photo then costs ~66 ms instead of ~174 ms here,
    # but its pixels differ slightly from transformers' (images under twice the target are not
    # touched); off by default for exactness. Numbers: bench/image_decode.py.
    draft: bool = False

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_frames"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"image limit {name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, before any decoding."""

    format: str  # "JPEG", "PNG", "WEBP", "GIF", "BMP" (or "MPO", a multi-picture JPEG)
    width: int
    height: int
    frames: int
    mode: str


@contextmanager
def _pillow(action: str, limits: ImageLimits) -> Iterator[None]:
    """Pillow's many exception types for malformed data, as one InvalidImage."""
    try:
        yield
    except (InvalidImage, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"the image has too many pixels ({exc}); the limit is {limits.max_pixels}") from None
    except UnidentifiedImageError:
        raise InvalidImage(f"the data is not a {_FORMAT_NAMES} image") from None
    except Exception as exc:  # noqa: BLE001 - decoders of untrusted bytes raise anything
        raise InvalidImage(f"{action}: {exc or type(exc).__name__}") from None


def _open(data: bytes, limits: ImageLimits) -> tuple[Image.Image, ImageInfo]:
    """Open lazily (header only) and check every limit before a pixel is decoded."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}")
    with _pillow("the image header is malformed", limits):
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise InvalidImage(f"the image has {width}x{height} = {width * height} pixels; "
                           f"the limit is {limits.max_pixels}")
    with _pillow("the image's frames are unreadable", limits):
        frames = int(getattr(image, "n_frames", 1))
    if frames > limits.max_frames:
        raise InvalidImage(f"the image has {frames} frames; the limit is {limits.max_frames}")
    return image, ImageInfo(format=str(image.format), width=width, height=height, frames=frames, mode=image.mode)


def probe(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Check the limits and the format from the header alone (no pixel is decoded)."""
    return _open(data, limits)[1]


def draft_side(config: VisionConfig) -> int:
    """The square a JPEG may be reduced to: twice the resize target, so that the resize still
    downscales at least 2x and keeps most of its antialiasing (bench/image_decode.py measures
    draft to the target itself: ~15% faster on 12 MP, pixels three times further off)."""
    return 2 * max(config.resize_shortest_edge or 0, config.resize_height or 0, config.resize_width or 0)


def decode(data: bytes, config: VisionConfig, limits: ImageLimits) -> Image.Image:
    """The first frame, upright (EXIF orientation applied), in RGB."""
    image, info = _open(data, limits)
    with _pillow("the image could not be decoded", limits):
        if limits.draft and config.do_resize and info.format in ("JPEG", "MPO"):
            side = draft_side(config)
            image.draft(None, (side, side))
        image.load()
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001 - unreadable EXIF: the image is used as stored, as viewers do
        pass
    with _pillow(f"the image's colour mode {image.mode} cannot be converted to RGB", limits):
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """transformers' convert_to_rgb (plain convert("RGB")), except that 16- and 32-bit integer
    greyscale is scaled to 8 bits first (Pillow would clip every value above 255 to white).

    A checkpoint saying do_convert_rgb: false is treated the same: its processor would fail on
    a non-RGB image (no three channels), so converting is the only way to embed one."""
    if image.mode == "RGB":
        return image
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    return image.convert("RGB")


def resized_size(width: int, height: int, config: VisionConfig) -> tuple[int, int]:
    """(width, height) after the resize rule, as transformers' get_resize_output_image_size."""
    if config.resize_shortest_edge is None:
        return int(config.resize_width or 0), int(config.resize_height or 0)
    edge = config.resize_shortest_edge
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (edge, new_long) if width <= height else (new_long, edge)


def _levels(config: VisionConfig) -> np.ndarray:
    """(3, 256) float32: each channel's output for each 8-bit input value, computed with
    transformers' own arithmetic (rescale in float64, cast, normalise in float32)."""
    values = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    out = values.astype(np.float32)
    if config.do_rescale:
        out = (values.astype(np.float64) * config.rescale_factor).astype(np.float32)
    if config.do_normalize:
        mean = np.asarray(config.mean, dtype=np.float32)[:, None]
        std = np.asarray(config.std, dtype=np.float32)[:, None]
        out = (out - mean) / std
    return out


def to_pixels(image: Image.Image, config: VisionConfig) -> np.ndarray:
    """An image to the (3, H, W) float32 tensor the tower takes (no batch axis)."""
    image = to_rgb(image)
    width, height = image.size
    out_width, out_height = resized_size(width, height, config) if config.do_resize else (width, height)
    crop_height, crop_width = config.image_size if config.do_center_crop else (out_height, out_width)
    # transformers' centre crop: offset (size - crop) // 2, negative when the crop is larger than
    # the image, which is then centred on zeros. Only the window [y0:y1, x0:x1] survives.
    top, left = (out_height - crop_height) // 2, (out_width - crop_width) // 2
    y0, y1 = max(0, top), min(out_height, top + crop_height)
    x0, x1 = max(0, left), min(out_width, left + crop_width)
    resample = Image.Resampling(RESAMPLE_FILTERS.index(config.resample))
    if not config.do_resize:
        region = image.crop((x0, y0, x1, y1))
    elif out_width * out_height <= EXACT_RESIZE_PIXELS:
        region = image.resize((out_width, out_height), resample=resample).crop((x0, y0, x1, y1))
    else:
        # An extreme aspect ratio (a 1 x 10,000 image would become 224 x 2,240,000): resize the
        # surviving window only. Pillow takes the window as float32 coordinates, so values can
        # differ by a few levels from the full resize at sharp edges; the cost stays bounded.
        box = (x0 * width / out_width, y0 * height / out_height, x1 * width / out_width, y1 * height / out_height)
        region = image.resize((x1 - x0, y1 - y0), resample=resample, box=box)
    pixels = np.asarray(region)
    if pixels.shape[:2] != (crop_height, crop_width):
        canvas = np.zeros((crop_height, crop_width, 3), dtype=np.uint8)
        canvas[y0 - top:y1 - top, x0 - left:x1 - left] = pixels
        pixels = canvas
    levels = _levels(config)
    return np.stack([levels[channel][pixels[..., channel]] for channel in range(3)])


def preprocess(data: bytes, config: VisionConfig, limits: ImageLimits) -> np.ndarray:
    """Encoded image bytes to the tower's (3, H, W) float32 input. Raises InvalidImage."""
    return to_pixels(decode(data, config, limits), config)

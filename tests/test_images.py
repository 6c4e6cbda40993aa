"""service.engine.images: pixel-exact against transformers' image processors, EXIF, modes,
animations, every limit and malformed input, and bombs refused before any decoding."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import warnings
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from export.clip import vision_config
from export.clip_validate import encode, picture
from service.engine.errors import InvalidImage, InvalidInput
from service.engine.images import ImageLimits, decode, preprocess, probe, to_pixels, to_rgb
from service.engine.manifest import VisionConfig
from tests.server import REPO_ROOT

transformers = pytest.importorskip("transformers")
CLIP = VisionConfig()  # CLIP ViT-B/32's preprocessor_config.json, field for field
LIMITS = ImageLimits()
SIZES = [(1, 1), (2, 3), (1, 60), (60, 1), (224, 224), (225, 224), (640, 480), (97, 61)]
# (format, mode, save options): every decoder and colour mode the engine accepts.
ENCODINGS = [("PNG", "RGB", {}), ("PNG", "RGBA", {}), ("PNG", "LA", {}), ("PNG", "L", {}), ("PNG", "P", {}),
             ("PNG", "P", {"transparency": 3}), ("PNG", "1", {}), ("JPEG", "RGB", {"quality": 85}),
             ("JPEG", "L", {}), ("JPEG", "CMYK", {}), ("WEBP", "RGB", {"quality": 80}), ("WEBP", "RGBA", {"lossless": True}),
             ("GIF", "P", {}), ("GIF", "L", {"transparency": 0}), ("BMP", "RGB", {}), ("BMP", "P", {})]


@pytest.fixture(scope="module")
def clip_processor():
    return transformers.CLIPImageProcessor()


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _reference(processor, image: Image.Image) -> np.ndarray:
    # channels_last: transformers otherwise guesses the channel axis and fails on a 1x1 image.
    return processor(image, return_tensors="np", input_data_format="channels_last")["pixel_values"][0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("fmt,mode,options", ENCODINGS, ids=[f"{f}-{m}-{len(o)}" for f, m, o in ENCODINGS])
def test_pixels_equal_clip_image_processor(clip_processor, fmt: str, mode: str, options: dict) -> None:
    rng = np.random.default_rng(len(fmt) * 7 + len(mode))
    for width, height in SIZES:
        data = _save(picture(rng, width, height).convert(mode), fmt, **options)
        ours = preprocess(data, CLIP, LIMITS)
        reference = _reference(clip_processor, _opened(data))
        assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
        assert np.abs(ours - reference).max() == 0.0, (fmt, mode, width, height)


@pytest.mark.parametrize("settings", [
    {"size": {"shortest_edge": 160}, "crop_size": {"height": 200, "width": 180}, "resample": 2},  # crop pads
    {"size": {"shortest_edge": 256}, "crop_size": 224, "resample": 0},
    {"size": {"shortest_edge": 64}, "crop_size": 64, "resample": 1, "do_rescale": False},
    {"resample": 4, "do_normalize": False}, {"resample": 5, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.2, 0.3, 0.4]},
])
def test_other_processor_settings_are_followed_exactly(settings: dict) -> None:
    processor = transformers.CLIPImageProcessor(**settings)
    config = vision_config(processor)
    rng = np.random.default_rng(5)
    for width, height in SIZES:
        image = picture(rng, width, height)
        assert np.abs(to_pixels(image, config) - _reference(processor, image)).max() == 0.0, (settings, width, height)


def test_exact_height_width_resize_matches_siglip_processor() -> None:
    processor = transformers.SiglipImageProcessor(size={"height": 256, "width": 192}, resample=2)
    config = VisionConfig(resize_shortest_edge=None, resize_height=256, resize_width=192, resample="bilinear",
                          do_center_crop=False, crop_height=None, crop_width=None, mean=(0.5,) * 3, std=(0.5,) * 3)
    config.check()
    rng = np.random.default_rng(6)
    for width, height in SIZES:
        image = picture(rng, width, height)
        ours = to_pixels(image, config)
        assert ours.shape == (3, 256, 192)
        assert np.abs(ours - _reference(processor, image)).max() == 0.0


def test_extreme_aspect_ratios_resize_the_crop_window_only(clip_processor) -> None:
    """Beyond EXACT_RESIZE_PIXELS only the window the crop keeps is resized: close to the full
    resize (which for 1 x 100 already makes 224 x 22,400 pixels), and bounded for 1 x 10^6."""
    rng = np.random.default_rng(4)
    for width, height in [(1, 100), (100, 1), (3, 400)]:
        image = picture(rng, width, height)
        ours, reference = to_pixels(image, CLIP), _reference(clip_processor, image)
        assert _cosine(ours, reference) > 0.999, (width, height)
    needle = _save(Image.new("RGB", (1, 1_000_000), (10, 200, 30)), "PNG")
    assert len(needle) < 10_000
    pixels = preprocess(needle, CLIP, LIMITS)
    assert pixels.shape == (3, 224, 224)
    assert np.abs(pixels - to_pixels(Image.new("RGB", (224, 224), (10, 200, 30)), CLIP)).max() == 0.0


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(clip_processor, orientation: int) -> None:
    image = picture(np.random.default_rng(orientation), 300, 200)
    data = encode(image, "JPEG", "RGB", orientation)
    assert _opened(data).getexif()[0x0112] == orientation
    ours = preprocess(data, CLIP, LIMITS)
    upright = ImageOps.exif_transpose(_opened(data))
    assert upright.size == ((200, 300) if orientation in (6, 8) else (300, 200))
    assert np.abs(ours - _reference(clip_processor, upright)).max() == 0.0
    # transformers alone ignores the tag: what it sees is the image as stored, a different picture.
    assert np.abs(ours - _reference(clip_processor, _opened(data))).max() > 0.1


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animations_give_their_first_frame(fmt: str) -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [Image.new("RGB", (64, 48), colour) for colour in colours]
    data = _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0,
                 **({"lossless": True} if fmt == "WEBP" else {}))
    assert probe(data, LIMITS).frames == 3
    first = decode(data, CLIP, LIMITS)
    assert first.getpixel((10, 10)) == colours[0]
    assert np.abs(preprocess(data, CLIP, LIMITS) - to_pixels(frames[0], CLIP)).max() == 0.0


def test_sixteen_bit_greyscale_is_scaled_not_clipped(clip_processor) -> None:
    ramp = np.linspace(0, 65535, 64 * 48).astype(np.uint16).reshape(48, 64)
    data = _save(Image.fromarray(ramp), "PNG")
    assert _opened(data).mode == "I;16"
    eight_bit = Image.fromarray(((ramp.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))
    ours = preprocess(data, CLIP, LIMITS)
    assert np.abs(ours - _reference(clip_processor, eight_bit)).max() == 0.0
    # Pillow's own convert("RGB") clips every value above 255: most of the ramp turns white.
    assert np.abs(ours - _reference(clip_processor, _opened(data))).max() > 1.0


def test_integer_and_float_modes_convert() -> None:
    values = np.array([[0, 257, 65535, 70000, -5]], dtype=np.int32)
    assert np.asarray(to_rgb(Image.fromarray(values, mode="I")))[0, :, 0].tolist() == [0, 1, 255, 255, 0]
    floats = Image.fromarray(np.array([[0.0, 100.4, 300.0]], dtype=np.float32), mode="F")
    assert np.asarray(to_rgb(floats))[0, :, 0].tolist() == [0, 100, 255]


def test_draft_mode_is_close_to_exact_and_only_touches_large_jpegs() -> None:
    image = picture(np.random.default_rng(9), 2000, 1500)
    draft = replace(LIMITS, draft=True)
    jpeg = encode(image, "JPEG", "RGB")
    exact, reduced = preprocess(jpeg, CLIP, LIMITS), preprocess(jpeg, CLIP, draft)
    assert _cosine(exact, reduced) > 0.999 and np.abs(exact - reduced).max() > 0.0
    # Under twice the resize target (448 px) a JPEG is decoded whole; other formats always are.
    for data in (encode(image.resize((640, 480)), "JPEG", "RGB"), _save(image.resize((900, 700)), "PNG")):
        assert np.abs(preprocess(data, CLIP, LIMITS) - preprocess(data, CLIP, draft)).max() == 0.0


def test_probe_reads_the_header_only() -> None:
    info = probe(_png_header(10_000, 10_000), replace(LIMITS, max_pixels=100_000_000))
    assert (info.format, info.width, info.height, info.frames, info.mode) == ("PNG", 10_000, 10_000, 1, "RGB")


# -- limits and malformed input ------------------------------------------------------------
def _png_header(width: int, height: int, *, full: bool = False) -> bytes:
    """A PNG that declares width x height RGB pixels and holds almost no data, or (full) every
    row, all black: a real decompression bomb (150 MB of pixels in about 150 kB)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    rows = b"".join(compressor.compress(row) for _ in range(height if full else 1)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _jpeg_header(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to claim width x height."""
    data = bytearray(_save(Image.new("RGB", (16, 16), (90, 20, 20)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_header(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("P", (8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    descriptor = data.index(b"\x2c")
    data[descriptor + 5:descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def _refused(data: bytes, limits: ImageLimits = LIMITS, config: VisionConfig = CLIP) -> str:
    with pytest.raises(InvalidImage) as caught:
        preprocess(data, config, limits)
    assert isinstance(caught.value, InvalidInput)
    return caught.value.message


def test_encoded_bytes_are_checked_first() -> None:
    assert _refused(b"") == "the image is empty (0 bytes)"
    # Over the byte limit: refused before Pillow even looks at the (garbage) bytes.
    assert _refused(b"x" * 101, replace(LIMITS, max_bytes=100)) == "the image has 101 bytes; the limit is 100"


@pytest.mark.parametrize("make", [_png_header, _jpeg_header, _gif_header])
def test_pixel_limit_is_read_from_the_header(make) -> None:
    assert _refused(make(8000, 5001)) == "the image has 8000x5001 = 40008000 pixels; the limit is 40000000"
    limits = replace(LIMITS, max_pixels=1000)
    assert _refused(make(40, 26), limits) == "the image has 40x26 = 1040 pixels; the limit is 1000"


@pytest.mark.parametrize("make", [_png_header, _jpeg_header, _gif_header])
def test_pillow_bomb_checks_neither_warn_nor_leak(make, monkeypatch: pytest.MonkeyPatch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        # Above Pillow's warning (89 MP) and refusal (179 MP) thresholds: our limit alone speaks.
        assert _refused(make(10_000, 10_000)).endswith("= 100000000 pixels; the limit is 40000000")
        assert _refused(make(20_000, 20_000)).endswith("= 400000000 pixels; the limit is 40000000")
        # The engine's limit, not Pillow's global, decides what passes.
        assert probe(make(10_000, 10_000), replace(LIMITS, max_pixels=300_000_000)).width == 10_000
    # Should someone turn Pillow's global guard back on, its refusal is still an InvalidImage.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    message = _refused(make(40, 26))
    assert message.startswith("the image has too many pixels") and message.endswith("the limit is 40000000")


def test_a_bomb_costs_no_memory() -> None:
    """A 50 MP bomb refused by the limit in a fresh process: peak memory stays flat, while
    decoding the same bytes (the control, with a higher limit) takes 150 MB."""
    # VmHWM (this process's peak RSS, in kB): ru_maxrss would carry the parent's peak over exec.
    script = (
        "import sys\n"
        "from service.engine.images import ImageLimits, preprocess\n"
        "from service.engine.errors import InvalidImage\n"
        "from service.engine.manifest import VisionConfig\n"
        "def peak():\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "    return int(status.split()[0])\n"
        "data = sys.stdin.buffer.read()\n"
        "before = peak()\n"
        "try:\n    preprocess(data, VisionConfig(), ImageLimits(max_pixels=int(sys.argv[1])))\n"
        "except InvalidImage as exc:\n    print(exc.message, file=sys.stderr)\n"
        "print((peak() - before) // 1024)\n")
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux /proc to read the peak memory")
    bomb = _png_header(7072, 7072, full=True)
    assert len(bomb) < 200_000
    grown = {}
    for limit in (40_000_000, 60_000_000):  # refused by the header check / let through to decoding
        done = subprocess.run([sys.executable, "-c", script, str(limit)], input=bomb, capture_output=True,
                              cwd=REPO_ROOT, timeout=120)
        assert done.returncode == 0, done.stderr
        grown[limit] = int(done.stdout)
    assert grown[40_000_000] < 20, grown  # MB
    assert grown[60_000_000] > 140, grown  # the control: decoding the same bytes does allocate


def test_frames_are_bounded() -> None:
    frames = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(5)]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert _refused(data, replace(LIMITS, max_frames=3)) == "the image has 5 frames; the limit is 3"
    assert preprocess(data, CLIP, replace(LIMITS, max_frames=5)).shape == (3, 224, 224)


@pytest.mark.parametrize("data", [b"not an image at all", b"\x00" * 64, b"data:image/png;base64,iVBORw0KGgo=",
                                  _save(Image.new("RGB", (4, 4)), "TIFF"), _save(Image.new("RGB", (4, 4)), "ICO"),
                                  _save(Image.new("RGB", (4, 4)), "PPM")],
                         ids=["text", "zeros", "data-uri", "tiff", "ico", "ppm"])
def test_garbage_and_unsupported_formats(data: bytes) -> None:
    assert _refused(data) == "the data is not a JPEG, PNG, WebP, GIF or BMP image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_truncated_and_corrupt_images(fmt: str) -> None:
    whole = _save(picture(np.random.default_rng(1), 120, 90), fmt)
    for cut in (whole[: len(whole) // 2], whole[:40]):
        message = _refused(cut)
        assert message.startswith(("the image could not be decoded", "the image header is malformed",
                                   "the data is not a")), message
    if fmt == "PNG":
        corrupt = bytearray(whole)
        start = corrupt.index(b"IDAT") + 8
        corrupt[start:start + 20] = b"\xff" * 20
        assert _refused(bytes(corrupt)).startswith("the image could not be decoded")


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_frames"):
        ImageLimits(max_frames=0)
    with pytest.raises(ValueError, match="max_pixels"):
        ImageLimits(max_pixels=-1)


def test_manifest_vision_block_round_trips() -> None:
    from service.engine.manifest import Manifest, ManifestError

    manifest = Manifest(name="m", dimensions=8, max_tokens=77, pooling="last", normalize=True,
                        modality="text+image", vision=CLIP)
    data = json.loads(json.dumps(manifest.to_json()))
    assert Manifest.from_json(data).vision == CLIP
    for field, value, says in [("resample", 7, "vision.resample"), ("do_center_crop", False, "vision.do_center_crop"),
                               ("crop_height", 0, "vision.crop_height"), ("std", [0.2, 0, 0.2], "vision.std"),
                               ("resize_height", 10, "vision.resize_shortest_edge")]:
        broken = json.loads(json.dumps(data))
        broken["vision"][field] = value
        with pytest.raises(ManifestError, match=says):
            Manifest.from_json(broken)
    del data["vision"]
    with pytest.raises(ManifestError, match="vision"):
        Manifest.from_json(data)

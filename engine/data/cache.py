"""Image cache, pixel rule: decode one image file into a ``size x size`` uint8 grayscale array, and the worker
that applies it to rows of the cache (store layout: ``cache_read``; orchestration: ``cache_build``).

Geometry (fixed, the same for every model; recorded in the cache manifest):

1. Resize so the SHORT side equals ``size``; the long side becomes ``int(size * long / short)`` (truncated),
   the rounding of torchvision ``Resize(int)`` (``_compute_resized_output_size``).
2. Centre-crop ``size x size`` with torchvision ``CenterCrop`` offsets ``int(round((L - size) / 2))``.

So, on the full-decode path, a cached image equals torchvision ``Resize(size, BICUBIC) + CenterCrop(size)`` of the
grayscale image with the PIL backend, and a later ``CenterCrop(224)`` of a 256 cache equals the Medical MAE eval
transform ``Resize(256) + CenterCrop(224)`` of the original (centre crops compose exactly).

Resampling: ``PIL.Image.Resampling.BICUBIC``. Pillow's resize is antialiased: its kernel support is widened by the
downscale factor, so a 2320 -> 256 reduction averages every source pixel instead of skipping rows.

JPEG draft: libjpeg can decode at 1/2, 1/4 or 1/8 scale (DCT scaling), which skips most of the inverse DCT and the
full-size resize (full-size CheXpert: 2.1x faster than decode + resize, docs/performance.md). It is used only when
a factor of at least 2 fits; ``Image.draft`` picks the largest factor that keeps both sides >= the resize target,
and we re-check that after the call. The box Pillow returns maps the reduced image back onto the original extent,
so the geometry is unchanged and only the low-pass differs (at most 3-4 grey levels from the full-decode result on
test images). An RGB JPEG decoded in draft mode yields libjpeg's luma (same ITU-R 601 weights as ``convert("L")``).
No EXIF orientation is applied (torchvision does not either; CheXpert JPEGs carry none).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageFile, UnidentifiedImageError, features

from engine.data.cache_read import BAD, IMAGES_FILE, OK, STATUS_FILE, open_array

RESAMPLE = Image.Resampling.BICUBIC
RESAMPLE_NAME = "PIL.Image.Resampling.BICUBIC (antialiased: kernel support scaled by the downscale factor)"
GEOMETRY_RULE = (
    "resize short side to size (long side int(size * long / short), torchvision Resize rounding), "
    "then centre crop size x size (offsets int(round((L - size) / 2)), torchvision CenterCrop)"
)
DRAFT_RULE = "JPEG only: Image.draft('L', resize target) = libjpeg DCT scaling by 1/2, 1/4 or 1/8, never below target"

# 8-bit modes converted to "L" with Pillow's ITU-R 601-2 luma; anything else (16-bit, float, CMYK) is refused.
ACCEPTED_MODES: frozenset[str] = frozenset({"L", "RGB", "RGBA", "LA", "P", "1"})


class UnsupportedImageError(ValueError):
    """The file decodes but is not an 8-bit grayscale or RGB image."""


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to ``size`` with torchvision's rounding."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """PIL crop box (left, top, right, bottom) of the centred ``size x size`` square (torchvision offsets)."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


Box = tuple[float, float, float, float]


def open_reduced(path: Path, size: int) -> tuple[Image.Image, tuple[int, int], Box | None]:
    """Open ``path``, asking libjpeg for a reduced-scale decode when the file is at least twice the target.

    Returns the opened (not yet loaded) image, the resize target computed from the ORIGINAL size, and the draft
    box in reduced-image coordinates (None on the full-decode path). The caller closes the image.
    """
    img = Image.open(path)
    target = resized_size(*img.size, size)
    if img.format != "JPEG" or min(img.width // target[0], img.height // target[1]) < 2:
        return img, target, None  # no 1/2 reduction fits: full decode, exactly the torchvision result
    original = img.size
    drafted = img.draft("L", target)
    if drafted is None or img.size == original:
        return img, target, None
    if img.width >= target[0] and img.height >= target[1]:
        return img, target, drafted[1]
    # Draft went below the target (a Pillow rule change): decode at full size instead.
    img.close()
    return Image.open(path), target, None


def load_square(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` and return the cached pixels: uint8 array of shape (size, size).

    Raises FileNotFoundError, UnsupportedImageError, or whatever Pillow raises for a corrupt or truncated file
    (truncated files raise because ``ImageFile.LOAD_TRUNCATED_IMAGES`` must be False; the builder enforces it).
    """
    img, target, box = open_reduced(Path(path), size)
    with img:
        if img.mode not in ACCEPTED_MODES:
            raise UnsupportedImageError(f"unsupported image mode {img.mode} (needs 8-bit grayscale or RGB)")
        img.load()
        gray = img if img.mode == "L" else img.convert("L")
        resized = gray.resize(target, RESAMPLE, box=box)
        square = resized.crop(center_crop_box(*target, size))
        return np.asarray(square, dtype=np.uint8)


@contextlib.contextmanager
def refuse_truncated() -> Iterator[None]:
    """Force ``ImageFile.LOAD_TRUNCATED_IMAGES = False`` inside the block, so truncated files raise.

    Training code often sets it True globally; a cache built that way would silently store grey-filled images.
    """
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def pixel_rule() -> dict[str, str]:
    """Manifest fields that define the pixels: geometry, filter, draft rule and the decoder that produced them."""
    turbo = features.version("libjpeg_turbo")
    jpeg = f"libjpeg-turbo {turbo}" if turbo else f"libjpeg {features.version('jpg')}"
    return {
        "geometry": GEOMETRY_RULE,
        "resample": RESAMPLE_NAME,
        "draft": DRAFT_RULE,
        "decoder": f"Pillow {PIL.__version__}, {jpeg}",
    }


def describe_failure(exc: BaseException) -> str:
    """One-line reason for a bad image, as listed in ``bad_images.csv``."""
    if isinstance(exc, FileNotFoundError):
        reason = "missing file"
    elif isinstance(exc, (PermissionError, IsADirectoryError)):
        reason = f"unreadable: {exc.strerror}"
    elif isinstance(exc, UnsupportedImageError):
        reason = str(exc)
    elif isinstance(exc, UnidentifiedImageError):
        reason = "corrupt: not a recognised image format"
    else:
        reason = f"corrupt: {type(exc).__name__}: {exc}"
    return " ".join(reason.split())


class Writer:
    """Decodes rows into the cache files of one process (the parent, or one pool worker)."""

    def __init__(self, image_root: str, out_dir: str, n: int, size: int) -> None:
        self.image_root, self.size = Path(image_root), size
        self.images = open_array(Path(out_dir), IMAGES_FILE, (n, size, size), "r+")
        self.status = open_array(Path(out_dir), STATUS_FILE, (n,), "r+")

    def process(self, rows: list[int], ids: list[str]) -> list[tuple[int, str | None]]:
        """Decode each (row, id), write its pixels, then mark the rows; return (row, reason or None)."""
        results: list[tuple[int, str | None]] = []
        for row, image_id in zip(rows, ids, strict=False):
            try:
                self.images[row] = load_square(self.image_root / image_id, self.size)
                results.append((row, None))
            except Exception as exc:  # one bad file must not stop the build; its reason is reported instead
                self.images[row] = 0  # bad rows hold zeros whatever they held before, so rebuilds are identical
                results.append((row, describe_failure(exc)))
        # msync pixels before the status says ok: then even a machine crash cannot leave ok rows without pixels.
        self.images.flush()
        self.status[np.asarray(rows)] = [OK if reason is None else BAD for _, reason in results]
        self.status.flush()
        return results


_WRITER: Writer | None = None


def start_worker(image_root: str, out_dir: str, n: int, size: int) -> None:
    """Pool initializer: map the cache files once per worker process and refuse truncated images."""
    global _WRITER
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a fresh spawned process: nothing to restore
    _WRITER = Writer(image_root, out_dir, n, size)


def process_chunk(chunk: tuple[list[int], list[str]]) -> list[tuple[int, str | None]]:
    """Pool task: one chunk of (rows, ids)."""
    assert _WRITER is not None, "start_worker did not run"
    return _WRITER.process(*chunk)

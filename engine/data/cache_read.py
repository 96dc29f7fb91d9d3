"""Image cache, store layout: create and validate the files, and read a finished cache (``ImageCache``).

A cache folder holds one image size (a 448 px cache for REMEDIS is a separate folder from the 256 px one):

- ``images.u8``      raw uint8 bytes, a C-order numpy memmap of shape (N, size, size); row r is index row r.
- ``status.u8``      raw uint8 memmap of shape (N,): 0 todo, 1 ok, 2 bad. Bad rows hold zeros.
- ``index.parquet``  columns ``row`` (Int64) and ``image_id`` (String): the row of every image, in build order.
- ``manifest.json``  format version, size, shape, dtype, geometry rule, resample filter, draft rule, N, source
                     ``image_root``, ``created`` / ``finished`` (UTC ISO; ``finished`` is null while rows are todo),
                     ``counts`` (ok / bad / todo), and the Pillow + libjpeg versions that decoded it.
- ``bad_images.csv`` columns ``image_id``, ``reason``; present only when the last build found bad images.
- ``.lock``          advisory lock (flock) held by a running build; the kernel drops it when the build dies.

``status.u8`` is the commit record: a builder msyncs a chunk's pixels before it marks those rows ok, so a killed
build leaves each row either todo (redone by the next run) or ok (pixels on disk), never ok with missing pixels.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from engine.data.errors import DataError
from engine.data.io import atomic_path, write_json, write_parquet

FORMAT_VERSION = 1
IMAGES_FILE = "images.u8"
STATUS_FILE = "status.u8"
INDEX_FILE = "index.parquet"
MANIFEST_FILE = "manifest.json"
BAD_FILE = "bad_images.csv"
LOCK_FILE = ".lock"

PENDING, OK, BAD = 0, 1, 2
RESUME_HINT = "run cache again to resume (only unfinished rows are processed)"


def read_manifest(out_dir: Path) -> dict:
    """The cache's manifest; DataError when the folder holds no readable cache."""
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        raise DataError("no image cache here (manifest.json missing)", file=path, hint="run the cache stage first")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read cache manifest: {exc}", file=path) from exc


def read_index(out_dir: Path) -> list[str]:
    """Image ids of the cache in row order (checks that ``row`` is 0..N-1)."""
    path = Path(out_dir) / INDEX_FILE
    if not path.is_file():
        raise DataError("cache index missing", file=path)
    index = pl.read_parquet(path)
    if index["row"].to_list() != list(range(index.height)):
        raise DataError("cache index rows are not 0..N-1 in order", file=path, column="row")
    return index["image_id"].to_list()


def read_bad_images(out_dir: Path) -> list[tuple[str, str]]:
    """(image_id, reason) of the last build's bad images; empty when ``bad_images.csv`` is absent."""
    path = Path(out_dir) / BAD_FILE
    if not path.is_file():
        return []
    frame = pl.read_csv(path, infer_schema=False)
    return list(zip(frame["image_id"].to_list(), frame["reason"].to_list(), strict=False))


def open_array(out_dir: Path, name: str, shape: tuple[int, ...], mode: str) -> np.memmap:
    """Memmap ``out_dir/name`` as uint8 of ``shape``; DataError when the file size disagrees (damaged cache)."""
    path = Path(out_dir) / name
    expected = int(np.prod(shape))
    actual = path.stat().st_size if path.is_file() else -1
    if actual != expected:
        raise DataError(f"cache file has {actual} bytes, expected {expected} for shape {shape}", file=path)
    return np.memmap(path, dtype=np.uint8, mode=mode, shape=shape)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _allocate(path: Path, n_bytes: int) -> None:
    """Create a zero-filled file of ``n_bytes`` atomically, with its disk blocks reserved.

    Reserving (posix_fallocate) matters: writing through a memmap into a sparse file on a full disk kills the
    process with SIGBUS instead of raising; a failed reservation is a clear error up front.
    """
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, n_bytes)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise DataError(f"not enough disk space for the cache ({n_bytes / 1e9:.2f} GB needed)", file=path) from exc
        finally:
            os.close(fd)


def create_store(out_dir: Path, ids: list[str], size: int, image_root: Path, rule: dict[str, str]) -> dict:
    """Create empty cache files for ``ids`` (every row todo) and return the manifest.

    The manifest is removed first and written last, so a folder without one is never mistaken for a cache.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    (out_dir / BAD_FILE).unlink(missing_ok=True)
    n = len(ids)
    _allocate(out_dir / IMAGES_FILE, n * size * size)
    _allocate(out_dir / STATUS_FILE, n)
    index = pl.DataFrame({"row": pl.Series(range(n), dtype=pl.Int64), "image_id": pl.Series(ids, dtype=pl.String)})
    write_parquet(index, out_dir / INDEX_FILE)
    manifest = {
        "format_version": FORMAT_VERSION,
        "size": size,
        "n_images": n,
        "shape": [n, size, size],
        "dtype": "uint8",
        "channels": 1,
        **{k: v for k, v in rule.items() if k != "decoder"},
        "decoders": [rule["decoder"]],
        "image_root": str(image_root),
        "files": {"images": IMAGES_FILE, "status": STATUS_FILE, "index": INDEX_FILE, "bad": BAD_FILE},
        "created": _now(),
        "finished": None,
        "counts": {"ok": 0, "bad": 0, "todo": n},
    }
    write_json(manifest, out_dir / MANIFEST_FILE)
    return manifest


def validate_store(out_dir: Path, ids: list[str], size: int, image_root: Path, rule: dict[str, str]) -> str | None:
    """Why the existing cache in ``out_dir`` cannot be resumed for this request, or None when it can."""
    manifest = read_manifest(out_dir)
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"format version {manifest.get('format_version')}, this code writes {FORMAT_VERSION}"
    if manifest.get("size") != size:
        return f"it holds {manifest.get('size')} px images, {size} px asked (each size is a separate cache folder)"
    changed = [k for k in ("geometry", "resample", "draft") if manifest.get(k) != rule[k]]
    if changed:
        return f"its pixel rule differs ({', '.join(changed)})"
    if manifest.get("image_root") != str(image_root):
        # The small and full-size CheXpert releases share image ids: never mix them in one cache.
        return f"it was built from image_root {manifest.get('image_root')}, not {image_root}"
    try:
        cached = read_index(out_dir)
    except DataError as exc:
        return f"its index is unreadable ({exc.problem})"
    if cached != ids:
        return _id_difference(cached, ids)
    for name, n_bytes in ((IMAGES_FILE, len(ids) * size * size), (STATUS_FILE, len(ids))):
        path = out_dir / name
        if not path.is_file() or path.stat().st_size != n_bytes:
            return f"{name} is missing or has the wrong size (damaged)"
    return None


def _id_difference(cached: list[str], ids: list[str]) -> str:
    """Describe how two id lists differ: added / removed ids, or only their order."""
    added, removed = sorted(set(ids) - set(cached)), sorted(set(cached) - set(ids))
    if not added and not removed:
        row = next(i for i, (a, b) in enumerate(zip(cached, ids, strict=False)) if a != b)
        return f"same image ids in another order (first difference at row {row}: {cached[row]!r} vs {ids[row]!r})"
    parts = [f"{len(added)} new (e.g. {added[:3]})"] if added else []
    parts += [f"{len(removed)} no longer asked (e.g. {removed[:3]})"] if removed else []
    return f"its image ids differ: {', '.join(parts)}; cache has {len(cached)}, request has {len(ids)}"


def count_status(out_dir: Path, n: int) -> dict[str, int]:
    """Rows per status, read from ``status.u8`` (the authority; manifest counts are a copy)."""
    counts = np.bincount(open_array(out_dir, STATUS_FILE, (n,), "r"), minlength=3)
    return {"ok": int(counts[OK]), "bad": int(counts[BAD]), "todo": int(counts[PENDING])}


def write_manifest(out_dir: Path, manifest: dict, counts: dict[str, int], decoder: str) -> dict:
    """Rewrite the manifest with fresh counts, ``finished`` set when no row is todo, and this run's decoder."""
    updated = {**manifest, "counts": counts, "finished": _now() if counts["todo"] == 0 else None}
    if decoder not in updated["decoders"]:
        updated["decoders"] = [*updated["decoders"], decoder]  # a resume under another Pillow/libjpeg
    write_json(updated, out_dir / MANIFEST_FILE)
    return updated


class ImageCache:
    """Read-only view of a finished cache: ``get(ids)`` returns uint8 arrays [n, size, size].

    Pickles as its folder path and reopens on unpickling, so DataLoader workers map the file instead of copying it.
    """

    def __init__(self, out_dir: Path, manifest: dict, image_ids: list[str], array: np.memmap, status: np.ndarray):
        self.out_dir = Path(out_dir)
        self.manifest = manifest
        self.image_ids: tuple[str, ...] = tuple(image_ids)
        self.array = array
        self._status = status
        self._rows = {image_id: row for row, image_id in enumerate(self.image_ids)}

    @classmethod
    def open(cls, out_dir: str | Path) -> ImageCache:
        """Open the cache in ``out_dir``; refuse it while any row is still todo."""
        out_dir = Path(out_dir)
        manifest = read_manifest(out_dir)
        image_ids = read_index(out_dir)
        n, size = len(image_ids), int(manifest["size"])
        if manifest.get("n_images") != n:
            raise DataError(f"manifest says {manifest.get('n_images')} images, index has {n}", file=out_dir)
        status = np.array(open_array(out_dir, STATUS_FILE, (n,), "r"))
        todo = np.flatnonzero(status == PENDING)
        if todo.size:
            raise DataError(
                f"image cache unfinished: {todo.size} of {n} rows not done",
                file=out_dir / STATUS_FILE,
                rows=[image_ids[r] for r in todo[:5]],
                n_bad=int(todo.size),
                hint=RESUME_HINT,
            )
        array = open_array(out_dir, IMAGES_FILE, (n, size, size), "r")
        return cls(out_dir, manifest, image_ids, array, status)

    def __reduce__(self) -> tuple:
        return (ImageCache.open, (str(self.out_dir),))

    @property
    def size(self) -> int:
        """Side of the stored square images, in pixels."""
        return int(self.manifest["size"])

    @property
    def bad_ids(self) -> list[str]:
        """Ids whose image could not be cached (their rows hold zeros)."""
        return [self.image_ids[r] for r in np.flatnonzero(self._status == BAD)]

    def __len__(self) -> int:
        return len(self.image_ids)

    def row_of(self, image_id: str) -> int:
        """Row of ``image_id`` in ``array``."""
        return int(self.rows_of([image_id])[0])

    def rows_of(self, image_ids: Sequence[str] | pl.Series) -> np.ndarray:
        """Rows (int64) of several ids; DataError naming the ids that are not in the cache."""
        ids = [image_ids] if isinstance(image_ids, str) else list(image_ids)
        missing = [i for i in ids if i not in self._rows]
        if missing:
            raise DataError(
                "image id(s) not in the cache",
                file=self.out_dir / INDEX_FILE,
                column="image_id",
                rows=missing[:5],
                n_bad=len(missing),
            )
        return np.fromiter((self._rows[i] for i in ids), dtype=np.int64, count=len(ids))

    def get(self, image_ids: Sequence[str] | pl.Series) -> np.ndarray:
        """Pixels of ``image_ids`` as a new uint8 array [n, size, size]; DataError for ids marked bad."""
        rows = self.rows_of(image_ids)
        bad = rows[self._status[rows] == BAD]
        if bad.size:
            raise DataError(
                "image(s) marked bad in the cache (no pixels)",
                file=self.out_dir / BAD_FILE,
                column="image_id",
                rows=[self.image_ids[r] for r in bad[:5]],
                n_bad=int(bad.size),
                hint="exclude them from the cohort (mark_excluded) before reading",
            )
        return np.asarray(self.array[rows])

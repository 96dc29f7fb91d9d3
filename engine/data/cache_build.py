"""Image cache, builder: decode every cohort image once into the store described in ``cache_read``.

Parallel over all cores (spawned worker processes; each maps ``images.u8`` r+ and writes its own rows), resumable
(rows whose status is ok are never redone, so a killed build continues where it stopped), and loud about bad
files: missing, truncated or corrupt images are listed with a reason, and the call raises unless ``skip_bad``.
Bad rows are retried by every run, so fixing a file and rerunning heals the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from engine.data.cache import Writer, pixel_rule, process_chunk, refuse_truncated, start_worker
from engine.data.cache_read import (
    BAD_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    OK,
    RESUME_HINT,
    STATUS_FILE,
    count_status,
    create_store,
    open_array,
    read_manifest,
    validate_store,
    write_manifest,
)
from engine.data.errors import DataError
from engine.data.io import write_csv

MAX_CHUNK = 64  # rows per task: ~1 s of decoding, so a kill loses little and the progress bar moves


@dataclass(frozen=True)
class CacheReport:
    """Outcome of one ``build_cache`` call. ``n_total == n_ok + n_bad + n_skipped_already_done``.

    ``n_ok`` and ``n_bad`` count rows processed by this call; ``images_per_s`` is (n_ok + n_bad) / seconds
    (wall time of the whole call, pool start included).
    """

    n_total: int
    n_ok: int
    n_bad: int
    n_skipped_already_done: int
    bad: list[tuple[str, str]]
    seconds: float
    images_per_s: float


class BadImagesError(DataError):
    """Raised by ``build_cache`` without ``skip_bad`` when images were bad; ``.report`` holds the full outcome."""

    def __init__(self, report: CacheReport, bad_file: Path) -> None:
        self.report = report
        super().__init__(
            f"{report.n_bad} image(s) could not be cached (the cache kept its progress)",
            file=bad_file,
            column="image_id",
            rows=[f"{image_id} ({reason})" for image_id, reason in report.bad[:5]],
            n_bad=report.n_bad,
            hint="fix or restore them and rerun, or rerun with skip_bad (--skip-bad) and mark them excluded",
        )


def build_cache(
    image_ids: Sequence[str] | pl.Series,
    *,
    image_root: Path,
    out_dir: Path,
    size: int = 256,
    workers: int | None = None,
    skip_bad: bool = False,
    force: bool = False,
    progress: bool = True,
) -> CacheReport:
    """Decode ``image_root / image_id`` for every id into a ``size x size`` uint8 cache in ``out_dir``.

    Resumes an existing cache built from the same ids, size and root; ``force`` rebuilds from scratch instead
    (and is required when they differ). Raises ``BadImagesError`` (a DataError) listing bad images unless
    ``skip_bad``, after processing every row and writing ``bad_images.csv``.
    """
    start = time.perf_counter()
    ids = normalise_ids(image_ids)
    if size < 1:
        raise DataError(f"cache size must be a positive number of pixels, got {size}")
    image_root, out_dir = Path(image_root).resolve(), Path(out_dir)
    if not image_root.is_dir():
        raise DataError("image root is not a folder", file=image_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        rule = pixel_rule()
        manifest = _prepare(ids, image_root, out_dir, size, force, rule)
        todo = np.flatnonzero(open_array(out_dir, STATUS_FILE, (len(ids),), "r") != OK)
        skipped = len(ids) - todo.size
        bad = _process(todo, ids, image_root, out_dir, size, _n_workers(workers, todo.size), progress)
        _finish(out_dir, manifest, bad, rule["decoder"])
    seconds = time.perf_counter() - start
    report = CacheReport(
        n_total=len(ids),
        n_ok=int(todo.size) - len(bad),
        n_bad=len(bad),
        n_skipped_already_done=int(skipped),
        bad=bad,
        seconds=seconds,
        images_per_s=todo.size / seconds if seconds > 0 else 0.0,
    )
    if bad and not skip_bad:
        raise BadImagesError(report, out_dir / BAD_FILE)
    return report


def normalise_ids(image_ids: Sequence[str] | pl.Series) -> list[str]:
    """Ids as a list of relative paths; DataError on an empty list, nulls, duplicates or paths leaving the root."""
    ids = list(image_ids)
    if not ids:
        raise DataError("no image ids to cache", column="image_id")
    nulls = [i for i, v in enumerate(ids) if not isinstance(v, str) or not v]
    if nulls:
        raise DataError("image ids must be non-empty strings", column="image_id", rows=nulls[:5], n_bad=len(nulls))
    dups = sorted(v for v, count in Counter(ids).items() if count > 1)
    if dups:
        raise DataError("duplicate image ids", column="image_id", rows=dups[:5], n_bad=len(dups))
    escaping = [v for v in ids if os.path.isabs(v) or ".." in Path(v).parts]
    if escaping:
        raise DataError(
            "image ids must be paths relative to the image root",
            column="image_id",
            rows=escaping[:5],
            n_bad=len(escaping),
        )
    return ids


def _prepare(ids: list[str], image_root: Path, out_dir: Path, size: int, force: bool, rule: dict) -> dict:
    """Manifest of a store ready for ``ids``: the existing one when it matches, else a new one."""
    if (out_dir / MANIFEST_FILE).is_file() and not force:
        problem = validate_store(out_dir, ids, size, image_root, rule)
        if problem is None:
            return read_manifest(out_dir)
        raise DataError(
            f"existing cache does not match this request: {problem}",
            file=out_dir / MANIFEST_FILE,
            hint="pass force (--force) to rebuild it from scratch, or choose another out_dir",
        )
    return create_store(out_dir, ids, size, image_root, rule)


def _n_workers(workers: int | None, n_todo: int) -> int:
    """Requested workers, default every core this process may use (sched_getaffinity respects cgroups)."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    return max(1, min(workers, n_todo))


def _chunks(todo: np.ndarray, ids: list[str], workers: int) -> list[tuple[list[int], list[str]]]:
    """Consecutive todo rows in tasks of at most MAX_CHUNK, at least ~8 tasks per worker for load balance."""
    per = max(1, min(MAX_CHUNK, math.ceil(todo.size / (workers * 8))))
    rows = todo.tolist()
    return [(rows[i : i + per], [ids[r] for r in rows[i : i + per]]) for i in range(0, len(rows), per)]


def _process(
    todo: np.ndarray, ids: list[str], image_root: Path, out_dir: Path, size: int, workers: int, progress: bool
) -> list[tuple[str, str]]:
    """Run every todo row through the workers; return (image_id, reason) of bad rows in row order."""
    failures: list[tuple[int, str]] = []
    chunks = _chunks(todo, ids, workers)
    with tqdm(total=int(todo.size), unit="img", desc=f"cache {size}px", disable=not progress) as bar:
        for results in _run_chunks(chunks, (str(image_root), str(out_dir), len(ids), size), workers):
            failures.extend((row, reason) for row, reason in results if reason is not None)
            bar.update(len(results))
    return [(ids[row], reason) for row, reason in sorted(failures)]


def _run_chunks(chunks: list, init_args: tuple, workers: int) -> Iterator[list[tuple[int, str | None]]]:
    """Yield each chunk's results as it completes: in-process for one worker, else a spawned process pool.

    Spawn, not fork: the parent may hold polars threads. ProcessPoolExecutor, not Pool: a worker killed by the
    OOM killer breaks the pool with an error instead of hanging the build forever.
    """
    if workers == 1:
        writer = Writer(*init_args)
        with refuse_truncated():
            for chunk in chunks:
                yield writer.process(*chunk)
        return
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=start_worker, initargs=init_args)
    try:
        for future in as_completed([executor.submit(process_chunk, chunk) for chunk in chunks]):
            yield future.result()
    except BrokenProcessPool as exc:
        raise DataError(
            "a cache worker process died (killed, out of memory, or crashed in the decoder); finished rows are kept",
            hint=RESUME_HINT,
        ) from exc
    finally:
        executor.shutdown(wait=True, cancel_futures=True)  # on error or Ctrl-C: let running chunks finish only


def _finish(out_dir: Path, manifest: dict, bad: list[tuple[str, str]], decoder: str) -> None:
    """Record counts and the finish time in the manifest; write or remove ``bad_images.csv``."""
    counts = count_status(out_dir, int(manifest["n_images"]))
    bad_path = out_dir / BAD_FILE
    if bad:
        write_csv(pl.DataFrame(bad, schema={"image_id": pl.String, "reason": pl.String}, orient="row"), bad_path)
    else:
        bad_path.unlink(missing_ok=True)
    write_manifest(out_dir, manifest, counts, decoder)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``out_dir/.lock``: two builds on one folder would race on the manifest."""
    with open(out_dir / LOCK_FILE, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DataError("another cache build is running on this folder", file=out_dir) from exc
        yield

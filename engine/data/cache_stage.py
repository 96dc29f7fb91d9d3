"""The ``cache`` stage: cache every usable image of a cohort or pool table, and flag bad ones in the table."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.data.cache_build import CacheReport, build_cache
from engine.data.cache_exclusions import ids_to_cache, mark_excluded
from engine.data.errors import DataError
from engine.data.io import read_table, require_columns


def cache_images(*, table: Path, image_root: Path, out_dir: Path, size: int = 256, workers: int | None = None,
                 skip_bad: bool = False, force: bool = False, progress: bool = True,
                 dataset: str | None = None) -> CacheReport:
    """Cache the images of ``table`` (``image_id`` column); rows another stage excluded are skipped, and counted.

    With ``skip_bad``, missing or corrupt images are written into the table's ``excluded_reason`` column as
    ``cache: <reason>`` so that later stages exclude them visibly; a later run retries them and clears the mark
    of any file repaired since. ``dataset`` keeps the rows of one dataset of a pool table (each dataset's ids are
    relative to its own image root); the rows of the others are counted as left out.
    """
    frame = read_table(table, what="cohort/pool table")
    require_columns(frame, ("image_id", *(("dataset",) if dataset else ())), file=table, what="cohort/pool table")
    if dataset is not None:
        kept = frame.filter(pl.col("dataset") == dataset)
        if kept.is_empty():
            raise DataError(f"no rows of dataset {dataset!r}", file=table, column="dataset",
                            hint=f"datasets present: {', '.join(sorted(frame['dataset'].unique().to_list()))}")
        print(f"dataset {dataset}: {kept.height:,} of {frame.height:,} rows (the other datasets are not cached here)")
        frame = kept
    ids, left_out = ids_to_cache(frame)
    if left_out:
        print(f"skipping {left_out:,} row(s) excluded by an earlier stage (column excluded_reason)")
    report = build_cache(ids, image_root=image_root, out_dir=out_dir, size=size, workers=workers,
                         skip_bad=skip_bad, force=force, progress=progress)
    print(f"cache {out_dir}: {report.n_total:,} images ({report.n_ok:,} decoded now, "
          f"{report.n_skipped_already_done:,} already done, {report.n_bad:,} bad) "
          f"in {report.seconds:.1f} s, {report.images_per_s:.0f} images/s")
    if dataset is None and (report.bad or "excluded_reason" in frame.columns):
        marked = mark_excluded(Path(table), report.bad)  # also clears marks of images repaired since
        if marked:
            print(f"marked {marked:,} bad image(s) as excluded in {table} (column excluded_reason)")
    return report

"""Atomic writers and table readers shared by every stage: nothing is ever half-written.

Writers write to a temporary file in the destination folder and rename it over the target
(``os.replace`` is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from engine.data.errors import DataError, OutputExistsError


def check_output(path: str | Path, *, force: bool) -> Path:
    """Refuse to overwrite an existing output unless ``force``; create the parent folder."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the output the mode a plain open() would have (0666 minus umask).
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write a polars frame to parquet atomically (zstd)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd")
    return Path(path)


def write_json(obj: object, path: str | Path) -> Path:
    """Write JSON atomically, pretty-printed, keys in insertion order."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)


def write_csv(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write a polars frame to CSV atomically."""
    with atomic_path(path) as tmp:
        frame.write_csv(tmp)
    return Path(path)


def read_table(path: str | Path, *, what: str) -> pl.DataFrame:
    """Read a CSV (optionally gzipped), parquet or xlsx file as strings-first polars frame.

    CSV columns are read as strings so that label and id columns keep their raw form; callers cast.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found", file=path)
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pl.read_parquet(path)
        if name.endswith((".xlsx", ".xls")):
            return _read_excel(path)
        return pl.read_csv(path, infer_schema=False, null_values=[""])
    except DataError:
        raise
    except Exception as exc:  # polars/openpyxl raise many types; name the file in one message
        raise DataError(f"cannot read {what}: {exc}", file=path) from exc


def _read_excel(path: Path) -> pl.DataFrame:
    """Read the first sheet of an xlsx file with openpyxl (no extra engine), every cell as a string."""
    import openpyxl

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = workbook.worksheets[0].iter_rows(values_only=True)
        header = [str(h) if h is not None else "" for h in next(rows)]
        data = [["" if v is None else str(v) for v in row] for row in rows]
    finally:
        workbook.close()
    columns = {name: [row[i] if i < len(row) else "" for row in data] for i, name in enumerate(header)}
    frame = pl.DataFrame(columns, schema={name: pl.String for name in header})
    return frame.with_columns(pl.col(name).replace("", None) for name in header)


def require_columns(frame: pl.DataFrame, columns: tuple[str, ...] | list[str], *, file: str | Path, what: str) -> None:
    """Fail with a message naming missing columns and the closest existing names (misspellings)."""
    import difflib

    missing = [c for c in columns if c not in frame.columns]
    if not missing:
        return
    hints = []
    for col in missing:
        close = difflib.get_close_matches(col, frame.columns, n=1, cutoff=0.6)
        hints.append(f"{col!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise DataError(
        f"{what} lacks required column(s): {', '.join(hints)}",
        file=file,
        column=missing[0],
        hint=f"columns present: {', '.join(frame.columns)}",
    )

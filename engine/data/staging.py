"""Write a whole output folder atomically: build it in a hidden sibling, then swap it in."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from engine.data.errors import DataError, OutputExistsError


@contextlib.contextmanager
def staging_dir(out_dir: Path, *, force: bool, marker: str) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``out_dir`` only if the block succeeds.

    A non-empty ``out_dir`` is replaced only with ``force``, and only if it is itself synthetic (has the
    ``marker`` file, e.g. synthetic.json), so --force can never delete a real dataset.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError("output path exists and is not a folder", file=out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise OutputExistsError(out_dir)
        if not (out_dir / marker).is_file():
            raise DataError("refusing to replace a folder that is not synthetic output (no marker file)",
                            file=out_dir, hint=f"{marker} is missing; choose an empty or new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset folder should be readable like any other
    try:
        yield tmp
        old = out_dir.with_name(f"{tmp.name}.old")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""One error type for bad input: it names the file, the column and example offending rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file, the column and up to five offending rows."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        column: str | None = None,
        rows: Sequence[object] = (),
        n_bad: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.column = column
        self.rows = list(rows)
        self.n_bad = n_bad if n_bad is not None else len(self.rows)
        parts = [problem]
        if self.file:
            parts.append(f"file: {self.file}")
        if column:
            parts.append(f"column: {column!r}")
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:5])
            more = f" (and {self.n_bad - 5} more)" if self.n_bad > 5 else ""
            parts.append(f"{self.n_bad} offending row(s), e.g. {shown}{more}")
        if hint:
            parts.append(hint)
        super().__init__("\n  ".join(parts))


class OutputExistsError(FileExistsError):
    """The output path exists and --force was not given."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"output exists: {path} (pass --force to overwrite)")


def example_rows(frame, column: str, *, row_column: str = "_row", k: int = 5) -> list[str]:
    """Describe up to ``k`` offending rows of a polars frame as ``line N: column='value'``.

    ``row_column`` holds the 0-based data-row number (``with_row_index``); the line number adds the header line,
    so it matches what an editor shows for a CSV.
    """
    head = frame.head(k)
    values = head[column].to_list()
    if row_column in head.columns:
        rows = head[row_column].to_list()
        return [f"line {row + 2}: {column}={value!r}" for row, value in zip(rows, values, strict=True)]
    return [f"{column}={value!r}" for value in values]


def keyed_examples(frame, column: str, *, key: str = "image_id", k: int = 5) -> list[str]:
    """Describe up to ``k`` offending rows of a polars frame as ``<key value>: 'value'`` (rows without a line)."""
    return [f"{ident}: {value!r}" for ident, value in frame.select(key, column).head(k).iter_rows()]

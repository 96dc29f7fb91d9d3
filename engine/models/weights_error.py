"""The error of every checkpoint reader and converter; torch-free so the REMEDIS converter runs next to TensorFlow."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path


class WeightsError(ValueError):
    """A checkpoint that cannot be used. The message names the file, the problem and up to eight offending keys."""

    def __init__(self, problem: str, *, file: str | Path | None = None, keys: Collection[str] = (),
                 hint: str | None = None) -> None:
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.keys = sorted(keys)
        self.hint = hint
        parts = [problem]
        if self.file:
            parts.append(f"file: {self.file}")
        if self.keys:
            parts.append(f"{len(self.keys)} key(s): {describe_keys(self.keys)}")
        if hint:
            parts.append(hint)
        super().__init__("\n  ".join(parts))


def describe_keys(keys: Collection[str], k: int = 8) -> str:
    """``a, b, c (and 12 more)``: the first ``k`` keys in sorted order and how many were left out."""
    ordered = sorted(keys)
    more = f" (and {len(ordered) - k} more)" if len(ordered) > k else ""
    return ", ".join(ordered[:k]) + more

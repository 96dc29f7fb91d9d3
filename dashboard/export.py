"""Figure and table export: PNG (with DPI), SVG and PDF through kaleido; CSV and LaTeX tables; zip of a view.

Uses kaleido's persistent Chromium server (2 s -> 0.15 s per export; shared/notes/stack.md section 2). Labels use
Unicode, not LaTeX, because kaleido's MathJax comes from a CDN that is unreachable offline.
"""

from __future__ import annotations

import copy
import io
import threading
import warnings
import zipfile

import pandas as pd
import plotly.graph_objects as go

from dashboard.style import TEMPLATE_NAME, WIDTHS, apply_paper_layout

FIGURE_FORMATS = ("png", "svg", "pdf")
_server_lock = threading.Lock()
_server_started = False


def ensure_kaleido_server() -> None:
    """Start kaleido's persistent Chromium once per process (thread-safe)."""
    global _server_started
    with _server_lock:
        if not _server_started:
            import kaleido

            kaleido.start_sync_server(silence_warnings=True)
            _server_started = True


def figure_bytes(fig: go.Figure, fmt: str, *, width: str = "single", dpi: int = 300,
                 height: int | None = None) -> bytes:
    """Export ``fig`` with paper styling. ``dpi`` applies to PNG (scale = dpi / 96); SVG and PDF are vector."""
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; choose one of {', '.join(FIGURE_FORMATS)}")
    styled = apply_paper_layout(copy.deepcopy(fig), width=width, height=height)
    styled.update_layout(template=TEMPLATE_NAME)
    ensure_kaleido_server()
    scale = dpi / 96 if fmt == "png" else 1
    px_height = height or styled.layout.height or int(WIDTHS[width] * 0.7)
    with warnings.catch_warnings():  # plotly warns that kopts are ignored with a server: expected
        warnings.simplefilter("ignore", UserWarning)
        return styled.to_image(format=fmt, width=WIDTHS[width], height=px_height, scale=scale)


def table_csv(table: pd.DataFrame) -> bytes:
    """The table behind a chart as UTF-8 CSV."""
    return table.to_csv(index=False).encode()


def table_latex(table: pd.DataFrame, *, caption: str = "", label: str = "", float_format: str = "%.2f") -> bytes:
    """The table as a LaTeX tabular (booktabs), numbers with ``float_format``."""
    text = table.to_latex(index=False, caption=caption or None, label=label or None, float_format=float_format,
                          escape=True)
    return text.encode()


def zip_view(items: dict[str, tuple[go.Figure, pd.DataFrame]], *, width: str = "single", dpi: int = 300,
             formats: tuple[str, ...] = FIGURE_FORMATS) -> bytes:
    """Every figure of a view in every format, plus its table as CSV and LaTeX, in one zip archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (fig, table) in items.items():
            for fmt in formats:
                archive.writestr(f"{name}.{fmt}", figure_bytes(fig, fmt, width=width, dpi=dpi))
            archive.writestr(f"{name}.csv", table_csv(table))
            archive.writestr(f"{name}.tex", table_latex(table))
    return buffer.getvalue()

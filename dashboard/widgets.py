"""Page helpers shared by every view: the empty state, tables that say "undefined", charts, and the export blocks
(PNG with a DPI choice, SVG, PDF, CSV, LaTeX; a zip of the whole view). Download buttons never rerun the app
(``on_click="ignore"``) and build figure files only when clicked (deferred data)."""

from __future__ import annotations

from functools import partial

import pandas as pd
import plotly.graph_objects as go
import polars as pl
import streamlit as st

from dashboard import data, export
from dashboard.context import Filters, current_filters
from dashboard.tables import UNDEFINED

DEMO_COMMAND = "python -m dashboard.demo_store --out demo/store"
DPI_CHOICES = (150, 300, 600)
WIDTH_LABELS = {"single": "single column", "double": "double column"}
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "csv": "text/csv",
        "tex": "application/x-tex", "zip": "application/zip"}


def empty_state(store: str) -> None:
    """What to run when the store path holds no results store."""
    st.info(
        f"**No results store at `{store}`.** A results store holds `cohort.parquet` and `runs/<run>/run.json` + "
        "`predictions.parquet`.\n\n"
        f"- Build the synthetic demo store (a few seconds): `{DEMO_COMMAND}`, or `bash scripts/demo.sh`\n"
        "- Then open it: type its folder in the sidebar's *Results store* field, or start the app with "
        "`FMFAIR_STORE=demo/store python -m streamlit run dashboard/app.py`\n"
        "- Your own results: `python run_experiments.py import --store STORE --run-id NAME --predictions FILE ...` "
        "(or this app's *Data* page) imports a model's predictions into a store; `python run_experiments.py "
        "--help` lists the pipeline stages.")


def open_page(title: str, caption: str) -> tuple[Filters, pl.DataFrame]:
    """Title and caption of a page, its filters, and the store's runs; stops (saying what to run) without a store."""
    st.title(title)
    st.caption(caption)
    filters = current_filters()
    require_store(filters)
    return filters, data.runs_table(filters.store, filters.fingerprint)


def require_store(filters: Filters) -> None:
    """Stop the page (without an error) when the chosen store is not a results store, after saying what to run."""
    if not data.is_store(filters.store):
        empty_state(filters.store)
        st.stop()


def require_runs(filters: Filters) -> tuple[str, ...]:
    """The runs to show (ensembles included when on); stop with a hint when none is selected."""
    run_ids = filters.all_run_ids
    if not run_ids:
        st.info("No model selected: pick runs in the sidebar's *Models* field.")
        st.stop()
    return run_ids


def ensembles_arg(filters: Filters) -> tuple:
    """The ensembles the data layer must register (only when the ensembles toggle is on)."""
    return filters.ensembles if filters.show_ensembles else ()


def export_table(frame: pl.DataFrame | pd.DataFrame) -> pd.DataFrame:
    """A table for files: numeric nulls (undefined metrics) become the word "undefined", never 0; empty text
    stays empty (not "NaN")."""
    table = frame.to_pandas() if isinstance(frame, pl.DataFrame) else frame.copy()
    for column in table.columns:
        if not table[column].isna().any():
            continue
        filler = UNDEFINED if pd.api.types.is_float_dtype(table[column]) else ""
        table[column] = table[column].astype(object).where(table[column].notna(), filler)
    return table


def show_table(frame: pl.DataFrame, *, precision: int = 2) -> None:
    """A dataframe on screen with undefined values written as "undefined"."""
    # st.dataframe ignores a Styler's na_rep, so numbers are formatted to text here and nulls written out.
    shown = frame.with_columns(
        (pl.col(c).round(precision).cast(pl.String) if frame.schema[c].is_float() else pl.col(c).cast(pl.String))
        .fill_null(UNDEFINED)
        for c in frame.columns
    )
    st.dataframe(shown.to_pandas(), hide_index=True, width="stretch")


def chart(fig: go.Figure) -> None:
    """Show a figure exactly as it exports (the paper template, not Streamlit's theme)."""
    st.plotly_chart(fig, theme=None, width="stretch")


def export_block(name: str, fig: go.Figure, table: pl.DataFrame, *, key: str, caption: str = "") -> None:
    """Downloads for one chart: PNG (DPI), SVG, PDF at single/double column width, and its table as CSV/LaTeX."""
    with st.expander(f"Export this figure ({name})"):
        left, right = st.columns(2)
        width = left.selectbox("Width", list(WIDTH_LABELS), format_func=WIDTH_LABELS.get, key=f"{key}.width")
        dpi = right.selectbox("PNG resolution (DPI)", DPI_CHOICES, index=1, key=f"{key}.dpi")
        cells = st.columns(5)
        for cell, fmt in zip(cells, export.FIGURE_FORMATS, strict=False):
            cell.download_button(fmt.upper(), data=partial(export.figure_bytes, fig, fmt, width=width, dpi=dpi),
                                 file_name=f"{name}.{fmt}", mime=MIME[fmt], on_click="ignore", key=f"{key}.{fmt}")
        files = export_table(table)
        cells[3].download_button("CSV", data=export.table_csv(files), file_name=f"{name}.csv", mime=MIME["csv"],
                                 on_click="ignore", key=f"{key}.csv")
        cells[4].download_button("LaTeX", data=export.table_latex(files, caption=caption, label=f"tab:{name}"),
                                 file_name=f"{name}.tex", mime=MIME["tex"], on_click="ignore", key=f"{key}.tex")


def view_zip(items: dict[str, tuple[go.Figure, pl.DataFrame]], *, key: str, view: str) -> None:
    """One zip with every figure of the view (PNG, SVG, PDF) and every table (CSV, LaTeX)."""
    if not items:
        return
    with st.expander("Export all figures of this view"):
        left, right = st.columns(2)
        width = left.selectbox("Width", list(WIDTH_LABELS), format_func=WIDTH_LABELS.get, key=f"{key}.zip.width")
        dpi = right.selectbox("PNG resolution (DPI)", DPI_CHOICES, index=1, key=f"{key}.zip.dpi")
        tables = {name: (fig, export_table(table)) for name, (fig, table) in items.items()}
        st.download_button(f"Download {len(items)} figure(s) and tables (zip)",
                           data=partial(export.zip_view, tables, width=width, dpi=dpi), file_name=f"{view}.zip",
                           mime=MIME["zip"], on_click="ignore", key=f"{key}.zip")

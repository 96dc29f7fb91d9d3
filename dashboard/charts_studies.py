"""Pure presentation for the study pages: Plotly builders (DataFrame in, go.Figure out) and styled tables for
``st.table``; no Streamlit calls, no queries.

Every builder names the paper template (dashboard/style.py) so exports keep their colours. Undefined values (null)
are never drawn as 0: the bar is left out and the word "undefined" is written where it would stand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
import polars as pl
from pandas.io.formats.style import Styler
from plotly.subplots import make_subplots

from dashboard.style import PALETTE, TEMPLATE_NAME

UNDEFINED = "undefined"
NOT_APPLICABLE = "–"  # in tables: nothing published, no interval computed
PUBLISHED_PATTERN = "/"
RATE_LABELS = {"tpr": "TPR", "fpr": "FPR", "fnr": "FNR", "tnr": "TNR"}


def empty_figure(message: str, *, title: str = "") -> go.Figure:
    """A blank figure that says why there is nothing to draw."""
    fig = go.Figure(layout=dict(template=TEMPLATE_NAME, title=title, height=260))
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _colours(groups: list[str]) -> dict[str, str]:
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}


def _error(rows: pl.DataFrame) -> dict | None:
    """Asymmetric error bars from ci_low / ci_high (None when no row has an interval)."""
    if "ci_low" not in rows.columns or rows["ci_low"].is_null().all():
        return None
    value, low, high = rows["value"].to_list(), rows["ci_low"].to_list(), rows["ci_high"].to_list()
    plus = [h - v if None not in (h, v) else None for v, h in zip(value, high, strict=True)]
    minus = [v - lo if None not in (lo, v) else None for v, lo in zip(value, low, strict=True)]
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1.2, width=3)


def _axis_range(values: list[float | None], *, zero_based: bool) -> list[float] | None:
    """AUC panels zoom on their values; gaps, rates and scores start at 0."""
    defined = [v for v in values if v is not None and math.isfinite(v)]
    if not defined:
        return None
    low, high = min(defined), max(defined)
    if zero_based:
        return [min(0.0, low * 1.1), max(high * 1.12, 1e-9)]
    pad = max((high - low) * 0.15, 0.5)
    return [low - pad, high + pad]


def metric_panels(rows: pl.DataFrame, *, title: str = "", max_cols: int = 3, zero_based: bool | None = None,
                  bar_px: int = 16) -> go.Figure:
    """Forest-style horizontal bars: one panel per ``panel`` value (side by side, sharing the category axis), one
    row per ``x`` category, one bar per ``group``; ``source == "published"`` rows are hatched bars of the same colour
    ("<group> · paper"). Columns: panel, x, group, value and optionally source, ci_low, ci_high (error bars).
    ``zero_based`` None: every panel but AUC panels starts at 0. Reads at a single paper column (504 px)."""
    if not rows.height:
        return empty_figure("nothing to show for this selection", title=title)
    if "source" not in rows.columns:
        rows = rows.with_columns(source=pl.lit("reproduced"))
    panels = rows["panel"].unique(maintain_order=True).to_list()
    cols = min(len(panels), max_cols)
    n_rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=panels, shared_yaxes=True, horizontal_spacing=0.06,
                        vertical_spacing=0.3 / n_rows if n_rows > 1 else 0.0)
    colours = _colours(rows["group"].unique(maintain_order=True).to_list())
    series = rows.select("group", "source").unique(maintain_order=True).sort("source", descending=True,
                                                                             maintain_order=True).rows()
    categories = rows["x"].unique(maintain_order=True).to_list()
    grouped = rows.group_by("panel", "x").len()["len"].max() > 1  # else one bar per category: centre it
    for k, panel in enumerate(panels):
        r, c = k // cols + 1, k % cols + 1
        in_panel = rows.filter(pl.col("panel") == panel)
        extent = in_panel["value"].to_list()
        if "ci_high" in in_panel.columns:
            extent += in_panel["ci_high"].to_list() + in_panel["ci_low"].to_list()
        span = _axis_range(extent, zero_based=zero_based if zero_based is not None else "AUC" not in panel)
        for i, (group, source) in enumerate(series):
            part = in_panel.filter((pl.col("group") == group) & (pl.col("source") == source))
            if not part.height:
                continue
            published = source == "published"
            name = f"{group} · paper" if published else group
            values = part["value"].to_list()
            fig.add_trace(go.Bar(
                y=part["x"].to_list(), x=values, orientation="h", name=name, legendgroup=name, showlegend=k == 0,
                offsetgroup=str(i) if grouped else None,
                marker=dict(color=colours[group], pattern_shape=PUBLISHED_PATTERN if published else "",
                            opacity=0.55 if published else 1.0, line=dict(color=colours[group], width=1)),
                error_x=_error(part), hovertemplate=f"%{{y}}<br>{name}: %{{x:.3f}}<extra>{panel}</extra>"),
                row=r, col=c)
            for x, v in zip(part["x"].to_list(), values, strict=True):
                if v is None:  # mark the missing bar instead of drawing a 0
                    fig.add_trace(go.Scatter(y=[x], x=[span[0] if span else 0], mode="text", text=[UNDEFINED],
                                             textposition="middle right", showlegend=False, hoverinfo="skip"),
                                  row=r, col=c)
        fig.update_xaxes(range=span, row=r, col=c)
    fig.update_yaxes(categoryorder="array", categoryarray=categories, autorange="reversed", automargin=True)
    fig.update_annotations(font=dict(size=None))  # subplot titles follow the layout font (paper sizes on export)
    per_row = len(categories) * (len(series) if grouped else 1) * bar_px + 70
    fig.update_layout(template=TEMPLATE_NAME, title=dict(text=title, x=0.01, xanchor="left"), bargap=0.2,
                      barmode="group" if grouped else "overlay", height=max(300, per_row * n_rows + 130),
                      legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, traceorder="normal"),
                      margin=dict(b=60 if len(series) <= 3 else 100, t=80))  # room for a 2-line legend
    return fig


def heatmap(table: pl.DataFrame, *, row: str, column: str, value: str, title: str = "", colorbar: str = "",
            decimals: int = 3) -> go.Figure:
    """Rows x columns of ``value`` with every cell written out; null cells say "undefined"."""
    if not table.height:
        return empty_figure("nothing to show for this selection", title=title)
    rows = table[row].unique(maintain_order=True).to_list()
    columns = table[column].unique(maintain_order=True).to_list()
    cell = {(a, b): v for a, b, v in table.select(row, column, value).iter_rows()}
    z = [[cell.get((a, b)) for b in columns] for a in rows]
    text = [[UNDEFINED if v is None else f"{v:.{decimals}f}" for v in line] for line in z]
    fig = go.Figure(go.Heatmap(z=z, x=columns, y=rows, text=text, texttemplate="%{text}", colorscale="Blues",
                               colorbar=dict(title=colorbar), hoverongaps=False, zmin=0))
    fig.update_layout(template=TEMPLATE_NAME, title=title, height=max(260, 40 * len(rows) + 160),
                      xaxis=dict(tickangle=-35, showgrid=False, automargin=True),
                      yaxis=dict(autorange="reversed", showgrid=False, automargin=True))
    return fig


def rate_rows(metrics: pl.DataFrame, *, pathology: str, labels: dict[str, str],
              rates: tuple[str, ...] = ("tpr", "fpr")) -> pl.DataFrame:
    """threshold_metrics rows of one pathology as chart rows: a panel per rate, subgroups on the category axis, one
    bar per run (FNR = 1 - TPR and TNR = 1 - FPR add nothing to a picture, so two rates by default)."""
    one = metrics.filter(pl.col("pathology") == pathology)
    subgroup = pl.when(pl.col("attribute") == "all").then(pl.lit("all")).otherwise(
        pl.col("attribute") + ": " + pl.col("subgroup"))
    long = one.select(pl.col("run_id").replace(labels).alias("group"), subgroup.alias("x"),
                      *(pl.col(r) for r in rates)).unpivot(index=["group", "x"], variable_name="rate",
                                                           value_name="value")
    order = pl.col("rate").replace_strict({r: i for i, r in enumerate(rates)}, return_dtype=pl.Int64)
    return long.sort(order, maintain_order=True).select(
        pl.col("rate").replace(RATE_LABELS).alias("panel"), "x", "group", "value")


def underdiagnosis_rows(under: pl.DataFrame, *, labels: dict[str, str]) -> pl.DataFrame:
    """underdiagnosis rows as chart rows: a panel per attribute, subgroups on x, one bar per run."""
    return under.filter(pl.col("attribute") != "all").select(
        pl.col("attribute").alias("panel"), pl.col("subgroup").alias("x"),
        pl.col("run_id").replace(labels).alias("group"), pl.col("underdiagnosis_rate").alias("value"))


def blank_columns(frame: pl.DataFrame) -> list[str]:
    """Columns of a side_by_side table whose nulls mean "not computed / not published", not "undefined"."""
    return [c for c in frame.columns if c.endswith(("CI low", "CI high", "(paper)")) or c in ("runs", "paper row")]


def styled(frame: pl.DataFrame, *, precision: int = 2,
           blank: Sequence[str] = ("ci_low", "ci_high", "published", "difference", "runs", "paper_row")) -> Styler:
    """A table for ``st.table`` (which, unlike st.dataframe in Streamlit 1.67, shows a Styler's na_rep): nulls in
    metric columns read "undefined"; nulls in ``blank`` columns (no interval computed, nothing published) read "–";
    interval columns that are null everywhere (intervals switched off) are dropped."""
    empty = [c for c in ("ci_low", "ci_high") if c in frame.columns and frame[c].is_null().all()]
    table = frame.drop(empty).to_pandas()
    numeric = [c for c, t in frame.drop(empty).schema.items() if t.is_numeric()]
    style = table.style.hide(axis="index").format(precision=precision, na_rep=UNDEFINED,
                                                   subset=[c for c in numeric if c not in blank])
    return style.format(precision=precision, na_rep=NOT_APPLICABLE, subset=[c for c in table.columns if c in blank])

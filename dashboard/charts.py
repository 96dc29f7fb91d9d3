"""Pure Plotly builders: a polars frame in (shaped by dashboard/tables.py), a go.Figure out, no Streamlit calls.

Every figure names the paper template (dashboard/style.py), because ``import streamlit`` makes Plotly's default
template export black bars. Undefined values (null AUC of a one-class subgroup) are drawn as an "undefined" note,
never as 0.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from dashboard.style import PALETTE, TEMPLATE_NAME, model_colour

UNDEFINED = "undefined"
SCRATCH_DASHES = ("dash", "dot", "dashdot", "longdash")
PUBLISHED_NAME = "published (paper)"
HIGHLIGHT = {"fairest": "#009E73", "least fair": "#D55E00"}
UNIT_TITLES = {"pts": "change (AUC points)", "pct": "change (%)"}


def _finish(fig: go.Figure, *, title: str, height: int, **layout) -> go.Figure:
    """Paper template, title (room above subplot titles), axes that grow to fit rotated labels."""
    fig.update_layout(template=TEMPLATE_NAME, title=dict(text=title, x=0.01), height=height,
                      margin=dict(t=90 if title else 50), **layout)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _mark_undefined(fig: go.Figure, x: str, hover: str, *, row: int = 1, col: int = 1) -> None:
    """An "undefined" label at the foot of category ``x`` (hover: which runs and why), instead of a bar."""
    fig.add_annotation(x=x, y=0.02, yref="y domain", text=UNDEFINED, hovertext=hover, showarrow=False,
                       textangle=-90, yanchor="bottom", font=dict(color="#666666", size=11), row=row, col=col)


def _error(values: list, lows: list, highs: list) -> dict | None:
    """Asymmetric error bars from CI bounds (None when there are no bounds)."""
    if all(v is None for v in lows):
        return None
    # a percentile interval need not contain the point estimate (a gap is biased upwards): clamp at 0
    up = [None if h is None or v is None else max(h - v, 0.0) for v, h in zip(values, highs, strict=True)]
    down = [None if lo is None or v is None else max(v - lo, 0.0) for v, lo in zip(values, lows, strict=True)]
    return dict(type="data", array=up, arrayminus=down, visible=True, thickness=1.2, width=4)


def _padded_range(values: list[float | None], *, floor: float | None = None) -> list[float] | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    low, high = min(vals), max(vals)
    pad = max((high - low) * 0.15, 0.5)
    low = low - pad if floor is None else max(floor, low - pad)
    return [low, high + pad]


def overview_figure(rows: pl.DataFrame, *, published: pl.DataFrame | None = None, title: str = "") -> go.Figure:
    """Figures 1, 2, 4: one panel per metric (mean AUC, then a fairness score per attribute); bars per model
    coloured by group, scratch baselines as dashed lines, CI error bars when present, published markers."""
    panels = rows["panel"].unique(maintain_order=True).to_list()
    fig = make_subplots(rows=1, cols=max(len(panels), 1), subplot_titles=panels, horizontal_spacing=0.06)
    groups = rows.filter(~pl.col("scratch"))["group"].unique(maintain_order=True).to_list()
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    scratch_ids = rows.filter(pl.col("scratch"))["run_id"].unique(maintain_order=True).to_list()
    for col, panel in enumerate(panels, start=1):
        part = rows.filter(pl.col("panel") == panel)
        bars = part.filter(~pl.col("scratch"))
        categories = bars["label"].to_list()
        for group in groups:
            sub = bars.filter(pl.col("group") == group)
            if not sub.height:
                continue
            values = sub["value"].to_list()
            fig.add_trace(go.Bar(
                x=sub["label"].to_list(), y=values, name=group, legendgroup=group, showlegend=col == 1,
                marker_color=colours[group], customdata=sub["run_id"].to_list(),
                error_y=_error(values, sub["ci_low"].to_list(), sub["ci_high"].to_list()),
                hovertemplate="%{x}<br>%{y:.2f}<extra>" + group + "</extra>"), row=1, col=col)
        for item in sub_rows(part.filter(pl.col("scratch"))):
            x = categories or [item["label"]]
            dash = SCRATCH_DASHES[scratch_ids.index(item["run_id"]) % len(SCRATCH_DASHES)]
            fig.add_trace(go.Scatter(
                x=x, y=[item["value"]] * len(x), mode="lines" if len(x) > 1 else "lines+markers",
                name=item["label"], legendgroup=item["run_id"], showlegend=col == 1,
                line=dict(color="#444444", dash=dash, width=1.5), customdata=[item["run_id"]] * len(x),
                hovertemplate=item["label"] + ": %{y:.2f}<extra>scratch baseline</extra>"), row=1, col=col)
            if item["ci_low"] is not None and item["ci_high"] is not None:
                fig.add_hrect(y0=item["ci_low"], y1=item["ci_high"], fillcolor="#444444", opacity=0.06,
                              line_width=0, row=1, col=col)
        for item in sub_rows(part.filter(pl.col("value").is_null())):
            _mark_undefined(fig, item["label"], f"{item['label']}: {item['reason']}", col=col)
        marks = published.filter(pl.col("panel") == panel) if published is not None else None
        if marks is not None and marks.height:
            labels = dict(zip(part["run_id"].to_list(), part["label"].to_list(), strict=True))
            fig.add_trace(go.Scatter(
                x=[labels.get(r, r) for r in marks["run_id"].to_list()], y=marks["marker"].to_list(),
                mode="markers", name=PUBLISHED_NAME, legendgroup=PUBLISHED_NAME,
                showlegend=not any(t.name == PUBLISHED_NAME for t in fig.data),
                marker=dict(symbol="diamond-open", size=11, color="black", line=dict(width=2)),
                customdata=marks["run_id"].to_list(),
                hovertemplate="published: %{y:.2f}<extra>" + PUBLISHED_NAME + "</extra>"), row=1, col=col)
        extent = part["value"].to_list() + part["ci_low"].to_list() + part["ci_high"].to_list()
        extent += marks["marker"].to_list() if marks is not None else []
        fig.update_yaxes(range=_padded_range(extent, floor=0.0), row=1, col=col)
    fig.update_xaxes(tickangle=-35)
    return _finish(fig, title=title, height=480, barmode="group")


def sub_rows(frame: pl.DataFrame) -> list[dict]:
    return list(frame.iter_rows(named=True))


def _attribute_panels(frame: pl.DataFrame, *, shared_y: bool = True) -> tuple[go.Figure, list[str]]:
    attributes = frame["attribute"].unique(maintain_order=True).to_list()
    sizes = [max(frame.filter(pl.col("attribute") == a)["subgroup"].n_unique(), 1) for a in attributes]
    fig = make_subplots(rows=1, cols=max(len(attributes), 1), subplot_titles=attributes, shared_yaxes=shared_y,
                        column_widths=[s / sum(sizes) for s in sizes] if sizes else None, horizontal_spacing=0.04)
    return fig, attributes


def relative_change_figure(change: pl.DataFrame, *, unit: str = "pts", title: str = "") -> go.Figure:
    """Figure 3: each subgroup's change against the reference, per model (bars), one panel per attribute."""
    fig, attributes = _attribute_panels(change)
    runs = change.select("run_id", "label", "colour_key").unique("run_id", maintain_order=True)
    for col, attribute in enumerate(attributes, start=1):
        part = change.filter(pl.col("attribute") == attribute)
        for run in sub_rows(runs):
            sub = part.filter(pl.col("run_id") == run["run_id"])
            fig.add_trace(go.Bar(
                x=sub["subgroup"].to_list(), y=sub["change"].to_list(), name=run["label"],
                legendgroup=run["run_id"], showlegend=col == 1, marker_color=model_colour(run["colour_key"]),
                customdata=list(zip(sub["n"].to_list(), sub["auc"].to_list(), strict=True)),
                hovertemplate=(run["label"] + "<br>%{x}: %{y:.2f}<br>AUC %{customdata[1]:.3f}, "
                               "n = %{customdata[0]}<extra></extra>")), row=1, col=col)
        missing = part.filter(pl.col("change").is_null())
        for subgroup, group in missing.group_by("subgroup", maintain_order=True):
            who = ", ".join(group["label"].to_list())
            _mark_undefined(fig, subgroup[0], f"{who}: {group['note'][0]}", col=col)
        fig.add_hline(y=0, line=dict(color="#222222", width=1), row=1, col=col)
    fig.update_yaxes(title_text=UNIT_TITLES.get(unit, unit), row=1, col=1)
    return _finish(fig, title=title, height=460, barmode="group")


def subgroup_auc_figure(auc: pl.DataFrame, *, title: str = "") -> go.Figure:
    """Subgroup AUCs with 95 % bootstrap intervals: points per model, one panel per attribute."""
    fig, attributes = _attribute_panels(auc)
    runs = auc.select("run_id", "label", "colour_key").unique("run_id", maintain_order=True)
    for col, attribute in enumerate(attributes, start=1):
        part = auc.filter(pl.col("attribute") == attribute)
        for run in sub_rows(runs):
            sub = part.filter(pl.col("run_id") == run["run_id"])
            values = sub["auc"].to_list()
            fig.add_trace(go.Scatter(
                x=sub["subgroup"].to_list(), y=values, mode="markers", name=run["label"], legendgroup=run["run_id"],
                showlegend=col == 1, marker=dict(color=model_colour(run["colour_key"]), size=8),
                error_y=_error(values, sub["ci_low"].to_list(), sub["ci_high"].to_list()),
                customdata=sub["n"].to_list(),
                hovertemplate=run["label"] + "<br>%{x}: %{y:.3f}, n = %{customdata}<extra></extra>"), row=1, col=col)
        for subgroup, group in part.filter(pl.col("auc").is_null()).group_by("subgroup", maintain_order=True):
            reasons = group["auc_reason"].fill_null("one class").to_list()
            hover = "; ".join(f"{lab}: {why}" for lab, why in zip(group["label"].to_list(), reasons, strict=True))
            _mark_undefined(fig, subgroup[0], hover, col=col)
    fig.update_yaxes(title_text="AUC", row=1, col=1)
    return _finish(fig, title=title, height=420, scattermode="group")


def _highlight_columns(fig: go.Figure, categories: list[str], marks: dict[str, str | None], **where) -> None:
    for kind, pathology in marks.items():
        if pathology in categories:
            i = categories.index(pathology)
            fig.add_vrect(x0=i - 0.5, x1=i + 0.5, fillcolor=HIGHLIGHT[kind], opacity=0.12, line_width=0, **where)


def pathology_bars_figure(change: pl.DataFrame, *, fairest: str | None, least_fair: str | None, unit: str = "pts",
                          title: str = "") -> go.Figure:
    """Figures 5, 6: per model, each pathology's change per subgroup (grouped bars); the fairest and least fair
    pathology are shaded green and orange."""
    runs = change.select("run_id", "label").unique("run_id", maintain_order=True)
    cols = min(runs.height, 3) or 1
    nrows = max(math.ceil(runs.height / cols), 1)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=runs["label"].to_list(), shared_yaxes=True,
                        vertical_spacing=0.5 / nrows if nrows > 1 else 0.1)
    subgroups = change["subgroup"].unique(maintain_order=True).to_list()
    categories = change["pathology"].unique(maintain_order=True).to_list()
    marks = {"fairest": fairest, "least fair": least_fair}
    for i, run in enumerate(sub_rows(runs)):
        row, col = i // cols + 1, i % cols + 1
        part = change.filter(pl.col("run_id") == run["run_id"])
        for j, subgroup in enumerate(subgroups):
            sub = part.filter(pl.col("subgroup") == subgroup)
            fig.add_trace(go.Bar(
                x=sub["pathology"].to_list(), y=sub["change"].to_list(), name=subgroup, legendgroup=subgroup,
                showlegend=i == 0, marker_color=PALETTE[j % len(PALETTE)], customdata=sub["n"].to_list(),
                hovertemplate=subgroup + "<br>%{x}: %{y:.2f}, n = %{customdata}<extra></extra>"), row=row, col=col)
        for pathology, group in part.filter(pl.col("change").is_null()).group_by("pathology", maintain_order=True):
            _mark_undefined(fig, pathology[0], ", ".join(group["subgroup"].to_list()) + f": {group['note'][0]}",
                            row=row, col=col)
        _highlight_columns(fig, categories, marks, row=row, col=col)
        fig.add_hline(y=0, line=dict(color="#222222", width=1), row=row, col=col)
    fig.update_xaxes(categoryorder="array", categoryarray=categories, tickangle=-30)
    fig.update_yaxes(title_text=UNIT_TITLES.get(unit, unit), col=1)
    return _finish(fig, title=title, height=300 * nrows + 120, barmode="group", legend=dict(title_text="subgroup"))


def pathology_heatmap(change: pl.DataFrame, *, fairest: str | None, least_fair: str | None, unit: str = "pts",
                      title: str = "") -> go.Figure:
    """Rows model × subgroup, columns pathology, diverging colours centred on 0; undefined cells say so."""
    categories = change["pathology"].unique(maintain_order=True).to_list()
    keyed = change.with_columns(pl.format("{} · {}", "label", "subgroup").alias("row_label"))
    row_labels = keyed["row_label"].unique(maintain_order=True).to_list()
    lookup = {(r, p): v for r, p, v in keyed.select("row_label", "pathology", "change").iter_rows()}
    z = [[lookup.get((r, p)) for p in categories] for r in row_labels]
    text = [[UNDEFINED if v is None else f"{v:.1f}" for v in line] for line in z]
    fig = go.Figure(go.Heatmap(z=z, x=categories, y=row_labels, text=text, texttemplate="%{text}",
                               colorscale="RdBu", zmid=0, colorbar=dict(title=UNIT_TITLES.get(unit, unit)),
                               hovertemplate="%{y}<br>%{x}: %{text}<extra></extra>"))
    _highlight_columns(fig, categories, {"fairest": fairest, "least fair": least_fair})
    for kind, pathology in (("fairest", fairest), ("least fair", least_fair)):
        if pathology in categories:
            fig.add_annotation(x=pathology, y=1.0, yref="paper", yanchor="bottom", text=kind, showarrow=False,
                               font=dict(color=HIGHLIGHT[kind]))
    fig.update_yaxes(autorange="reversed")
    return _finish(fig, title=title, height=max(320, 26 * len(row_labels) + 160))


def composition_figure(composition: pl.DataFrame, *, title: str = "") -> go.Figure:
    """Share (%) of each subgroup in every split and evaluation set (stacked), with counts in the hover."""
    fig = go.Figure()
    for j, subgroup in enumerate(composition["subgroup"].unique(maintain_order=True).to_list()):
        sub = composition.filter(pl.col("subgroup").eq_missing(subgroup))
        fig.add_trace(go.Bar(
            x=sub["eval_set"].to_list(), y=sub["share_pct"].to_list(), name=str(subgroup),
            marker_color=PALETTE[j % len(PALETTE)],
            customdata=list(zip(sub["images"].to_list(), sub["weighted_images"].to_list(), sub["patients"].to_list(),
                                strict=True)),
            hovertemplate=(f"{subgroup}<br>%{{x}}: %{{y:.1f}} %<br>images %{{customdata[0]}}, "
                           "weighted %{customdata[1]:.0f}, patients %{customdata[2]}<extra></extra>")))
    fig.update_yaxes(title_text="share of the set (%)", range=[0, 100])
    return _finish(fig, title=title, height=420, barmode="stack")


def prevalence_figure(prevalence: pl.DataFrame, *, title: str = "") -> go.Figure:
    """Prevalence (%) of each pathology per subgroup (grouped bars; "all" in grey)."""
    fig = go.Figure()
    for j, subgroup in enumerate(prevalence["subgroup"].unique(maintain_order=True).to_list()):
        sub = prevalence.filter(pl.col("subgroup").eq_missing(subgroup))
        colour = "#999999" if subgroup == "all" else PALETTE[j % len(PALETTE)]
        fig.add_trace(go.Bar(x=sub["pathology"].to_list(), y=sub["prevalence_pct"].to_list(), name=str(subgroup),
                             marker_color=colour, customdata=sub["n"].to_list(),
                             hovertemplate=f"{subgroup}<br>%{{x}}: %{{y:.1f}} %, n = %{{customdata:.0f}}"
                                           "<extra></extra>"))
    fig.update_yaxes(title_text="prevalence (%)")
    fig.update_xaxes(tickangle=-35)
    return _finish(fig, title=title, height=440, barmode="group")

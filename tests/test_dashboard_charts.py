"""Chart builders and the table shaping behind them, on small hand-made frames: expected traces and values, the
paper template (never Streamlit's), and undefined AUCs drawn as "undefined", never as 0."""

from __future__ import annotations

import plotly.io as pio
import polars as pl
import pytest
import streamlit  # noqa: F401  (switches Plotly's default template to "streamlit": builders must not use it)

from dashboard import charts, tables
from dashboard.style import PALETTE, TEMPLATE_NAME
from dashboard.widgets import export_table


def assert_paper_template(fig) -> None:
    assert pio.templates.default == "streamlit"  # the trap is armed
    assert fig.layout.template.layout.colorway == pio.templates[TEMPLATE_NAME].layout.colorway
    assert fig.layout.template.layout.font.family.startswith("Liberation Sans")
    for trace in fig.data:
        colour = getattr(getattr(trace, "marker", None), "color", None)
        assert not (isinstance(colour, str) and colour.startswith("#0000")), "streamlit placeholder colour"


def undefined_notes(fig) -> list:
    return [a for a in fig.layout.annotations if a.text == charts.UNDEFINED]


RUNS = pl.DataFrame({
    "run_id": ["mae-s", "med-s", "scratch-s", "mae-b"], "model": ["mae", "medical-mae", "scratch-vit", "mae"],
    "display_name": ["MAE", "MAE (M)", "Scratch (ViT)", "MAE"], "pretraining_method": ["mae", "mae", "none", "mae"],
    "domain": ["natural", "medical", "none", "natural"], "architecture_family": ["ViT"] * 4,
    "pretraining_type": ["masked", "masked", "none", "masked"], "balancing": ["standard"] * 3 + ["balanced"],
    "architecture": ["vit"] * 4, "pretraining_data": ["IN", "CXR", "none", "IN"],
})


def summary(values: dict[str, tuple[float | None, float | None]]) -> pl.DataFrame:
    """fairness_summary-like rows: run -> (mean AUC pts, sex FS pts)."""
    return pl.DataFrame([{"run_id": r, "attribute": "sex", "mean_auc_pts": auc, "fairness_score_pts": fs,
                          "fairness_gap_pts": None if fs is None else 3.0 - fs, "c_pts": 3.0,
                          "n_subgroups_undefined": 0 if fs is not None else 1} for r, (auc, fs) in values.items()],
                        schema_overrides={"mean_auc_pts": pl.Float64, "fairness_score_pts": pl.Float64,
                                          "fairness_gap_pts": pl.Float64})


def test_run_labels_are_short_unique_and_ensembles_keep_their_name():
    labels = tables.run_labels(RUNS, ["mae-s", "med-s", "mae-b", "My ensemble"])
    assert labels == {"mae-s": "MAE", "med-s": "MAE (M)", "mae-b": "MAE · balanced", "My ensemble": "My ensemble"}
    twins = pl.concat([RUNS.head(1), RUNS.head(1).with_columns(run_id=pl.lit("mae-s2"))])
    assert tables.run_labels(twins, ["mae-s", "mae-s2"]) == {"mae-s": "MAE · mae-s", "mae-s2": "MAE · mae-s2"}


def test_overview_bars_scratch_lines_and_published_markers():
    facts = tables.run_facts(RUNS, ["mae-s", "med-s", "scratch-s"])
    rows = tables.overview_rows(summary({"mae-s": (80.0, 2.0), "med-s": (82.0, 1.5), "scratch-s": (75.0, 1.0)}),
                                facts, group_by="domain", attributes=["sex"])
    published = pl.DataFrame({"run_id": ["mae-s"], "panel": [tables.AUC_PANEL], "marker": [79.3]})
    fig = charts.overview_figure(rows, published=published)
    assert_paper_template(fig)
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    assert set(bars) == {"natural", "medical"}  # coloured by group, scratch is no bar
    natural = [t for t in fig.data if t.name == "natural"]
    assert [list(t.y) for t in natural] == [[80.0], [2.0]] and natural[0].marker.color == PALETTE[0]
    scratch = [t for t in fig.data if t.name == "Scratch (ViT)"]
    assert len(scratch) == 2 and scratch[0].line.dash == "dash" and set(scratch[0].y) == {75.0}
    marker = [t for t in fig.data if t.name == charts.PUBLISHED_NAME]
    assert len(marker) == 1 and list(marker[0].y) == [79.3] and list(marker[0].x) == ["MAE"]
    assert [a.text for a in fig.layout.annotations][:2] == [tables.AUC_PANEL, "Sex fairness score"]


def test_overview_draws_interval_bars_and_undefined_scores():
    facts = tables.run_facts(RUNS, ["mae-s", "med-s"])
    frame = summary({"mae-s": (80.0, 2.0), "med-s": (82.0, None)}).with_columns(
        mean_auc_pts_ci_low=pl.Series([79.0, 81.0]), mean_auc_pts_ci_high=pl.Series([81.5, 83.0]),
        fairness_score_pts_ci_low=pl.Series([1.0, None]), fairness_score_pts_ci_high=pl.Series([2.5, None]))
    rows = tables.overview_rows(frame, facts, group_by="architecture family", attributes=["sex"])
    fig = charts.overview_figure(rows)
    auc_bar = fig.data[0]
    assert list(auc_bar.y) == [80.0, 82.0]
    assert list(auc_bar.error_y.array) == [1.5, 1.0] and list(auc_bar.error_y.arrayminus) == [1.0, 1.0]
    score_bar = fig.data[1]
    assert list(score_bar.y) == [2.0, None], "an undefined score stays null, never 0"
    notes = undefined_notes(fig)
    assert len(notes) == 1 and notes[0].x == "MAE (M)" and "one-class" in notes[0].hovertext


def change_frame() -> pl.DataFrame:
    rows = [("mae-s", "MAE", "sex", "Female", "Edema", -1.0, 0.79, 300),
            ("mae-s", "MAE", "sex", "Male", "Edema", 0.5, 0.81, 400),
            ("mae-s", "MAE", "sex", "Female", "Cardiomegaly", -4.0, 0.80, 300),
            ("mae-s", "MAE", "sex", "Male", "Cardiomegaly", 2.0, 0.86, 400),
            ("med-s", "MAE (M)", "sex", "Female", "Edema", 0.2, 0.83, 300),
            ("med-s", "MAE (M)", "sex", "Male", "Edema", None, None, 400),
            ("med-s", "MAE (M)", "sex", "Female", "Cardiomegaly", -2.0, 0.82, 300),
            ("med-s", "MAE (M)", "sex", "Male", "Cardiomegaly", 1.0, 0.85, 400)]
    frame = pl.DataFrame(rows, schema=["run_id", "label", "attribute", "subgroup", "pathology", "change", "auc", "n"],
                         orient="row")
    return tables.change_notes(frame.with_columns(colour_key=pl.col("run_id")))


def test_relative_change_bars_per_model_with_undefined_subgroups():
    edema = change_frame().filter(pl.col("pathology") == "Edema")
    fig = charts.relative_change_figure(edema, unit="pct")
    assert_paper_template(fig)
    assert [(t.name, list(t.x), list(t.y)) for t in fig.data] == [
        ("MAE", ["Female", "Male"], [-1.0, 0.5]), ("MAE (M)", ["Female", "Male"], [0.2, None])]
    assert fig.data[0].customdata[0][0] == 300  # subgroup size in the hover
    notes = undefined_notes(fig)
    assert len(notes) == 1 and notes[0].x == "Male" and notes[0].hovertext.startswith("MAE (M): undefined")
    assert fig.layout.yaxis.title.text == "change (%)"
    assert any(s.type == "line" and s.y0 == 0 for s in fig.layout.shapes)


def test_pathology_gaps_pick_fairest_and_least_fair():
    gaps = tables.pathology_gaps(change_frame())
    # Edema is undefined for med-s (a null AUC), so its mean gap covers mae-s only
    assert dict(zip(gaps["pathology"], gaps["gap_pts"], strict=True)) == pytest.approx(
        {"Edema": 2.0, "Cardiomegaly": (6.0 + 3.0) / 2})
    assert dict(zip(gaps["pathology"], gaps["runs_undefined"], strict=True)) == {"Edema": 1, "Cardiomegaly": 0}
    assert tables.fairest_and_least_fair(gaps) == ("Edema", "Cardiomegaly")


def test_pathology_bars_and_heatmap_highlight_and_say_undefined():
    frame = change_frame()
    bars = charts.pathology_bars_figure(frame, fairest="Edema", least_fair="Cardiomegaly")
    assert_paper_template(bars)
    assert [t.name for t in bars.data] == ["Female", "Male", "Female", "Male"]
    rects = [s for s in bars.layout.shapes if s.type == "rect"]
    assert {(r.x0, r.fillcolor) for r in rects} == {(-0.5, charts.HIGHLIGHT["fairest"]),
                                                    (0.5, charts.HIGHLIGHT["least fair"])}
    assert len(undefined_notes(bars)) == 1
    heat = charts.pathology_heatmap(frame, fairest="Edema", least_fair="Cardiomegaly")
    assert_paper_template(heat)
    grid = heat.data[0]
    assert list(grid.x) == ["Edema", "Cardiomegaly"] and list(grid.y)[3] == "MAE (M) · Male"
    assert grid.z[3][0] is None and grid.text[3][0] == charts.UNDEFINED and grid.z[0][1] == -4.0


def test_subgroup_auc_points_with_intervals_and_undefined():
    auc = pl.DataFrame({"run_id": ["mae-s"] * 3, "label": ["MAE"] * 3, "colour_key": ["mae"] * 3,
                        "attribute": ["sex", "sex", "age_bin"], "subgroup": ["Female", "Male", "0-20"],
                        "auc": [0.8, 0.9, None], "ci_low": [0.75, 0.85, None], "ci_high": [0.84, 0.93, None],
                        "n": [50, 60, 4], "auc_reason": [None, None, "no positives"]})
    fig = charts.subgroup_auc_figure(auc)
    assert_paper_template(fig)
    assert list(fig.data[0].error_y.array) == pytest.approx([0.04, 0.03])
    assert list(fig.data[1].y) == [None]
    assert undefined_notes(fig)[0].hovertext == "MAE: no positives"


COHORT = pl.DataFrame({
    "image_id": [f"img{i}" for i in range(8)], "patient_id": ["p1", "p1", "p2", "p3", "p4", "p4", "p5", "p6"],
    "split": ["test"] * 6 + ["validate"] * 2, "sex": ["Female", "Female", "Male", "Male", "Female", "Female", "Male",
                                                      "Female"],
    "race": ["White"] * 4 + ["Black"] * 4, "Edema": [1.0, 0.0, None, 1.0, -1.0, 1.0, 0.0, 0.0],
})
SETS = pl.DataFrame({"set": ["resampled"] * 3, "pathology": ["Edema", "Edema", "Cardiomegaly"],
                     "image_id": ["img0", "img2", "img3"], "weight": [2.0, 1.0, 5.0]})


def test_cohort_composition_counts_without_identifiers():
    comp = tables.cohort_composition(COHORT, SETS, attribute="sex", pathology="Edema")
    assert "patient_id" not in comp.columns and "image_id" not in comp.columns
    test = {r["subgroup"]: r for r in comp.filter(pl.col("eval_set") == "test").iter_rows(named=True)}
    assert (test["Female"]["images"], test["Female"]["patients"], test["Male"]["images"]) == (4, 2, 2)
    resampled = {r["subgroup"]: r for r in comp.filter(pl.col("eval_set") == "resampled").iter_rows(named=True)}
    assert resampled["Female"]["weighted_images"] == 2.0 and resampled["Female"]["share_pct"] == pytest.approx(200 / 3)
    inter = tables.cohort_composition(COHORT, SETS, attribute="sex x race", pathology="Edema")
    assert "Female x Black" in inter["subgroup"].to_list()
    fig = charts.composition_figure(comp)
    assert_paper_template(fig)
    assert {t.name for t in fig.data} == {"Female", "Male"}


def test_cohort_prevalence_is_weighted_and_counts_raw_ones():
    prev = tables.cohort_prevalence(COHORT, SETS, attribute="sex", eval_set="test")
    edema = {r["subgroup"]: r["prevalence_pct"] for r in prev.iter_rows(named=True)}
    assert edema == pytest.approx({"Female": 50.0, "Male": 50.0, "all": 50.0})  # -1 and blank are not positive
    weighted = tables.cohort_prevalence(COHORT, SETS, attribute="sex", eval_set="resampled")
    assert dict(zip(weighted["subgroup"], weighted["prevalence_pct"], strict=True)) == pytest.approx(
        {"Female": 100.0, "Male": 0.0, "all": 200 / 3})
    fig = charts.prevalence_figure(prev)
    assert_paper_template(fig)
    assert [t.name for t in fig.data][-1] == "all" and fig.data[-1].marker.color == "#999999"


def test_published_gaps_become_scores_with_the_same_c():
    frame = summary({"mae-s": (80.0, 2.0)})
    reference = pl.DataFrame({"table": ["Table 6", "Table 6", "Table 2"], "row": ["MAE FT"] * 3,
                              "selector": ["model=mae;balancing=standard"] * 2 + ["model=mae"],
                              "metric": ["mean_auc", "fairness_gap_sex", "mean_auc"], "value": [79.3, 0.92, 1.0]})
    published = tables.published_rows(reference, RUNS, frame)
    assert published["marker"].to_list() == pytest.approx([79.3, 3.0 - 0.92])  # Table 2 is not an Overview table
    assert published["reproduced"].to_list() == pytest.approx([80.0, 1.0])


def test_export_tables_write_undefined_never_zero():
    table = export_table(pl.DataFrame({"subgroup": ["Female", "Male"], "auc": [0.8, None], "n": [3, 4],
                                       "note": [None, "undefined: no positives"]}))
    assert table["auc"].tolist() == [0.8, "undefined"] and table["n"].tolist() == [3, 4]
    assert table["note"].tolist() == ["", "undefined: no positives"]

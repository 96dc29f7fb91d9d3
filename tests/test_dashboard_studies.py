"""Study pages (Ensembles, Pre-training, Fine-tuning, Thresholds) standalone under AppTest on a small synthetic store:
they show engine.metrics' values and build ensembles into the URL state; shaping and chart builders tested directly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import charts_studies as charts
from dashboard import data, state
from dashboard import data_studies as ds
from engine.metrics import analysis, queries
from engine.metrics.synth_predictions import write_synthetic_store

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("ensembles", "pretraining", "finetuning", "thresholds")
ATTRIBUTES = ("sex", "race")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("studies") / "store"
    write_synthetic_store(path, n_images=3000)
    return str(path)


@pytest.fixture(scope="module")
def view(store):
    return analysis.open_store(store)


def page(name: str, store: str, **session) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / f"{name}.py"), default_timeout=180)
    for key, value in {state.STORE: store, **session}.items():
        at.session_state[key] = value
    return at.run()


def table(at: AppTest, index: int = 0) -> pl.DataFrame:
    return pl.from_pandas(at.table[index].value)


def charts_of(at: AppTest) -> list[dict]:
    return [json.loads(element.proto.spec) for element in at.get("plotly_chart")]


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_with_charts_and_exports(store, name):
    at = page(name, store)
    assert not at.exception and charts_of(at), at.exception
    assert {"PNG", "SVG", "PDF", "CSV", "LaTeX"} <= {button.label for button in at.download_button}


@pytest.mark.parametrize("name", PAGES)
def test_empty_store_is_explained_not_an_error(tmp_path, name):
    at = page(name, str(tmp_path / "nothing-here"))
    assert not at.exception and not at.get("plotly_chart"), at.exception
    assert any("No results store" in info.value for info in at.info)


def _by(frame: pl.DataFrame, **where) -> pl.DataFrame:
    return frame.filter(*(pl.col(k) == v for k, v in where.items()))


def test_ensembles_page_shows_engine_values_and_published_table3(store, view):
    at = page("ensembles", store)
    shown = table(at)
    paper = analysis.paper_ensembles(view.runs, balancing="standard")
    assert len(paper) == 6
    names = {name: f"{name} (engine)" for name in paper}
    analysis.register_ensembles(view, {names[n]: (m, "mean-probability") for n, m in paper.items()})
    engine = analysis.fairness_summary(view, run_ids=list(names.values()), eval_set="resampled", attributes=ATTRIBUTES)
    reference = ds.paper_reference().filter(pl.col("table") == "Table 3")
    for name, engine_name in names.items():
        mine = _by(engine, run_id=engine_name)
        row = _by(shown, ensemble=name).row(0, named=True)
        assert row["Mean AUC ↑"] == pytest.approx(mine["mean_auc_pts"][0], abs=1e-9)
        for attribute in ATTRIBUTES:
            gap = _by(mine, attribute=attribute)["fairness_gap_pts"][0]
            assert row[f"{attribute.capitalize()} fairness gap ↓"] == pytest.approx(gap, abs=1e-9)
            published = _by(reference, selector=f"ensemble={name}", metric=f"fairness_gap_{attribute}")["value"][0]
            assert row[f"{attribute.capitalize()} fairness gap ↓ (paper)"] == published
        assert f"{attribute.capitalize()} fairness score ↑ (paper)" not in row  # nothing published: no column
    assert "Sex fairness score ↑" in table(at, 1)["metric"].to_list()
    tests = table(at, 2)
    assert set(tests["member"].to_list()) == set(paper["ViT (masked)"]) and tests["p_value"].is_between(0, 1).all()


def test_building_an_ensemble_appends_it_to_the_url_state(store):
    at = page("ensembles", store)
    at.text_input(key="ensembles.name").input("MAE and BiT")
    at.multiselect(key="ensembles.members").set_value(["mae-standard", "bit-standard"])
    at.selectbox(key="ensembles.rule").set_value("rank-average")
    at.button[0].click().run()
    assert not at.exception, at.exception
    expected = state.encode_ensemble("MAE and BiT", "rank-average", ["mae-standard", "bit-standard"])
    assert at.session_state[state.CUSTOM_ENSEMBLES] == [expected]
    assert at.selectbox(key="ensembles.compare").value == "MAE and BiT"
    assert any("Added" in s.value for s in at.success)
    assert set(table(at, 2)["member"].to_list()) == {"mae-standard", "bit-standard"}
    # a one-member ensemble is refused with a message; the state keeps the first ensemble only
    at.text_input(key="ensembles.name").input("lonely")
    at.multiselect(key="ensembles.members").set_value(["mae-standard"])
    at.button[0].click().run()
    assert at.session_state[state.CUSTOM_ENSEMBLES] == [expected]
    assert any("Not added" in e.value for e in at.error)


def test_a_custom_ensemble_from_the_url_is_shown(store):
    encoded = state.encode_ensemble("pair", "mean-logit", ["moco-v3-standard", "remedis-standard"])
    shown = table(page("ensembles", store, **{state.CUSTOM_ENSEMBLES: [encoded]}))
    assert _by(shown, ensemble="pair")["set"].to_list() == ["your ensembles"]  # scored beside the paper's


@pytest.fixture(scope="module")
def twin_store(tmp_path_factory, store) -> str:
    """The small store plus "mae-copy", a byte-identical copy of mae-standard's predictions."""
    path = tmp_path_factory.mktemp("twin") / "store"
    shutil.copytree(store, path)
    shutil.copytree(path / "runs" / "mae-standard", path / "runs" / "mae-copy")
    info = json.loads((path / "runs" / "mae-copy" / "run.json").read_text())
    (path / "runs" / "mae-copy" / "run.json").write_text(json.dumps({**info, "run_id": "mae-copy"}))
    return str(path)


@pytest.mark.parametrize("rule", ["mean-probability", "mean-logit", "rank-average"])
def test_an_ensemble_of_two_identical_members_equals_the_member(twin_store, rule):
    fp = data.store_fingerprint(twin_store)
    ensemble = ("twins", rule, ("mae-standard", "mae-copy"))
    summary = ds.ensemble_summary(twin_store, fp, ensembles=(ensemble,), eval_set="resampled", attributes=ATTRIBUTES)
    member = data.fairness(twin_store, fp, run_ids=("mae-standard",), eval_set="resampled", attributes=ATTRIBUTES)
    for column in ("mean_auc_pts", "fairness_gap_pts"):
        assert summary.sort("attribute")[column].to_list() == pytest.approx(
            member.sort("attribute")[column].to_list(), abs=1e-12)
    comparison = ds.ensemble_comparison(twin_store, fp, ensemble=ensemble, eval_set="resampled",
                                        attributes=ATTRIBUTES, n_boot=50)
    assert np.allclose(comparison["tests"]["difference"].to_numpy(), 0.0, atol=1e-12)
    assert np.allclose(comparison["tests"]["ci_low"].to_numpy(), 0.0, atol=1e-12)
    # the registered id depends on the rule and the members (not their order), so names never collide
    assert ds.ensemble_id("e", rule, ["a", "b"]) == ds.ensemble_id("e", rule, ["b", "a"])
    assert ds.ensemble_id("e", rule, ["a", "b"]) != ds.ensemble_id("e", rule, ["a", "c"])


@pytest.mark.parametrize(("study", "tag", "rows"), [
    ("data", "pretraining-data", 3), ("epochs", "pretraining-epochs", 3), ("fraction", "pretraining-fraction", 2)])
def test_pretraining_page_shows_engine_values_beside_published(store, view, study, tag, rows):
    at = page("pretraining", store, **{"pretraining.study": study})
    assert not at.exception, at.exception
    auc = table(at)
    assert auc.height == rows and auc["Mean AUC ↑ (paper)"].is_not_null().all()
    run_ids = [r for row in auc["runs"].to_list() for r in row.split(", ")]
    assert any(analysis.tag(view.runs.filter(pl.col("run_id") == r), "study")[0] == tag for r in run_ids)
    engine = analysis.fairness_summary(view, run_ids=run_ids, eval_set="resampled", attributes=ATTRIBUTES)
    for row in auc.iter_rows(named=True):
        assert row["Mean AUC ↑"] == pytest.approx(_by(engine, run_id=row["runs"])["mean_auc_pts"][0], abs=1e-9)
        assert row["Race fairness gap ↓"] == pytest.approx(
            _by(engine, run_id=row["runs"], attribute="race")["fairness_gap_pts"][0], abs=1e-9)


def test_table5_full_data_row_is_the_chexpert_run_of_the_data_study(store):
    shown = table(page("pretraining", store, **{"pretraining.study": "fraction"}))
    full = _by(shown, **{"paper row": "CXPT (100%)"})
    assert full["runs"].to_list() == ["mae-pt-cxpt"] and full["Mean AUC ↑ (paper)"].to_list() == [81.0]


def test_finetuning_page_pairs_linear_probe_and_fine_tuning(store, view):
    at = page("finetuning", store)
    assert not at.exception, at.exception
    shown = table(at, 0)
    engine = analysis.fairness_summary(view, run_ids=["mae-linear-probe", "mae-standard"], eval_set="resampled",
                                       attributes=ATTRIBUTES)
    for group, run_id, published in (("linear probe", "mae-linear-probe", 66.7),
                                     ("end-to-end fine-tuning", "mae-standard", 79.3)):
        row = _by(shown, model="MAE", mode=group)
        assert row["runs"].to_list() == [run_id] and row["Mean AUC ↑ (paper)"].to_list() == [published]
        assert row["Mean AUC ↑"][0] == pytest.approx(_by(engine, run_id=run_id)["mean_auc_pts"][0], abs=1e-9)
    change = table(at, 1)
    mae = _by(change, model="MAE", metric="Mean AUC ↑")
    assert mae["fine-tuning minus linear probe"][0] == pytest.approx(
        mae["end-to-end fine-tuning"][0] - mae["linear probe"][0])


def test_thresholds_page_shows_engine_rates_on_the_unresampled_test_split(store, view):
    at = page("thresholds", store, **{"thresholds.runs": ["mae-standard", "bit-standard"]})
    assert not at.exception, at.exception
    assert at.selectbox(key="thresholds.eval").value == "test"
    shown = table(at).sort("run_id", "attribute", "subgroup")
    pathology = at.selectbox(key="thresholds.pathology").value
    engine = analysis.threshold_metrics(view, run_ids=["mae-standard", "bit-standard"], eval_set="test",
                                        attributes=ATTRIBUTES, pathologies=[pathology], operating_fpr=0.2)
    engine = engine.sort("run_id", "attribute", "subgroup")
    assert set(shown["threshold_source"].to_list()) == {"validation-fpr-0.2"}
    for rate in ("tpr", "fpr", "fnr", "tnr", "threshold"):
        assert shown[rate].to_list() == pytest.approx(engine[rate].to_list(), abs=1e-12)
    under = table(at, 1)
    assert set(under["run_id"].to_list()) == {"mae-standard", "bit-standard"}
    heatmap = charts_of(at)[2]["data"][0]
    eod = queries.equalized_odds_difference(view.con, metrics=analysis.threshold_metrics(
        view, run_ids=["mae-standard", "bit-standard"], eval_set="test", attributes=ATTRIBUTES, operating_fpr=0.2))
    for r, row in enumerate(heatmap["y"]):
        run_id, attribute = row.split(" · ")
        for c, pathology in enumerate(heatmap["x"]):
            expected = _by(eod, run_id=run_id, attribute=attribute, pathology=pathology)["equalized_odds_difference"]
            assert heatmap["z"][r][c] == pytest.approx(expected[0], abs=1e-12)


def test_thresholds_page_labels_a_test_derived_threshold(store):
    at = page("thresholds", store, **{"thresholds.runs": ["gone-run", "mae-standard"], "thresholds.eval": "gone",
                                      "thresholds.rule": "youden", "thresholds.select": "test"})  # stale: dropped
    assert not at.exception, at.exception
    assert set(table(at).select("run_id", "threshold_source").unique().rows()) == {("mae-standard", "test-youden")}
    assert any("optimistic" in w.value for w in at.warning)
    fixed = table(page("thresholds", store, **{"thresholds.runs": ["mae-standard"], "thresholds.rule": "fixed",
                                               "thresholds.t": 0.3}))
    assert set(fixed["threshold"].to_list()) == {0.3} and set(fixed["threshold_source"].to_list()) == {"given"}


# ---------------------------------------------------------------------------------------------- shaping and charts


def test_published_vs_reproduced_averages_seeds_and_keeps_unmatched_published_rows():
    metrics = pl.DataFrame({"run_id": ["a1", "a2", "b"], "metric": ["mean_auc"] * 3, "value": [80.0, 82.0, None],
                            "ci_low": [79.0, 81.0, None], "ci_high": [81.0, 83.0, None]})
    placement = pl.DataFrame({"run_id": ["a1", "a2", "b"], "x": ["A", "A", "B"], "group": ["g"] * 3})
    runs = pl.DataFrame({"run_id": ["a1", "a2", "b"], "model": ["a", "a", "b"]})
    reference = pl.DataFrame({"table": ["T"] * 2, "row": ["A row", "C row"], "selector": ["model=a", "model=c"],
                              "metric": ["mean_auc"] * 2, "value": [81.5, 70.0]})
    out = ds.published_vs_reproduced(metrics, placement, reference, runs, default_group="g")
    a = _by(out, x="A").row(0, named=True)
    assert a["reproduced"] == 81.0 and a["ci_low"] is None and a["published"] == 81.5 and a["runs"] == "a1, a2"
    assert _by(out, x="B")["reproduced"].to_list() == [None]  # undefined stays undefined
    c = _by(out, x="C row").row(0, named=True)
    assert c["reproduced"] is None and c["published"] == 70.0 and c["runs"] is None
    wide = ds.side_by_side(out, ["mean_auc"])
    assert wide.columns == ["x", "group", "Mean AUC ↑", "Mean AUC ↑ (paper)", "runs", "paper row"]  # no CI: dropped
    assert wide.rows() == [("A", "g", 81.0, 81.5, "a1, a2", "A row"), ("B", "g", None, None, "b", None),
                           ("C row", "g", None, 70.0, None, "C row")]
    assert set(charts.blank_columns(wide)) == {"Mean AUC ↑ (paper)", "runs", "paper row"}
    rows = ds.chart_rows(out, ["mean_auc"])
    assert sorted(rows["source"].to_list()) == ["published", "published", "reproduced", "reproduced"]


def test_metric_panels_marks_undefined_values_and_hatches_published_bars():
    rows = pl.DataFrame({"panel": ["Mean AUC ↑"] * 3 + ["Sex fairness gap ↓"] * 2, "x": ["A", "B", "A", "A", "B"],
                         "group": ["g"] * 5, "source": ["reproduced"] * 2 + ["published"] + ["reproduced"] * 2,
                         "value": [80.0, 81.0, 82.0, 1.2, None], "ci_low": [79.0] + [None] * 4,
                         "ci_high": [81.0] + [None] * 4})
    fig = charts.metric_panels(rows, title="t")
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 3 and fig.layout.template.layout.font.family.startswith("Liberation")
    published = [t for t in bars if t.name == "g · paper"]
    assert published[0].marker.pattern.shape == charts.PUBLISHED_PATTERN
    gap = [t for t in bars if t.name == "g" and t.xaxis == "x2"][0]
    assert gap.orientation == "h" and list(gap.y) == ["A", "B"] and list(gap.x) == [1.2, None]  # never 0
    assert [(t.text[0], t.y[0]) for t in fig.data if t.type == "scatter"] == [(charts.UNDEFINED, "B")]
    assert list(bars[0].error_x.array)[0] == pytest.approx(1.0)
    assert fig.layout.xaxis2.range[0] == 0 and fig.layout.xaxis.range[0] > 70


def test_heatmap_writes_undefined_cells_and_empty_input_says_so():
    cells = pl.DataFrame({"r": ["a", "a", "b"], "c": ["x", "y", "x"], "v": [0.1, None, 0.3]})
    fig = charts.heatmap(cells, row="r", column="c", value="v")
    assert fig.data[0].text[0][1] == charts.UNDEFINED and fig.data[0].text[1][1] == charts.UNDEFINED
    assert fig.data[0].z[0][0] == 0.1
    empty = charts.metric_panels(pl.DataFrame(schema={"panel": pl.String, "x": pl.String, "group": pl.String,
                                                      "value": pl.Float64}))
    assert "nothing to show" in empty.layout.annotations[0].text


def test_rate_and_underdiagnosis_rows_shape_threshold_tables(view):
    metrics = analysis.threshold_metrics(view, run_ids=["mae-standard"], eval_set="test", attributes=ATTRIBUTES,
                                         youden=True)
    rows = charts.rate_rows(metrics, pathology="Edema", labels={"mae-standard": "MAE"},
                            rates=("tpr", "fpr", "fnr", "tnr"))
    assert rows["panel"].unique(maintain_order=True).to_list() == ["TPR", "FPR", "FNR", "TNR"]
    assert set(rows["x"].to_list()) == {"all", *(f"sex: {s}" for s in ("Female", "Male")),
                                        *(f"race: {r}" for r in ("White", "Asian", "Black"))}
    assert rows["group"].unique().to_list() == ["MAE"]
    edema = metrics.filter(pl.col("pathology") == "Edema", pl.col("subgroup") == "Black")
    assert _by(rows, panel="FNR", x="race: Black")["value"][0] == edema["fnr"][0]
    under = analysis.threshold_metrics(view, run_ids=["mae-standard"], eval_set="test", attributes=ATTRIBUTES,
                                       pathologies=["No Finding"], youden=True)
    shaped = charts.underdiagnosis_rows(queries.underdiagnosis(view.con, metrics=under), labels={})
    assert set(shaped["panel"].to_list()) == set(ATTRIBUTES) and shaped["group"].unique().to_list() == ["mae-standard"]


def test_styled_tables_say_undefined_for_metrics_and_a_dash_for_nothing_published():
    frame = pl.DataFrame({"x": ["A", "B"], "reproduced": [80.123, None], "ci_low": [None, None],
                          "ci_high": [None, None], "published": [None, 81.0]})
    html = charts.styled(frame).to_html()
    assert "ci_low" not in html  # intervals off: no empty interval columns
    assert "80.12" in html and ">undefined<" in html and ">–<" in html and "81.00" in html
    assert charts.styled(frame, blank=()).to_html().count(">undefined<") == 2

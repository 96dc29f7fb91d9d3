"""The dashboard driven through AppTest (dashboard/app.py) on a small synthetic store and on an empty folder:
every page renders, every shared filter changes the plotted numbers, Overview equals the metrics layer, and the
Data page imports predictions and reports bad files clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from engine.metrics import analysis
from engine.metrics.synth_predictions import write_synthetic_store

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
OWN_PAGES = ["views/overview.py", "views/subgroups.py", "views/pathologies.py", "views/cohort.py",
             "views/data_page.py"]
CHART_PAGES = OWN_PAGES[:4]
# the study pages are built beside these; the frame registers whichever exist, and each must render too
STUDY_PAGES = [f"views/{name}" for name in ("ensembles.py", "pretraining.py", "finetuning.py", "thresholds.py")
               if (Path(APP).parent / "views" / name).is_file()]
PAGES = OWN_PAGES + STUDY_PAGES


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dash") / "store"
    write_synthetic_store(path, n_images=3000, seed=0)
    return path


def open_app(store: Path, monkeypatch, page: str | None = None, **query) -> AppTest:
    monkeypatch.setenv("FMFAIR_STORE", str(store))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(query)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def numbers(at: AppTest) -> list[float]:
    """Every y value (and heatmap z value) of every chart on the page, in order."""
    out = []
    for spec in specs(at):
        for trace in spec["data"]:
            values = trace.get("z") or [trace.get("y") or []]
            out += [round(v, 9) for row in values for v in row if isinstance(v, int | float)]
    return out


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_a_store(store, monkeypatch, page):
    at = open_app(store, monkeypatch, page)
    assert not at.error
    if page in CHART_PAGES:
        assert specs(at), "no chart"
        labels = [b.label for b in at.download_button]
        assert {"PNG", "SVG", "PDF", "CSV", "LaTeX"} <= set(labels)
        assert any("zip" in label for label in labels)
    assert "SYNTHETIC DEMO DATA" in " ".join(w.value for w in at.warning)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_says_what_to_run_on_an_empty_folder(tmp_path, monkeypatch, page):
    at = open_app(tmp_path, monkeypatch, page)
    assert not at.get("plotly_chart")
    assert "python -m dashboard.demo_store" in " ".join(i.value for i in at.info)
    assert "SYNTHETIC" not in " ".join(w.value for w in at.warning)


def test_pages_render_with_intervals_ensembles_and_intersections(store, monkeypatch):
    at = open_app(store, monkeypatch, ci="true", ens="true", path="Edema")
    at.sidebar.multiselect(key="attr").set_value(["sex", "age_bin", "sex x race"]).run()
    for page in CHART_PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert specs(at)
    at.switch_page("views/subgroups.py").run()
    assert len(specs(at)) == 2, "subgroup AUCs with intervals are drawn for a single pathology"
    ci = specs(at)[1]["data"][0]["error_y"]
    assert ci["array"] and all(v >= 0 for v in ci["array"] if v is not None)


def test_overview_equals_fairness_summary(store, monkeypatch):
    at = open_app(store, monkeypatch)
    view = analysis.open_store(store)
    matrix = analysis.model_matrix(view.runs, balancing="standard")["run_id"].to_list()
    assert sorted(at.sidebar.multiselect(key="runs").value) == sorted(matrix)
    expected = analysis.fairness_summary(view, run_ids=matrix, eval_set="resampled", attributes=["sex", "race"])
    spec = specs(at)[0]
    axes = {"x": "all", "x2": "sex", "x3": "race"}
    seen = 0
    for trace in spec["data"]:
        if trace["name"] == "published (paper)":
            continue
        attribute = axes[trace.get("xaxis", "x")]
        column = "mean_auc_pts" if attribute == "all" else "fairness_score_pts"
        rows = expected if attribute == "all" else expected.filter(pl.col("attribute") == attribute)
        truth = dict(rows.select("run_id", column).iter_rows())
        for run_id, value in zip(trace["customdata"], trace["y"], strict=True):
            assert value == pytest.approx(truth[run_id], abs=1e-9)
            seen += 1
    assert seen >= 3 * len(matrix)  # every model in every panel (scratch lines repeat their value)


def test_overview_groups_models_by_the_chosen_family(store, monkeypatch):
    at = open_app(store, monkeypatch)
    assert {t["name"] for t in specs(at)[0]["data"] if t["type"] == "bar"} == {"natural", "medical"}
    at.selectbox(key="overview.group").set_value("architecture family").run()
    assert {t["name"] for t in specs(at)[0]["data"] if t["type"] == "bar"} == {"ViT", "ResNet"}


def test_overview_intervals_equal_the_bootstrap(store, monkeypatch):
    at = open_app(store, monkeypatch, ci="true")
    view = analysis.open_store(store)
    runs = at.sidebar.multiselect(key="runs").value
    expected = analysis.fairness_summary(view, run_ids=runs, eval_set="resampled", attributes=["sex", "race"],
                                         n_boot=200, seed=0)
    high = dict(expected.unique("run_id").select("run_id", "mean_auc_pts_ci_high").iter_rows())
    bars = [t for t in specs(at)[0]["data"] if t["type"] == "bar" and t.get("xaxis", "x") == "x"]
    for trace in bars:
        for run_id, value, up in zip(trace["customdata"], trace["y"], trace["error_y"]["array"], strict=True):
            assert value + up == pytest.approx(high[run_id], abs=1e-9)


FILTERS = {
    "runs": lambda at: at.sidebar.multiselect(key="runs").unselect("scratch-vit-standard"),
    "attribute": lambda at: at.sidebar.multiselect(key="attr").set_value(["sex", "age_bin"]),
    "pathology": lambda at: at.sidebar.selectbox(key="path").set_value("Edema"),
    "balancing": lambda at: at.sidebar.radio(key="bal").set_value("balanced"),
    "eval set": lambda at: at.sidebar.selectbox(key="eval").set_value("test"),
}


@pytest.mark.parametrize("page", ["views/overview.py", "views/subgroups.py"])
@pytest.mark.parametrize("name", list(FILTERS))
def test_each_shared_filter_changes_the_numbers(store, monkeypatch, page, name):
    at = open_app(store, monkeypatch, page)
    before = numbers(at)
    FILTERS[name](at).run()
    assert not at.exception
    after = numbers(at)
    assert after and after != before


def test_balancing_selects_the_balanced_matrix_and_the_url_reopens_it(store, monkeypatch):
    at = open_app(store, monkeypatch)
    at.sidebar.radio(key="bal").set_value("balanced").run()
    runs = analysis.open_store(store).runs
    balanced = analysis.model_matrix(runs, balancing="balanced")["run_id"].to_list()
    assert sorted(at.sidebar.multiselect(key="runs").value) == sorted(balanced)
    shared = open_app(store, monkeypatch, bal="balanced", eval="test", path="Edema", attr=["sex", "sex x race"])
    assert sorted(shared.sidebar.multiselect(key="runs").value) == sorted(balanced)
    assert shared.sidebar.selectbox(key="eval").value == "test"
    assert shared.sidebar.multiselect(key="attr").value == ["sex", "sex x race"]


def test_user_ensembles_from_the_url_join_the_overview(store, monkeypatch):
    at = open_app(store, monkeypatch, ens="true", myens=["mine~rank-average~mae-standard+bit-standard",
                                                         "bad~mean-probability~no-such-run"])
    assert not at.exception
    labels = {x for trace in specs(at)[0]["data"] for x in trace.get("x") or []}
    assert {"mine", "ViT (masked)", "All foundation models"} <= labels
    assert at.sidebar.multiselect(key="myens").value == ["mine~rank-average~mae-standard+bit-standard"]
    assert "no-such-run" in " ".join(w.value for w in at.sidebar.warning)


def _predictions_csv(store: Path, *, bad: bool = False) -> bytes:
    cohort = pl.read_parquet(store / "cohort.parquet").filter(pl.col("split") == "test").head(400)
    rng = np.random.default_rng(0)
    parts = [cohort.select(pl.lit("test").alias("split"), "image_id", pl.lit(p).alias("pathology"),
                           (pl.col(p) == 1).fill_null(False).cast(pl.Int8).alias("y_true"),
                           pl.Series("y_score", rng.random(cohort.height)).round(4))
             for p in ("Edema", "Cardiomegaly")]
    frame = pl.concat(parts).with_columns(pl.col("y_score").cast(pl.String))
    if bad:
        frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("abc")).otherwise("y_score")
                                   .alias("y_score"))
    return frame.write_csv().encode()


def _import(at: AppTest, payload: bytes, run_id: str) -> AppTest:
    at.file_uploader(key="data.upload").set_value(("preds.csv", payload, "text/csv"))
    at.text_input(key="data.run_id").input(run_id)
    at.button(key="data.import").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_data_page_imports_a_predictions_csv(store, tmp_path, monkeypatch):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    at = _import(open_app(copy, monkeypatch, "views/data_page.py"), _predictions_csv(copy), "my-model")
    assert "Imported run **my-model**" in " ".join(s.value for s in at.success)
    assert (copy / "runs" / "my-model" / "run.json").is_file()
    assert "my-model" in at.sidebar.multiselect(key="runs").options
    at.sidebar.multiselect(key="runs").set_value(["my-model"]).run()
    at.switch_page("views/overview.py").run()
    assert not at.exception and specs(at)


def test_data_page_explains_a_bad_file_without_patient_ids(store, tmp_path, monkeypatch):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    at = _import(open_app(copy, monkeypatch, "views/data_page.py"), _predictions_csv(copy, bad=True), "broken")
    message = " ".join(e.value for e in at.error)
    assert "not a number" in message and "y_score" in message and "preds.csv" in message
    assert "patient•••" in message and not any(f"patient{d}" in message for d in "0123456789")
    assert not (copy / "runs" / "broken").exists()


def test_demo_store_is_written_once_and_opens(tmp_path, monkeypatch, capsys):
    from dashboard.demo_store import main

    out = tmp_path / "demo"
    assert main(["--out", str(out), "--images", "300"]) == 0
    assert "wrote the synthetic demo store" in capsys.readouterr().out
    stamp = (out / "store.json").stat().st_mtime_ns
    assert main(["--out", str(out), "--images", "300"]) == 0
    assert "exists" in capsys.readouterr().out and (out / "store.json").stat().st_mtime_ns == stamp
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["--out", str(tmp_path / "other")]) == 2
    assert specs(open_app(out, monkeypatch))

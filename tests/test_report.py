"""`report` end to end: files written, values equal to the SQL definitions, paper tables, imported real runs."""

from __future__ import annotations

import json

import polars as pl
import pytest

import run_experiments
from engine.metrics import analysis, queries
from engine.metrics.report import to_latex, to_markdown, write_report
from engine.metrics.synth_predictions import write_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "store"
    write_synthetic_store(path, n_images=2500, seed=3)
    return path


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    manifest = write_report(store, out, attributes=("sex", "race", "age_bin"), n_boot=30, seed=1,
                            formats=("csv", "latex", "md"))
    return out, manifest


def test_every_table_is_written_in_every_format(report):
    out, manifest = report
    for name in ("subgroup_auc", "fairness_summary", "threshold_metrics", "paper_tables", "figure1", "figure3"):
        for suffix in (".csv", ".tex", ".md"):
            assert (out / f"{name}{suffix}").stat().st_size > 0, (name, suffix)
    assert json.loads((out / "report.json").read_text())["eval_set"] == manifest["eval_set"] == "resampled"


def test_subgroup_auc_and_summary_equal_the_sql_definitions(store, report):
    out, manifest = report
    con = queries.connect(store)
    runs = manifest["runs"][:4]
    sql = queries.subgroup_auc(con, run_ids=runs, eval_set="resampled", attributes=["sex", "race", "age_bin"])
    written = pl.read_csv(out / "subgroup_auc.csv", infer_schema_length=None).filter(pl.col("run_id").is_in(runs))
    keys = ["run_id", "pathology", "attribute", "subgroup"]
    joined = sql.join(written, on=keys, suffix="_report")
    assert joined.height == sql.height
    assert (joined["auc"] - joined["auc_report"]).abs().max() < 1e-12
    assert (joined["ci_low"] <= joined["auc_report"] + 1e-9).mean() > 0.9  # percentile CIs around the estimate
    summary = queries.fairness_summary(con, run_ids=manifest["runs"], eval_set="resampled",
                                       attributes=["sex", "race", "age_bin"])
    report_summary = pl.read_csv(out / "fairness_summary.csv", infer_schema_length=None)
    both = summary.join(report_summary, on=["run_id", "attribute"], suffix="_r")
    for column in ("fairness_gap_pts", "fairness_score_pts", "c_pts", "mean_auc_pts"):
        assert (both[column] - both[f"{column}_r"]).abs().max() < 1e-9, column


def test_paper_tables_match_every_published_row_and_figure_scores_use_their_own_c(store, report):
    out, _ = report
    paper = pl.read_csv(out / "paper_tables.csv")
    assert paper.height == 54 and paper["n_runs"].min() == 1
    assert set(paper["table"]) == {"Table 2", "Table 3", "Table 4", "Table 5", "Table 6"}
    figure = pl.read_csv(out / "figure4.csv")  # the ResNet models only: C is over that set
    for _attribute, part in figure.group_by("attribute"):
        assert part["c_pts"].unique().to_list() == [pytest.approx(part["fairness_gap_pts"].max() + 1.0)]
        assert part["fairness_score_pts"].min() == pytest.approx(1.0)
    view = analysis.open_store(store)
    assert set(figure["run_id"]) == set(analysis.model_matrix(view.runs).filter(
        pl.col("architecture_family") == "ResNet")["run_id"])


def test_existing_output_needs_force(store, report):
    out, _ = report
    with pytest.raises(FileExistsError, match="--force"):
        write_report(store, out)


def test_null_values_print_as_undefined():
    table = pl.DataFrame({"subgroup": ["A_b", "B"], "auc": [0.75, None]})
    assert "| B | undefined |" in to_markdown(table)
    assert r"A\_b & 0.7500 \\" in to_latex(table)


def test_import_then_report_on_the_real_densenet_logits(realdata, tmp_path, capsys):
    source = realdata / "cxr-foundation-bias-samples" / "chexpert-model.embeddings.csv"
    store = tmp_path / "store"
    assert run_experiments.main([
        "import", "--store", str(store), "--run-id", "densenet", "--predictions", str(source),
        "--score-pattern", "Logit - {pathology}", "--label-pattern", "{pathology}", "--id-column", "Path",
        "--score-kind", "logit", "--label-policy", "u-zeros", "--attribute-columns", "sex,race",
        "--patient-column", "patient_id", "--duplicates", "weight"]) == 0
    assert run_experiments.main(["report", "--store", str(store), "--out", str(tmp_path / "r"),
                                 "--eval-set", "test"]) == 0
    auc = pl.read_csv(tmp_path / "r" / "subgroup_auc.csv")
    everyone = auc.filter((pl.col("pathology") == "No Finding") & (pl.col("attribute") == "all"))["auc"][0]
    assert everyone == pytest.approx(0.8873, abs=5e-5)  # expected.json self_computed, 4 decimals
    manifest = json.loads((tmp_path / "r" / "report.json").read_text())
    assert manifest["notes"]["threshold_metrics"].startswith("not written")  # no validation split to choose on


def test_cli_synth_predictions_writes_a_store_report_reads(tmp_path):
    store = tmp_path / "store"
    assert run_experiments.main(["synth", "--predictions", "--out", str(store), "--images", "600"]) == 0
    assert json.loads((store / "store.json").read_text())["synthetic"] is True
    assert run_experiments.main(["report", "--store", str(store), "--out", str(tmp_path / "r"), "--no-paper",
                                 "--runs", "mae-standard,medical-mae-standard"]) == 0
    summary = pl.read_csv(tmp_path / "r" / "fairness_summary.csv")
    assert set(summary["run_id"]) == {"mae-standard", "medical-mae-standard"}
    assert summary["fairness_score_pts"].min() == pytest.approx(1.0)  # C = max gap + 1 over the two runs

"""Bad input gets a clear error naming the file, the column and example rows; nothing is written."""

from __future__ import annotations

import pytest
from chexpert_fixtures import train_row, write_demographics, write_split, write_train_csv

import run_experiments
from engine.data.cohort import build_chexpert_cohort
from engine.data.errors import DataError, OutputExistsError
from engine.data.prepare import prepare_chexpert
from engine.data.schema import CHEXPERT_TRAIN_COLUMNS

NH = "Non-Hispanic/Non-Latino"


@pytest.fixture
def demo(tmp_path):
    return write_demographics(tmp_path / "demo.csv", {1: ("White", NH), 2: ("Asian", NH)})


@pytest.fixture
def split(tmp_path):
    return write_split(tmp_path / "split.csv", {0: "train", 1: "test"})


def _build(tmp_path, rows, demo, split, **kwargs):
    return build_chexpert_cohort(write_train_csv(tmp_path / "train.csv", rows, **kwargs), demo, split=split)


def test_misspelled_column_is_named_with_a_suggestion(tmp_path, demo, split):
    columns = tuple("Frontal/Lateal" if c == "Frontal/Lateral" else c for c in CHEXPERT_TRAIN_COLUMNS)
    rows = [{("Frontal/Lateal" if k == "Frontal/Lateral" else k): v for k, v in train_row(1).items()}]
    with pytest.raises(DataError) as err:
        _build(tmp_path, rows, demo, split, columns=columns)
    text = str(err.value)
    assert "'Frontal/Lateral'" in text and "did you mean 'Frontal/Lateal'" in text and "train.csv" in text


def test_label_outside_allowed_values_names_column_and_line(tmp_path, demo, split):
    rows = [train_row(1), train_row(2, labels={"Edema": "2.0"}), train_row(2, study=2, labels={"Edema": "yes"})]
    with pytest.raises(DataError) as err:
        _build(tmp_path, rows, demo, split)
    text = str(err.value)
    assert "column: 'Edema'" in text and "line 3: Edema='2.0'" in text and "line 4: Edema='yes'" in text
    assert "2 offending row(s)" in text


def test_unknown_sex_value(tmp_path, demo, split):
    with pytest.raises(DataError, match=r"(?s)unknown Sex value.*column: 'Sex'.*line 3: sex='F'"):
        _build(tmp_path, [train_row(1), train_row(2, sex="F")], demo, split)


def test_duplicate_paths_even_across_release_prefixes(tmp_path, demo, split):
    rows = [train_row(1), train_row(1, prefix="CheXpert-v1.0/train")]
    with pytest.raises(DataError, match=r"(?s)duplicate image paths.*column: 'Path'"):
        _build(tmp_path, rows, demo, split)


def test_path_that_is_not_a_chexpert_path(tmp_path, demo, split):
    rows = [train_row(1) | {"Path": "images/00000001_000.png"}]
    with pytest.raises(DataError, match=r"(?s)does not look like a CheXpert image path.*line 2"):
        _build(tmp_path, rows, demo, split)


def test_split_indices_that_do_not_fit_train_csv(tmp_path, demo):
    bad_split = write_split(tmp_path / "split.csv", {0: "train", 5: "test"})
    with pytest.raises(DataError, match=r"(?s)do not fit train.csv \(2 rows.*column: 'index'.*source_row=5"):
        _build(tmp_path, [train_row(1), train_row(2)], demo, bad_split)


def test_split_value_outside_train_validate_test(tmp_path, demo):
    bad_split = write_split(tmp_path / "split.csv", {0: "train", 1: "val"})
    with pytest.raises(DataError, match=r"(?s)split values outside.*line 3: split='val'"):
        _build(tmp_path, [train_row(1), train_row(2)], demo, bad_split)


def test_patients_absent_from_demographics_error_or_counted_exclusion(tmp_path, demo, split):
    train = write_train_csv(tmp_path / "train.csv", [train_row(1), train_row(3)])
    with pytest.raises(DataError, match=r"(?s)absent from the demographics file.*column: 'PATIENT'.*patient00003"):
        build_chexpert_cohort(train, demo, split=split)
    cohort, report = build_chexpert_cohort(train, demo, split=split, allow_missing_demographics=True)
    assert cohort["patient_id"].to_list() == ["patient00001"]
    step = report["filters"]["train.csv"]["filters"][1]
    assert (step["step"], step["removed"]) == ("demographics", 1)


def test_conflicting_demographics_rows(tmp_path, split):
    demo = write_demographics(tmp_path / "demo.csv", {1: ("White", NH)})
    with demo.open("a") as handle:
        handle.write("patient00001,Male,50,Asian,Not Hispanic\n")
    with pytest.raises(DataError, match=r"(?s)conflicting demographics.*PATIENT"):
        build_chexpert_cohort(write_train_csv(tmp_path / "train.csv", [train_row(1)]), demo, split=split)


def test_existing_output_is_not_overwritten_without_force(tmp_path, demo, split):
    train = write_train_csv(tmp_path / "train.csv", [train_row(1), train_row(2)])
    out = tmp_path / "out" / "cohort.parquet"
    out.parent.mkdir()
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--force"):
        prepare_chexpert(train_csv=train, demographics=demo, split=split, out=out, echo=False)
    assert out.read_bytes() == b"precious"
    prepare_chexpert(train_csv=train, demographics=demo, split=split, out=out, force=True, echo=False)
    assert out.read_bytes()[:4] == b"PAR1" and (out.parent / "cohort_report.json").exists()


def test_failed_prepare_leaves_no_partial_output(tmp_path, demo, split):
    train = write_train_csv(tmp_path / "train.csv", [train_row(1), train_row(2, labels={"Edema": "3"})])
    out = tmp_path / "out" / "cohort.parquet"
    with pytest.raises(DataError):
        prepare_chexpert(train_csv=train, demographics=demo, split=split, out=out, echo=False)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, demo, split, capsys):
    train = write_train_csv(tmp_path / "train.csv", [train_row(1), train_row(2, sex="?")])
    code = run_experiments.main(["prepare", "chexpert", "--train-csv", str(train), "--demographics", str(demo),
                                 "--split", str(split), "--out", str(tmp_path / "c.parquet")])
    assert code == 2
    assert "error: unknown Sex value" in capsys.readouterr().err

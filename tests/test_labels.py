"""Label policies on a hand-worked table: raw 1 / 0 / -1 / blank for two pathologies."""

from __future__ import annotations

import polars as pl
import pytest

from engine.data.labels import LABEL_POLICIES, apply_policy

RAW = pl.DataFrame({"Edema": [1.0, 0.0, -1.0, None], "Cardiomegaly": [1.0, 0.0, -1.0, None]})
EXPECTED = {
    "u-zeros": {"Edema": [1, 0, 0, 0], "Cardiomegaly": [1, 0, 0, 0]},
    "u-ones": {"Edema": [1, 0, 1, 0], "Cardiomegaly": [1, 0, 1, 0]},
    "medical-mae": {"Edema": [1, 0, 1, 0], "Cardiomegaly": [1, 0, 0, 0]},  # U-Ones only for Edema, Atelectasis
    "ignore": {"Edema": [1, 0, None, 0], "Cardiomegaly": [1, 0, None, 0]},
}


@pytest.mark.parametrize("policy", LABEL_POLICIES)
def test_policy_targets(policy):
    out = apply_policy(RAW, policy, pathologies=("Edema", "Cardiomegaly"))
    for column, expected in EXPECTED[policy].items():
        assert out[column].to_list() == [None if v is None else float(v) for v in expected]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown label policy 'u-twos'"):
        apply_policy(RAW, "u-twos", pathologies=("Edema",))

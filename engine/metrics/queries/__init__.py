"""The only package that runs SQL: one function per file in ``engine/metrics/sql/`` (function name = file name).

Split by subject (``_core``: connection, catalogue, argument checks; ``auc``; ``ensembles``; ``thresholds``);
every function is re-exported here, so callers use ``from engine.metrics import queries``.
"""

from engine.metrics.queries._core import (  # noqa: F401
    ENSEMBLE_DECIMALS,
    ENSEMBLE_RULES,
    LOGIT_EPSILON,
    PAPER_ENSEMBLES,
    REFERENCES,
    SQL_DIR,
    UNITS,
    VALIDATION_SPLIT,
    attributes,
    connect,
    eval_sets,
    runs,
)
from engine.metrics.queries.auc import (  # noqa: F401
    fairness_summary,
    pathology_gap,
    relative_change,
    scored_rows,
    subgroup_auc,
    subgroup_mean_auc,
)
from engine.metrics.queries.ensembles import (  # noqa: F401
    EnsembleRegistration,
    check_ensemble_members,
    register_ensemble,
)
from engine.metrics.queries.thresholds import (  # noqa: F401
    ece,
    equalized_odds_difference,
    operating_threshold,
    threshold_metrics,
    underdiagnosis,
)

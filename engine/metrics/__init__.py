"""Results store and metrics: subgroup AUCs, fairness gaps and scores, ensembles, intervals, threshold metrics.

DuckDB SQL in ``engine/metrics/sql/`` is the definition of every metric; ``queries.py`` is the only module that runs
it. Faster non-SQL paths (numpy) are tested against the SQL to 1e-12. This package never imports torch.
"""

-- equalized_odds_difference: per run, pathology and attribute at a threshold, the largest difference between
-- subgroups in TPR and in FPR, and their maximum (fairlearn equalized_odds_difference, agg "worst_case",
-- method "between_groups"). Subgroups whose rate is undefined (null) are left out of that rate's difference.
-- inputs: threshold_metrics (the result of threshold_metrics.sql, registered as a frame)
-- parameters: none
-- output: run_id, eval_set, pathology, attribute, threshold, threshold_source, tpr_difference, fpr_difference,
--   equalized_odds_difference, n_subgroups

with rates as (
    select * from threshold_metrics
    where attribute <> 'all'
),

differences as (
    select
        run_id,
        eval_set,
        pathology,
        attribute,
        threshold,
        threshold_source,
        max(tpr) - min(tpr) as tpr_difference,
        max(fpr) - min(fpr) as fpr_difference,
        count(*) as n_subgroups
    from rates
    group by run_id, eval_set, pathology, attribute, threshold, threshold_source
),

final as (
    select
        run_id,
        eval_set,
        pathology,
        attribute,
        threshold,
        threshold_source,
        tpr_difference,
        fpr_difference,
        greatest(tpr_difference, fpr_difference) as equalized_odds_difference,
        n_subgroups
    from differences
)

select * from final
order by run_id, pathology, attribute

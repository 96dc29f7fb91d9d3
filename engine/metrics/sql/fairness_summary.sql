-- fairness_summary: per run and attribute, the fairness gap FG (best minus worst subgroup mean AUC), the
-- fairlearn difference to overall, and the paper's fairness score FS = C - FG with C = max FG over the compared
-- runs + 1 point (paper equation 1, epsilon = 1 point). Gaps and scores are in AUC points (x100).
-- inputs: subgroup_mean_auc (the result of subgroup_mean_auc.sql over $run_ids and $compared_runs, registered)
-- parameters:
--   $run_ids        varchar[]  runs to report
--   $compared_runs  varchar[]  runs whose largest gap sets C
--   $epsilon_pts    double     epsilon of equation 1, in points (1)
-- output: run_id, eval_set, attribute, mean_auc, mean_auc_pts, fairness_gap_pts, worst_subgroup, best_subgroup,
--   diff_to_overall_pts, fairness_score_pts, c_pts, n_subgroups, n_subgroups_undefined

with means as (
    select * from subgroup_mean_auc
),

population as (
    select
        run_id,
        eval_set,
        mean_auc as population_mean_auc
    from means
    where attribute = 'all'
),

subgroups as (
    select
        means.*,
        population.population_mean_auc
    from means
    left join population using (run_id, eval_set)
    where means.attribute <> 'all'
),

gaps as (
    select
        run_id,
        eval_set,
        attribute,
        any_value(population_mean_auc) as mean_auc,
        (max(mean_auc) - min(mean_auc)) * 100 as fairness_gap_pts,
        first(subgroup order by mean_auc, subgroup) filter (where mean_auc is not null) as worst_subgroup,
        first(subgroup order by mean_auc desc, subgroup) filter (where mean_auc is not null) as best_subgroup,
        max(abs(mean_auc - population_mean_auc)) * 100 as diff_to_overall_pts,
        count(*) as n_subgroups,
        count(*) filter (where mean_auc is null) as n_subgroups_undefined
    from subgroups
    group by run_id, eval_set, attribute
),

score_constants as (
    -- C of equation 1, per eval set and attribute, over the compared runs
    select
        eval_set,
        attribute,
        max(fairness_gap_pts) + $epsilon_pts as c_pts
    from gaps
    where list_contains($compared_runs, run_id)
    group by eval_set, attribute
),

final as (
    select
        gaps.run_id,
        gaps.eval_set,
        gaps.attribute,
        gaps.mean_auc,
        gaps.mean_auc * 100 as mean_auc_pts,
        gaps.fairness_gap_pts,
        gaps.worst_subgroup,
        gaps.best_subgroup,
        gaps.diff_to_overall_pts,
        score_constants.c_pts - gaps.fairness_gap_pts as fairness_score_pts,
        score_constants.c_pts,
        gaps.n_subgroups,
        gaps.n_subgroups_undefined
    from gaps
    left join score_constants using (eval_set, attribute)
    where list_contains($run_ids, gaps.run_id)
)

select * from final
order by list_position($run_ids, run_id), attribute

-- pathology_gap: per run, attribute and pathology, the gap between the best and worst subgroup AUC and the largest
-- distance of a subgroup to the population (fairlearn difference "between_groups" and "to_overall"), in points.
-- inputs: subgroup_auc (the result of subgroup_auc.sql, registered as a frame; attribute "all" = population)
-- parameters: none
-- output: run_id, eval_set, attribute, pathology, auc (population), gap_pts, worst_subgroup, best_subgroup,
--   diff_to_overall_pts, n_subgroups, n_subgroups_undefined

with aucs as (
    select * from subgroup_auc
),

population as (
    select
        run_id,
        eval_set,
        pathology,
        auc as population_auc
    from aucs
    where attribute = 'all'
),

subgroups as (
    select
        aucs.*,
        population.population_auc
    from aucs
    left join population using (run_id, eval_set, pathology)
    where aucs.attribute <> 'all'
),

final as (
    select
        run_id,
        eval_set,
        attribute,
        pathology,
        any_value(population_auc) as auc,
        (max(auc) - min(auc)) * 100 as gap_pts,
        first(subgroup order by auc, subgroup) filter (where auc is not null) as worst_subgroup,
        first(subgroup order by auc desc, subgroup) filter (where auc is not null) as best_subgroup,
        max(abs(auc - population_auc)) * 100 as diff_to_overall_pts,
        count(*) as n_subgroups,
        count(*) filter (where auc is null) as n_subgroups_undefined
    from subgroups
    group by run_id, eval_set, attribute, pathology
)

select * from final
order by run_id, attribute, pathology

-- subgroup_mean_auc: mean AUC over the chosen pathologies per run, attribute and subgroup; null when the AUC of
-- any chosen pathology is undefined (or has no rows) in that subgroup, with the reason.
-- inputs: subgroup_auc (the result of subgroup_auc.sql, registered as a frame)
-- parameters:
--   $pathologies  varchar[]  the pathologies the mean is over
-- output: run_id, eval_set, attribute, subgroup, mean_auc, mean_auc_reason,
--   n_pathologies (pathologies with a defined AUC; equals len($pathologies) whenever mean_auc is not null)

with aucs as (
    select * from subgroup_auc
),

chosen as (
    select unnest($pathologies::varchar[]) as pathology
),

subgroups as (
    select distinct
        run_id,
        eval_set,
        attribute,
        subgroup
    from aucs
),

expected as (
    -- every subgroup is expected to have every chosen pathology
    select
        subgroups.*,
        chosen.pathology
    from subgroups
    cross join chosen
),

with_auc as (
    select
        expected.*,
        aucs.auc,
        coalesce(aucs.auc_reason, 'no rows') as auc_reason
    from expected
    left join aucs using (run_id, eval_set, attribute, subgroup, pathology)
),

final as (
    select
        run_id,
        eval_set,
        attribute,
        subgroup,
        case when count(auc) = count(*) then avg(auc) end as mean_auc,
        case when count(auc) < count(*) then
            'undefined for ' || string_agg(pathology || ' (' || auc_reason || ')', ', ' order by pathology)
                filter (where auc is null)
        end as mean_auc_reason,
        count(auc) as n_pathologies
    from with_auc
    group by run_id, eval_set, attribute, subgroup
)

select * from final
order by run_id, attribute, subgroup

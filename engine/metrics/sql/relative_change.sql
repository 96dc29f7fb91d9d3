-- relative_change: each subgroup's AUC minus a reference AUC, per pathology and for the mean over pathologies
-- (paper Figure 3: pathology "mean"; Figures 5 and 6: per pathology).
-- reference "population": the population's AUC on the same eval set (attribute "all"; the figures' captions);
-- reference "subgroup-mean": the unweighted mean of the attribute's subgroup AUCs (the text of section 4.4),
-- null when any subgroup's AUC is undefined.
-- inputs: subgroup_auc and subgroup_mean_auc (results of those queries, registered as frames)
-- parameters:
--   $reference  varchar  "population" | "subgroup-mean"
-- output: run_id, eval_set, attribute, subgroup, pathology, auc, reference_auc, change_pts, change_pct,
--   reference, n (rows scored in the subgroup; for "mean", the largest per-pathology n)

with pathology_aucs as (
    select
        run_id,
        eval_set,
        attribute,
        subgroup,
        pathology,
        auc,
        n
    from subgroup_auc
),

subgroup_sizes as (
    select
        run_id,
        eval_set,
        attribute,
        subgroup,
        max(n) as n
    from pathology_aucs
    group by run_id, eval_set, attribute, subgroup
),

mean_aucs as (
    select
        means.run_id,
        means.eval_set,
        means.attribute,
        means.subgroup,
        'mean' as pathology,
        means.mean_auc as auc,
        subgroup_sizes.n
    from subgroup_mean_auc as means
    left join subgroup_sizes using (run_id, eval_set, attribute, subgroup)
),

aucs as (
    select * from pathology_aucs
    union all
    select * from mean_aucs
),

population as (
    select
        subgroups.run_id,
        subgroups.eval_set,
        subgroups.attribute,
        subgroups.pathology,
        everyone.auc as reference_auc
    from (select distinct run_id, eval_set, attribute, pathology from aucs where attribute <> 'all') as subgroups
    left join aucs as everyone
        on everyone.attribute = 'all'
        and everyone.run_id = subgroups.run_id
        and everyone.eval_set = subgroups.eval_set
        and everyone.pathology = subgroups.pathology
),

subgroup_mean as (
    select
        run_id,
        eval_set,
        attribute,
        pathology,
        case when count(auc) = count(*) then avg(auc) end as reference_auc
    from aucs
    where attribute <> 'all'
    group by run_id, eval_set, attribute, pathology
),

reference_aucs as (
    select * from population where $reference = 'population'
    union all
    select * from subgroup_mean where $reference = 'subgroup-mean'
),

final as (
    select
        aucs.run_id,
        aucs.eval_set,
        aucs.attribute,
        aucs.subgroup,
        aucs.pathology,
        aucs.auc,
        reference_aucs.reference_auc,
        (aucs.auc - reference_aucs.reference_auc) * 100 as change_pts,
        (aucs.auc - reference_aucs.reference_auc) / reference_aucs.reference_auc * 100 as change_pct,
        $reference::varchar as reference,
        aucs.n
    from aucs
    inner join reference_aucs using (run_id, eval_set, attribute, pathology)
)

select * from final
order by run_id, attribute, subgroup, pathology = 'mean' desc, pathology

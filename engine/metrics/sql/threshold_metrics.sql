-- threshold_metrics: weighted confusion counts and rates per run, pathology, attribute and subgroup at a
-- decision threshold (y_score >= threshold is positive). Rates are null when their denominator is 0; every
-- column is null when the threshold is null (not defined on its selection set).
-- inputs: thresholds (frame: run_id, pathology [null = every pathology], threshold, threshold_source)
-- parameters:
--   $run_ids      varchar[]  runs
--   $eval_set     varchar    a split name or a subsets.parquet set name
--   $attributes   varchar[]  attributes, intersections ("sex x race") and "all"
--   $pathologies  varchar[]  pathologies, or null for every pathology present
--   $separator    varchar    the intersection separator (" x ")
-- output: run_id, eval_set, pathology, attribute, subgroup, threshold, threshold_source, tp, fp, tn, fn,
--   tpr, fpr, fnr, tnr, n

with scored as (
    select * from scored_predictions($run_ids, $eval_set, $pathologies)
),

subgroups as (
    select * from image_subgroups($attributes, $separator)
),

decided as (
    select
        scored.run_id,
        scored.pathology,
        subgroups.attribute,
        subgroups.subgroup,
        thresholds.threshold,
        thresholds.threshold_source,
        scored.y_true,
        scored.weight,
        scored.y_score >= thresholds.threshold as predicted
    from scored
    inner join subgroups on scored.image_id = subgroups.image_id
    inner join thresholds
        on scored.run_id = thresholds.run_id
        and (thresholds.pathology is null or scored.pathology = thresholds.pathology)
),

counts as (
    select
        run_id,
        pathology,
        attribute,
        subgroup,
        threshold,
        threshold_source,
        count(*) as n,
        coalesce(sum(weight) filter (where predicted and y_true = 1), 0.0) as tp,
        coalesce(sum(weight) filter (where predicted and y_true = 0), 0.0) as fp,
        coalesce(sum(weight) filter (where not predicted and y_true = 0), 0.0) as tn,
        coalesce(sum(weight) filter (where not predicted and y_true = 1), 0.0) as fn
    from decided
    group by run_id, pathology, attribute, subgroup, threshold, threshold_source
),

defined as (
    select
        * exclude (tp, fp, tn, fn),
        case when threshold is not null then tp end as tp,
        case when threshold is not null then fp end as fp,
        case when threshold is not null then tn end as tn,
        case when threshold is not null then fn end as fn
    from counts
),

final as (
    select
        run_id,
        $eval_set::varchar as eval_set,
        pathology,
        attribute,
        subgroup,
        threshold,
        threshold_source,
        tp,
        fp,
        tn,
        fn,
        tp / nullif(tp + fn, 0) as tpr,
        fp / nullif(fp + tn, 0) as fpr,
        fn / nullif(tp + fn, 0) as fnr,
        tn / nullif(fp + tn, 0) as tnr,
        n
    from defined
)

select * from final
order by run_id, pathology, attribute, subgroup

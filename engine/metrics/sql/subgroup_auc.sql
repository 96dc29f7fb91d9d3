-- subgroup_auc: weighted Mann-Whitney AUC, ties counted 1/2, per run, pathology, attribute and subgroup.
-- auc = sum over positives i, negatives j of w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg),
-- computed on blocks of tied scores: sum over scores s of w_pos(s) (w_neg(< s) + w_neg(= s) / 2) / (W_pos W_neg).
-- parameters:
--   $run_ids      varchar[]  runs (store runs or registered ensembles)
--   $eval_set     varchar    a split name or a subsets.parquet set name
--   $attributes   varchar[]  attributes, intersections ("sex x race") and "all"
--   $pathologies  varchar[]  pathologies to score, or null for every pathology present
--   $separator    varchar    the intersection separator (" x ")
--   $min_count    integer    subgroups with fewer positive or negative rows are flagged small
-- output: run_id, eval_set, pathology, attribute, subgroup, n, n_pos, n_neg, w_pos, w_neg, auc, auc_reason, small

with scored as (
    select * from scored_predictions($run_ids, $eval_set, $pathologies)
),

subgroups as (
    select * from image_subgroups($attributes, $separator)
),

subgroup_ids as (
    -- an integer per (attribute, subgroup): the heavy steps below group and sort on integers, not strings
    select
        attribute,
        subgroup,
        row_number() over (order by attribute, subgroup)::integer as subgroup_id
    from (select distinct attribute, subgroup from subgroups)
),

image_subgroup_ids as (
    select
        subgroups.image_id,
        subgroup_ids.subgroup_id
    from subgroups
    inner join subgroup_ids using (attribute, subgroup)
),

subgroup_rows as (
    select
        scored.run_id,
        scored.pathology,
        image_subgroup_ids.subgroup_id,
        scored.y_true,
        scored.y_score,
        scored.weight
    from scored
    inner join image_subgroup_ids on scored.image_id = image_subgroup_ids.image_id
),

score_blocks as (
    -- one row per distinct score within a subgroup: the rows and weights tied at that score
    select
        run_id,
        pathology,
        subgroup_id,
        y_score,
        count(*) as n,
        count(*) filter (where y_true = 1) as n_pos,
        count(*) filter (where y_true = 0) as n_neg,
        coalesce(sum(weight) filter (where y_true = 1), 0.0) as w_pos,
        coalesce(sum(weight) filter (where y_true = 0), 0.0) as w_neg
    from subgroup_rows
    group by run_id, pathology, subgroup_id, y_score
),

negatives_below as (
    select
        *,
        coalesce(
            sum(w_neg) over (
                partition by run_id, pathology, subgroup_id
                order by y_score
                rows between unbounded preceding and 1 preceding
            ),
            0.0
        ) as w_neg_below
    from score_blocks
),

subgroup_totals as (
    select
        run_id,
        pathology,
        subgroup_id,
        sum(n) as n,
        sum(n_pos) as n_pos,
        sum(n_neg) as n_neg,
        sum(w_pos) as w_pos,
        sum(w_neg) as w_neg,
        sum(w_pos * (w_neg_below + w_neg / 2.0)) as w_pairs_ranked_right
    from negatives_below
    group by run_id, pathology, subgroup_id
),

final as (
    select
        run_id,
        $eval_set::varchar as eval_set,
        pathology,
        attribute,
        subgroup,
        n::bigint as n,
        n_pos::bigint as n_pos,
        n_neg::bigint as n_neg,
        w_pos,
        w_neg,
        case when w_pos > 0 and w_neg > 0 then w_pairs_ranked_right / (w_pos * w_neg) end as auc,
        case when w_pos = 0 then 'no positives' when w_neg = 0 then 'no negatives' end as auc_reason,
        n_pos < $min_count or n_neg < $min_count as small
    from subgroup_totals
    inner join subgroup_ids using (subgroup_id)
)

select * from final
order by run_id, pathology, attribute, subgroup

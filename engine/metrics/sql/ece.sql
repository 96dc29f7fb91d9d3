-- ece: expected calibration error per run, pathology, attribute and subgroup, for probability scores:
-- equal-width bins b on [0, 1] (a score of 1 falls in the last bin),
-- ece = sum_b (W_b / W) |mean_b(p) - mean_b(y)| = sum_b |sum_b(w p) - sum_b(w y)| / W, weights w.
-- parameters:
--   $run_ids      varchar[]  runs
--   $eval_set     varchar    a split name or a subsets.parquet set name
--   $attributes   varchar[]  attributes, intersections ("sex x race") and "all"
--   $pathologies  varchar[]  pathologies, or null for every pathology present
--   $separator    varchar    the intersection separator (" x ")
--   $n_bins       integer    number of bins
-- output: run_id, eval_set, pathology, attribute, subgroup, n, w, ece, n_bins, n_outside (scores outside [0, 1])

with scored as (
    select * from scored_predictions($run_ids, $eval_set, $pathologies)
),

subgroups as (
    select * from image_subgroups($attributes, $separator)
),

binned as (
    select
        scored.run_id,
        scored.pathology,
        subgroups.attribute,
        subgroups.subgroup,
        scored.y_true,
        scored.y_score,
        scored.weight,
        least(floor(scored.y_score * $n_bins), $n_bins - 1)::integer as bin
    from scored
    inner join subgroups on scored.image_id = subgroups.image_id
),

bins as (
    select
        run_id,
        pathology,
        attribute,
        subgroup,
        bin,
        count(*) as n,
        count(*) filter (where y_score < 0 or y_score > 1) as n_outside,
        sum(weight) as w,
        sum(weight * y_score) as w_score,
        sum(weight * y_true) as w_label
    from binned
    group by run_id, pathology, attribute, subgroup, bin
),

final as (
    select
        run_id,
        $eval_set::varchar as eval_set,
        pathology,
        attribute,
        subgroup,
        sum(n)::bigint as n,
        sum(w) as w,
        case when sum(w) > 0 then sum(abs(w_score - w_label)) / sum(w) end as ece,
        $n_bins::integer as n_bins,
        sum(n_outside)::bigint as n_outside
    from bins
    group by run_id, pathology, attribute, subgroup
)

select * from final
order by run_id, pathology, attribute, subgroup

-- operating_threshold: per run and pathology, the decision threshold t (y_score >= t is positive) chosen on the
-- population of a selection eval set (the validation split unless asked otherwise). Candidates are the distinct
-- scores and +infinity (nothing positive).
-- rule "fpr": the smallest candidate whose weighted FPR does not exceed $target_fpr, i.e. the largest FPR
--   <= target (FPR falls as t rises), and at that FPR the largest TPR;
-- rule "youden": the candidate maximising Youden's J = TPR - FPR; among equal J the largest threshold.
-- The threshold is null when the selection set has no positives (youden) or no negatives.
-- parameters:
--   $run_ids      varchar[]  runs
--   $select_on    varchar    eval set the threshold is chosen on
--   $pathologies  varchar[]  pathologies, or null for every pathology present
--   $rule         varchar    "fpr" | "youden"
--   $target_fpr   double     the FPR bound of rule "fpr" (ignored by "youden")
--   $source       varchar    label written to threshold_source, e.g. "validation-fpr-0.2"
-- output: run_id, pathology, threshold, threshold_source, selection_tpr, selection_fpr

with scored as (
    select * from scored_predictions($run_ids, $select_on, $pathologies)
),

score_blocks as (
    select
        run_id,
        pathology,
        y_score,
        coalesce(sum(weight) filter (where y_true = 1), 0.0) as w_pos,
        coalesce(sum(weight) filter (where y_true = 0), 0.0) as w_neg
    from scored
    group by run_id, pathology, y_score
),

candidates as (
    select * from score_blocks
    union all
    select distinct
        run_id,
        pathology,
        'infinity'::double as y_score,
        0.0 as w_pos,
        0.0 as w_neg
    from score_blocks
),

rates as (
    -- predicted positive at threshold t: every row with y_score >= t
    select
        run_id,
        pathology,
        y_score as threshold,
        sum(w_pos) over at_or_above / nullif(sum(w_pos) over whole, 0) as tpr,
        sum(w_neg) over at_or_above / nullif(sum(w_neg) over whole, 0) as fpr
    from candidates
    window
        at_or_above as (partition by run_id, pathology order by y_score desc rows unbounded preceding),
        whole as (partition by run_id, pathology)
),

chosen as (
    select
        run_id,
        pathology,
        case
            when $rule = 'fpr' then min(threshold) filter (where fpr <= $target_fpr)
            when $rule = 'youden' then first(threshold order by tpr - fpr desc, threshold desc)
                filter (where tpr is not null and fpr is not null)
        end as threshold
    from rates
    group by run_id, pathology
),

final as (
    select
        chosen.run_id,
        chosen.pathology,
        chosen.threshold,
        $source::varchar as threshold_source,
        rates.tpr as selection_tpr,
        rates.fpr as selection_fpr
    from chosen
    left join rates using (run_id, pathology, threshold)
)

select * from final
order by run_id, pathology

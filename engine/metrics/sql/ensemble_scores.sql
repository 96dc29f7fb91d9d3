-- ensemble_scores: one run's worth of prediction rows combining the members' scores, for the keys
-- (split, image_id, pathology) that EVERY member scored; rows of other keys are dropped.
-- rules: "mean-probability" = mean of the scores; "mean-logit" = mean of logit(p) for members listed in
-- $probability_members (p clipped to [eps, 1 - eps]) and of the raw score for the others; "rank-average" = mean
-- of each member's normalised mid-rank within (split, pathology) over the common keys. The combined score is
-- rounded to $decimals so that averages equal in exact arithmetic tie exactly (stack.md 4, "Tie caveat").
-- parameters:
--   $name                 varchar    the ensemble's run_id
--   $members              varchar[]  member run_ids (distinct)
--   $rule                 varchar    "mean-probability" | "mean-logit" | "rank-average"
--   $probability_members  varchar[]  members whose scores are probabilities (used by mean-logit)
--   $logit_epsilon        double     clip of p before logit
--   $decimals             integer    decimals of the combined score
-- output: run_id, split, image_id, pathology, y_true, y_score, weight, labels_agree, weights_agree

with member_rows as (
    select * from predictions
    where list_contains($members, run_id)
),

common_keys as (
    select
        split,
        image_id,
        pathology
    from member_rows
    group by split, image_id, pathology
    having count(distinct run_id) = len($members)
),

common_rows as (
    select member_rows.*
    from member_rows
    semi join common_keys using (split, image_id, pathology)
),

clipped as (
    select
        *,
        greatest(least(y_score, 1 - $logit_epsilon), $logit_epsilon) as p
    from common_rows
),

member_scores as (
    select
        run_id,
        split,
        image_id,
        pathology,
        y_true,
        weight,
        case
            when $rule = 'mean-probability' then y_score
            when $rule = 'mean-logit' and list_contains($probability_members::varchar[], run_id)
                then ln(p / (1 - p))
            when $rule = 'mean-logit' then y_score
            -- mid-rank / n: (rows below + (rows tied + 1) / 2) / n, ties share the mean of their ranks
            when $rule = 'rank-average' then
                (rank() over by_score + count(*) over by_score_to_ties) / 2.0 / count(*) over by_member
        end as member_score
    from clipped
    window
        by_member as (partition by run_id, split, pathology),
        by_score as (partition by run_id, split, pathology order by y_score),
        by_score_to_ties as (
            partition by run_id, split, pathology order by y_score
            range between unbounded preceding and current row
        )
),

final as (
    select
        $name::varchar as run_id,
        split,
        image_id,
        pathology,
        any_value(y_true) as y_true,
        round(avg(member_score), $decimals) as y_score,
        any_value(weight) as weight,
        count(distinct y_true) <= 1 and count(y_true) in (0, count(*)) as labels_agree,
        min(weight) = max(weight) as weights_agree
    from member_scores
    group by split, image_id, pathology
)

select * from final
order by split, pathology, image_id

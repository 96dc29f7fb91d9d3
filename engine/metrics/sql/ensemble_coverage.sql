-- ensemble_coverage: how many prediction keys (split, image_id, pathology) are scored by exactly m of the members;
-- an ensemble keeps only the keys scored by all of them.
-- parameters:
--   $members  varchar[]  member run_ids (distinct)
-- output: n_members_scoring, n_keys, kept (n_members_scoring = number of members)

with member_rows as (
    select * from predictions
    where list_contains($members, run_id)
),

key_members as (
    select
        split,
        image_id,
        pathology,
        count(distinct run_id) as n_members_scoring
    from member_rows
    group by split, image_id, pathology
),

final as (
    select
        n_members_scoring,
        count(*) as n_keys,
        n_members_scoring = len($members) as kept
    from key_members
    group by n_members_scoring
)

select * from final
order by n_members_scoring

-- eval_sets: the evaluation sets a query can name: the cohort's splits and the sets of subsets.parquet.
-- parameters: none
-- output: eval_set, kind ("split" | "subset"), n_images (distinct images in the split or set)

with cohort_splits as (
    select
        split as eval_set,
        'split' as kind,
        count(distinct image_id) as n_images
    from source_cohort
    where split is not null
    group by split
),

subset_sets as (
    select
        set::varchar as eval_set,
        'subset' as kind,
        count(distinct image_id) as n_images
    from source_subsets
    group by set
),

final as (
    select * from cohort_splits
    union all
    select * from subset_sets
)

select * from final
order by kind, eval_set

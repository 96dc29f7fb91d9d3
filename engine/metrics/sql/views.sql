-- views: the relations and table macros every query reads; run once per connection by queries.connect.
-- inputs (views that queries.connect creates over parquet files or in-memory frames):
--   source_predictions  split, image_id, pathology, y_true, y_score, [weight], and run_id (frames) or
--                       filename (parquet: <store>/runs/<run_id>/predictions.parquet)
--   source_cohort       image_id, patient_id, split
--   source_attributes   image_id, one varchar column per attribute, and the constant column "all"
--   source_subsets      set, pathology (null = every pathology), image_id, weight
-- outputs:
--   ensemble_predictions  table filled by queries.register_ensemble (same columns as predictions)
--   predictions           run_id, split, image_id, pathology, y_true, y_score, weight (1 when absent)
--   cohort_subgroups      image_id, attribute, subgroup (one row per image and attribute with a value)
--   scored_predictions(run_id_list, eval_set_name, pathology_list)
--                         the prediction rows an eval set scores: run_id, eval_set, split, pathology, image_id,
--                         y_true, y_score, weight
--   image_subgroups(attribute_list, separator)
--                         attribute, image_id, subgroup; "sex x race" -> "Female x Black". Every metric joins
--                         scored_predictions to it on image_id, so a row whose image is not in the cohort is in no
--                         subgroup, not even "all", and is not scored.

create table ensemble_predictions (
    run_id varchar,
    split varchar,
    image_id varchar,
    pathology varchar,
    y_true double,
    y_score double,
    weight double
);

create view predictions as
with source_rows as (
    select * from source_predictions
    union all by name
    -- an empty typed row set: every optional column exists, whatever the source holds
    select
        null::varchar as run_id,
        null::varchar as filename,
        null::double as weight
    where false
),

store_runs as (
    select
        coalesce(
            nullif(regexp_extract(filename, '[/\\]([^/\\]+)[/\\]predictions\.parquet$', 1), ''),
            run_id::varchar
        ) as run_id,
        split::varchar as split,
        image_id::varchar as image_id,
        pathology::varchar as pathology,
        y_true::double as y_true,
        y_score::double as y_score,
        coalesce(weight::double, 1.0) as weight
    from source_rows
),

final as (
    select * from store_runs
    union all
    select * from ensemble_predictions
)

select * from final;

create view cohort_subgroups as
with unpivoted as (
    unpivot source_attributes
    on columns(* exclude (image_id))
    into name attribute value subgroup
),

final as (
    select
        image_id::varchar as image_id,
        attribute,
        subgroup::varchar as subgroup
    from unpivoted
)

select * from final;

create macro scored_predictions(run_id_list, eval_set_name, pathology_list) as table
with predictions_kept as not materialized (
    select *
    from predictions
    where list_contains(run_id_list, run_id)
        and (pathology_list is null or list_contains(pathology_list, pathology))
        and y_true is not null
        and y_score is not null
),

split_rows as (
    -- eval set = a split: the run's predictions of that split, weight = prediction weight
    select
        run_id,
        eval_set_name as eval_set,
        split,
        pathology,
        image_id,
        y_true,
        y_score,
        weight
    from predictions_kept
    where split = eval_set_name
),

set_rows as (
    -- eval set = a subsets.parquet set: test predictions in the set, weight = set weight x prediction weight
    select
        p.run_id,
        eval_set_name as eval_set,
        p.split,
        p.pathology,
        p.image_id,
        p.y_true,
        p.y_score,
        p.weight * s.weight::double as weight
    from predictions_kept as p
    inner join source_subsets as s
        on p.image_id = s.image_id::varchar
        and (s.pathology is null or p.pathology = s.pathology::varchar)
    where p.split = 'test'
        and s.set = eval_set_name
),

final as (
    select * from split_rows
    union all
    select * from set_rows
)

select * from final;

create macro image_subgroups(attribute_list, separator) as table
with requested as (
    select
        a.attribute,
        p.part,
        p.position,
        len(string_split(a.attribute, separator)) as n_parts
    from (select distinct unnest(attribute_list) as attribute) as a,
        unnest(string_split(a.attribute, separator)) with ordinality as p (part, position)
),

parts as (
    select
        r.attribute,
        c.image_id,
        c.subgroup,
        r.position,
        r.n_parts
    from requested as r
    inner join cohort_subgroups as c on c.attribute = r.part
),

final as (
    -- an image belongs to an intersection only when it has a value for every part
    select
        attribute,
        image_id,
        string_agg(subgroup, separator order by position) as subgroup
    from parts
    group by attribute, image_id
    having count(*) = any_value(n_parts)
)

select * from final;

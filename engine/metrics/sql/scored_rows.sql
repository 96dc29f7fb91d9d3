-- scored_rows: the rows every AUC is computed from (which rows, which weight), one per run, pathology and image,
-- with the image's subgroup for each requested attribute; the numpy fast path reads exactly these rows.
-- parameters:
--   $run_ids      varchar[]  runs (store runs or registered ensembles)
--   $eval_set     varchar    a split name or a subsets.parquet set name
--   $attributes   varchar[]  attributes and intersections ("sex x race"), in output order
--   $pathologies  varchar[]  pathologies, or null for every pathology present
--   $separator    varchar    the intersection separator (" x ")
-- output: run_id, pathology, image_id, patient_id, y_true, y_score, weight,
--   subgroups (varchar[]: element k is the subgroup for $attributes[k], null when the image has none)

with scored as (
    select * from scored_predictions($run_ids, $eval_set, $pathologies)
),

subgroups as (
    select * from image_subgroups($attributes, $separator)
),

image_subgroup_maps as (
    select
        image_id,
        map_from_entries(list(struct_pack(k := attribute, v := subgroup))) as subgroup_by_attribute
    from subgroups
    group by image_id
),

final as (
    select
        scored.run_id,
        scored.pathology,
        scored.image_id,
        cohort.patient_id,
        scored.y_true,
        scored.y_score,
        scored.weight,
        list_transform(
            $attributes::varchar[],
            lambda attribute: image_subgroup_maps.subgroup_by_attribute[attribute]
        ) as subgroups
    from scored
    inner join source_cohort as cohort on scored.image_id = cohort.image_id
    left join image_subgroup_maps on scored.image_id = image_subgroup_maps.image_id
)

select * from final
order by run_id, pathology, image_id

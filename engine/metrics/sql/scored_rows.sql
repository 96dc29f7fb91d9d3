-- scored_rows: the rows every AUC is computed from (which rows, which weight), one per run, pathology and image
-- of the cohort; the numpy fast path reads exactly these rows. Subgroups come from image_attributes.sql, joined
-- on image_id by queries.scored_rows (one lookup per image instead of per scored row).
-- parameters:
--   $run_ids      varchar[]  runs (store runs or registered ensembles)
--   $eval_set     varchar    a split name or a subsets.parquet set name
--   $pathologies  varchar[]  pathologies, or null for every pathology present
-- output: run_id, pathology, image_id, patient_id, y_true, y_score, weight

with scored as (
    select * from scored_predictions($run_ids, $eval_set, $pathologies)
),

final as (
    select
        scored.run_id,
        scored.pathology,
        scored.image_id,
        cohort.patient_id,
        scored.y_true,
        scored.y_score,
        scored.weight
    from scored
    inner join source_cohort as cohort on scored.image_id = cohort.image_id
)

select * from final

-- runs: the runs a query can name: store runs and registered ensembles.
-- parameters: none
-- output: run_id, kind ("run" | "ensemble"), splits (sorted list), n_rows

with store_runs as (
    select
        run_id,
        'run' as kind,
        list(distinct split order by split) as splits,
        count(*) as n_rows
    from predictions
    where run_id not in (select distinct run_id from ensemble_predictions)
    group by run_id
),

ensembles as (
    select
        run_id,
        'ensemble' as kind,
        list(distinct split order by split) as splits,
        count(*) as n_rows
    from ensemble_predictions
    group by run_id
),

final as (
    select * from store_runs
    union all
    select * from ensembles
)

select * from final
order by kind desc, run_id

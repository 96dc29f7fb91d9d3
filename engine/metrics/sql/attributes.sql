-- attributes: the cohort's attribute columns (string columns that are not ids or provenance), plus "all".
-- parameters: none
-- output: attribute, column_index (position in the cohort view)

with columns_of_source as (
    select
        column_name as attribute,
        column_index
    from duckdb_columns()
    where table_name = 'source_attributes'
        and column_name <> 'image_id'
),

final as (
    select
        attribute,
        column_index
    from columns_of_source
)

select * from final
order by column_index

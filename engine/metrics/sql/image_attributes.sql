-- image_attributes: each cohort image's subgroup for every requested attribute (intersections included).
-- parameters:
--   $attributes   varchar[]  attributes and intersections ("sex x race"), in output order
--   $separator    varchar    the intersection separator (" x ")
-- output: image_id, subgroups (varchar[]: element k is the subgroup for $attributes[k], null when none)

with subgroups as (
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
        cohort.image_id,
        list_transform(
            $attributes::varchar[],
            lambda attribute: image_subgroup_maps.subgroup_by_attribute[attribute]
        ) as subgroups
    from source_cohort as cohort
    left join image_subgroup_maps on cohort.image_id = image_subgroup_maps.image_id
)

select * from final

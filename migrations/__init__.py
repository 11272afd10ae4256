"""SQL migrations, applied in order by `pao migrate` (see `pao.migrate`)."""

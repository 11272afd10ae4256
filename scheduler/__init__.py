"""The scheduler process: turns due occurrences into `due_work` rows (not built yet)."""

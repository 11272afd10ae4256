"""The worker process: claims `due_work` and runs pipelines (not built yet)."""

"""The worker process.

Claims `due_work` with SKIP LOCKED, holds fenced leases and runs pipelines of tool steps.
"""

"""Celery workers: turn a job row into a quantcore run (one process per GPU, CPU otherwise)."""

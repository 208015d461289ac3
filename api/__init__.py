"""The HTTP service: routes, schemas, ORM models, database sessions, blob storage, settings."""

"""Alembic migration scripts of the store, shipped in the package as `engine.migrations`."""

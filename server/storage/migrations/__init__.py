"""Alembic migrations of the shared database (see server.storage.database.migrate)."""

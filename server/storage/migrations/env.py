"""Alembic's environment: migrations run on the connection `server.storage.database.migrate`
hands over (inside its transaction, under its advisory lock)."""

from __future__ import annotations

from alembic import context

from server.storage.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment: runs on the connection handed in by mstcrypt.kmc.db.migrate."""

from __future__ import annotations

from alembic import context

import mstcrypt.apps.boot.models
import mstcrypt.apps.im.models  # registers the IM tables
import mstcrypt.apps.login.models  # noqa: F401 - registers the login tables
from mstcrypt.kmc.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via `alembic` CLI with a URL
    from sqlalchemy import create_engine

    url = context.config.get_main_option("sqlalchemy.url") or "sqlite:///mstcrypt.db"
    connection = create_engine(url).connect()

context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True
)
with context.begin_transaction():
    context.run_migrations()

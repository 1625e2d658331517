"""The Alembic migrations create exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import mstcrypt.apps.im.models  # registers the IM tables (the noqa below covers both)
import mstcrypt.apps.login.models  # noqa: F401 - login tables share the metadata
from mstcrypt.apps.seal import models as _seal_models  # noqa: F401 - seal tables too
from mstcrypt.kmc.db import Database, migrate
from mstcrypt.kmc.models import Base


def test_migrations_match_models(database_url: str) -> None:
    db = Database(database_url)
    try:
        migrate(db)
        migrate(db)  # idempotent
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        db.dispose()

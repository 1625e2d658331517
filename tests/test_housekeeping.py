"""Housekeeping on SQLite and PostgreSQL: the purge of expired login rows drains a
backlog in short bounded transactions through indexes on expiry, from the server's
housekeeping even when no login service was started in this process."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select, text

import mstcrypt.apps.login.models  # noqa: F401 - login tables share the metadata
from mstcrypt.apps.login.models import LoginChallenge, LoginFailures, RevokedSession
from mstcrypt.apps.login.service import LoginPolicy, purge_expired
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore

NOW = 2_000_000_000
POLICY = LoginPolicy()


@pytest.fixture
def kmc(database_url: str) -> Any:
    k = Kmc(Database(database_url), SoftKeyStore(secrets.token_bytes(32)))
    k.create_schema()
    yield k
    k.db.dispose()


def populate(kmc: Kmc, *, expired: int, live: int, now: int = NOW) -> None:
    """``expired`` purgeable rows and ``live`` rows to keep, in each login table."""
    old = now - POLICY.challenge_ttl - 1
    with kmc.db.tx() as s:
        for i in range(expired + live):
            gone = i < expired
            s.execute(
                insert(LoginChallenge).values(
                    id=f"c{i}",
                    server_name="login",
                    r_s=b"\x00" * 32,
                    expires=old if gone else now + 30,
                    source="x",
                )
            )
            s.execute(
                insert(LoginFailures).values(
                    key=f"src:{i}",
                    failures=1,
                    # finished: window over and no lock; live ones: still locked
                    window_start=now - POLICY.failure_window - 1,
                    locked_until=0 if gone else now + 60,
                )
            )
            s.execute(
                insert(RevokedSession).values(
                    jti=f"j{i}",
                    expires=now - 61 if gone else now + 600,
                    revoked_at=datetime.now(UTC),
                )
            )


def counts(kmc: Kmc) -> dict[str, int]:
    with kmc.db.tx() as s:
        return {
            m.__tablename__: int(s.scalar(select(func.count()).select_from(m)))
            for m in (LoginChallenge, LoginFailures, RevokedSession)
        }


def purge(kmc: Kmc, **kw: Any) -> dict[str, int]:
    """The purge's counts for the three login tables populated here (the login rate-limit
    counters it also drains are covered in test_login.py)."""
    out = purge_expired(
        kmc.db,
        now=NOW,
        challenge_ttl=POLICY.challenge_ttl,
        failure_window=POLICY.failure_window,
        **kw,
    )
    assert out.pop("rate_limits") == 0
    return out


def test_purge_drains_in_short_batches(kmc: Kmc) -> None:
    populate(kmc, expired=7, live=2)
    begins: list[int] = []

    def begin(_conn: Any) -> None:
        begins.append(1)

    event.listen(kmc.db.engine, "begin", begin)
    try:
        out = purge(kmc, batch=2, max_batches=10)
    finally:
        event.remove(kmc.db.engine, "begin", begin)
    assert out == {"login_challenges": 7, "login_failures": 7, "revoked_sessions": 7}
    assert counts(kmc) == dict.fromkeys(counts(kmc), 2)  # the live rows stay
    # 2+2+2+1 per populated table, one transaction per batch; one for the empty counters
    assert len(begins) == 3 * 4 + 1


def test_purge_work_per_call_is_bounded(kmc: Kmc) -> None:
    populate(kmc, expired=7, live=0)
    assert purge(kmc, batch=2, max_batches=2) == dict.fromkeys(counts(kmc), 4)
    assert counts(kmc) == dict.fromkeys(counts(kmc), 3)
    assert purge(kmc, batch=0) == dict.fromkeys(counts(kmc), 0)
    assert purge(kmc, batch=100) == dict.fromkeys(counts(kmc), 3)


PURGE_QUERIES = {
    "ix_login_challenges_expires": ("SELECT id FROM login_challenges WHERE expires < :t LIMIT 10"),
    "ix_login_failures_expiry": (
        "SELECT key FROM login_failures WHERE window_start < :t AND locked_until <= :n LIMIT 10"
    ),
    "ix_revoked_sessions_expires": "SELECT jti FROM revoked_sessions WHERE expires < :t LIMIT 10",
}


@pytest.mark.parametrize("index", list(PURGE_QUERIES))
def test_purge_finds_rows_through_an_index_on_expiry(kmc: Kmc, index: str) -> None:
    populate(kmc, expired=50, live=50)
    params = {"t": NOW - 100, "n": NOW}
    with kmc.db.tx() as s:
        if kmc.db.is_sqlite:
            plan = " ".join(
                str(r[-1])
                for r in s.execute(text("EXPLAIN QUERY PLAN " + PURGE_QUERIES[index]), params)
            )
        else:
            s.execute(text("ANALYZE"))
            s.execute(text("SET LOCAL enable_seqscan = off"))
            plan = " ".join(
                str(r[0]) for r in s.execute(text("EXPLAIN " + PURGE_QUERIES[index]), params)
            )
    assert index in plan, plan


def test_housekeeping_purges_without_a_login_service(kmc: Kmc, tmp_path: Path) -> None:
    from mstcrypt.server.app import create_app, housekeeping_round
    from mstcrypt.server.config import Settings

    now = int(time.time())
    populate(kmc, expired=5, live=1, now=now)
    settings = Settings(data_dir=tmp_path)
    app = create_app(settings, kmc)
    assert not app.state.login_started()
    done = housekeeping_round(app, kmc, settings, purge=True)
    assert done["purged"] == {**dict.fromkeys(counts(kmc), 5), "rate_limits": 0}
    assert "checkpoint" not in done  # no CA yet: nothing to sign
    assert counts(kmc) == dict.fromkeys(counts(kmc), 1)

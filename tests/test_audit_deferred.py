"""A KMC unit's audit records are appended at its end, inside its transaction: the chain
head (every audited change serialises on it) is not touched while the unit works, the
records keep their order, a unit that fails appends nothing, and a detail named like a
secret is refused at once, before any work is done. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from http_helpers import make_kmc
from mstcrypt.errors import PolicyError
from mstcrypt.kmc.models import AuditHead, AuditRecord


def _head(s: object) -> int:
    return int(s.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0)  # type: ignore[attr-defined]


def test_records_are_appended_at_the_end_in_order(database_url: str) -> None:
    kmc = make_kmc(database_url)
    try:
        ctx = kmc.ctx
        with ctx.db.read() as s:
            before = _head(s)
        with ctx.unit("tester") as u:
            u.audit("test.first", "t:1", n=1)
            u.audit("test.second", "t:2", n=2)
            # nothing of this unit is in the chain yet: the head row is untouched
            assert _head(u.s) == before
            assert u.s.scalar(select(func.count()).select_from(AuditRecord)) == before
        with ctx.db.read() as s:
            assert _head(s) == before + 2
            rows = s.scalars(
                select(AuditRecord).where(AuditRecord.seq > before).order_by(AuditRecord.seq)
            ).all()
        assert [r.action for r in rows] == ["test.first", "test.second"]
        assert [r.actor for r in rows] == ["tester", "tester"]
        assert kmc.verify_audit().ok is True

        # a unit that fails after audit() appends nothing
        with pytest.raises(RuntimeError), ctx.unit("tester") as u:
            u.audit("test.lost", "t:3")
            raise RuntimeError("the change failed")
        with ctx.db.read() as s:
            assert _head(s) == before + 2

        # a secret-looking detail is refused when audit() is called, not at the end
        reached = False
        with pytest.raises(PolicyError), ctx.unit("tester") as u:
            u.audit("test.secret", "t:4", pin="1234")
            reached = True
        assert reached is False
    finally:
        kmc.db.dispose()

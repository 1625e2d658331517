"""The audit chain at scale, on SQLite and PostgreSQL: verification streams on a
read-only snapshot that blocks no writer; incremental verification from the newest
signed checkpoint; range verification linked at both ends; checkpoints signed only over
a verified chain, periodically from the housekeeping; and every tampering — edit,
rewrite, deletion, reordering, truncation, a forged checkpoint, a swapped audit key —
caught by the verification whose scope covers it."""

from __future__ import annotations

import secrets
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text, update

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import PolicyError
from mstcrypt.kmc import audit
from mstcrypt.kmc.audit import AuditChainError, checkpoint_message, record_hash
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import AuditCheckpoint, AuditHead, AuditRecord, ServiceKey
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore


@pytest.fixture
def kmc(database_url: str) -> Any:
    k = Kmc(Database(database_url), SoftKeyStore(secrets.token_bytes(32)))
    k.create_schema()
    k.init_ca(actor="test")
    yield k
    k.db.dispose()


def append(kmc: Kmc, n: int) -> None:
    for i in range(n):
        with kmc.db.tx() as s:
            audit.append(s, actor="op", action="test.op", target=f"t:{i}", details={"i": i})


def head(kmc: Kmc) -> int:
    with kmc.db.tx() as s:
        return int(s.get(AuditHead, 1).seq)


def sql(kmc: Kmc, statement: str) -> None:
    with kmc.db.tx() as s:
        s.execute(text(statement))


def rewrite(kmc: Kmc, seq: int, actor: str = "mallory") -> None:
    """Edit record ``seq`` and recompute every later hash and the head, as an attacker
    with write access to the database can (SM3 is unkeyed)."""
    with kmc.db.tx() as s:
        rows = s.scalars(
            select(AuditRecord).where(AuditRecord.seq >= seq).order_by(AuditRecord.seq)
        )
        prev = s.scalar(select(AuditRecord.hash).where(AuditRecord.seq == seq - 1))
        for rec in rows:
            if rec.seq == seq:
                rec.actor = actor
            rec.prev_hash = prev
            rec.hash = record_hash(
                prev, rec.seq, rec.ts, rec.actor, rec.action, rec.target, dict(rec.details)
            )
            prev = rec.hash
        s.get(AuditHead, 1).hash = prev


def chain_with_checkpoint(kmc: Kmc, before: int = 4, after: int = 4) -> int:
    append(kmc, before)
    cp = kmc.checkpoint()
    assert cp is not None and cp == head(kmc)
    append(kmc, after)
    return cp


# -- snapshot: no write lock, one consistent view ----------------------------------------
def test_verification_blocks_no_writer_and_sees_one_snapshot(kmc: Kmc) -> None:
    append(kmc, 5)
    pub = kmc.audit.trusted_public_key()
    with kmc.db.snapshot() as conn:
        before = audit.verify_chain(conn, pub)
        writer = threading.Thread(target=append, args=(kmc, 1))
        writer.start()
        writer.join(15)
        assert not writer.is_alive(), "a writer waited for the verification"
        again = audit.verify_chain(conn, pub)
    assert before.ok and again.ok and again.head_seq == before.head_seq == before.to_seq
    assert kmc.verify_audit().head_seq == before.head_seq + 1


def test_verification_does_not_wait_for_an_open_write(kmc: Kmc) -> None:
    append(kmc, 3)
    n = head(kmc)
    out: list[audit.ChainReport] = []
    with kmc.db.tx() as s:  # a writer in the middle of its transaction
        audit.append(s, actor="op", action="test.op", target="t", details={})
        reader = threading.Thread(target=lambda: out.append(kmc.verify_audit()))
        reader.start()
        reader.join(15)
        assert not reader.is_alive(), "the verification waited for a writer"
    assert out[0].ok and out[0].head_seq == n  # the uncommitted record is not seen


def test_snapshot_is_read_only(kmc: Kmc) -> None:
    with pytest.raises(Exception, match=r"(?i)read.?only"), kmc.db.snapshot() as conn:
        conn.execute(update(AuditHead).values(seq=0))
    append(kmc, 1)  # the pooled connection writes again
    assert kmc.verify_audit().ok


def test_walk_fetches_the_log_in_bounded_pages(kmc: Kmc) -> None:
    append(kmc, 10)
    n = head(kmc)
    pages: list[str] = []

    def count(_conn: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if "FROM audit_log" in statement and "LIMIT" in statement.upper():
            pages.append(statement)

    event.listen(kmc.db.engine, "before_cursor_execute", count)
    try:
        with kmc.db.snapshot() as conn:
            r = audit.verify_chain(conn, kmc.audit.trusted_public_key(), batch=3)
    finally:
        event.remove(kmc.db.engine, "before_cursor_execute", count)
    assert r.ok and r.records == n
    assert len(pages) == n // 3 + 1  # keyset pagination, 3 rows a query


# -- incremental ---------------------------------------------------------------------------
def test_incremental_verifies_only_after_the_newest_checkpoint(kmc: Kmc) -> None:
    cp = chain_with_checkpoint(kmc, 4, 3)
    r = kmc.verify_audit(incremental=True)
    assert r.ok and r.mode == "incremental" and r.anchor_seq == cp and r.complete
    assert (r.from_seq, r.to_seq, r.records) == (cp + 1, cp + 3, 3) and r.checkpoints == 1
    full = kmc.verify_audit()
    assert full.ok and full.records == cp + 3 and full.checkpoints == 1
    # checkpoints chain: the next one is signed after verifying only the 3 new records
    assert kmc.checkpoint() == cp + 3
    r = kmc.verify_audit(incremental=True)
    assert r.ok and r.anchor_seq == cp + 3 and r.records == 0


def test_incremental_limit_bounds_the_work(kmc: Kmc) -> None:
    cp = chain_with_checkpoint(kmc, 2, 5)
    r = kmc.verify_audit(incremental=True, limit=2)
    assert r.ok and not r.complete and (r.from_seq, r.to_seq) == (cp + 1, cp + 2)
    assert r.records == 2 and "stopped after 2 records" in r.notes[-1]
    assert kmc.verify_audit(incremental=True, limit=5).complete


def test_edit_after_the_checkpoint_caught_by_incremental_and_never_signed(kmc: Kmc) -> None:
    cp = chain_with_checkpoint(kmc)
    sql(kmc, f"UPDATE audit_log SET target = 'x' WHERE seq = {cp + 2}")
    r = kmc.verify_audit(incremental=True)
    assert not r.ok and r.first_bad_seq == cp + 2 and "edited" in r.problem
    with pytest.raises(AuditChainError, match=f"broken at record {cp + 2}"):
        kmc.checkpoint()
    with kmc.db.tx() as s:
        assert s.scalar(select(func.max(AuditCheckpoint.seq))) == cp  # nothing signed


def test_edit_of_the_checkpointed_record_caught_by_incremental(kmc: Kmc) -> None:
    cp = chain_with_checkpoint(kmc, 3, 2)
    sql(kmc, f"UPDATE audit_log SET actor = 'mallory' WHERE seq = {cp}")
    r = kmc.verify_audit(incremental=True)
    assert not r.ok and r.first_bad_seq == cp and "edited" in r.problem


def test_edit_before_the_checkpoint_caught_by_full_and_range(kmc: Kmc) -> None:
    cp = chain_with_checkpoint(kmc, 6, 2)
    sql(kmc, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    # the incremental verification does not look before its checkpoint ...
    assert kmc.verify_audit(incremental=True).ok
    # ... the full and any range covering the record do
    r = kmc.verify_audit()
    assert not r.ok and r.first_bad_seq == 3 and "edited" in r.problem
    for lo, hi in ((1, cp), (3, 3), (2, 4)):
        r = kmc.verify_audit(from_seq=lo, to_seq=hi)
        assert not r.ok and r.mode == "range" and r.first_bad_seq == 3, (lo, hi)
    assert kmc.verify_audit(from_seq=4, to_seq=cp).ok  # a range that does not cover it


def test_rewritten_history_before_the_checkpoint(kmc: Kmc) -> None:
    """Edit + recompute every later hash: no record is inconsistent any more, but the
    signed checkpoint no longer matches — seen by every verification, including a range
    that ends before the checkpoint (it is verified on to it)."""
    cp = chain_with_checkpoint(kmc, 6, 2)
    rewrite(kmc, 3)
    r = kmc.verify_audit()
    assert not r.ok and r.first_bad_seq == 1 and "rewritten" in r.problem
    r = kmc.verify_audit(incremental=True)
    assert not r.ok and r.first_bad_seq == cp and "no longer matches" in r.problem
    r = kmc.verify_audit(from_seq=3, to_seq=4)
    assert not r.ok and f"signed checkpoint {cp}" in r.problem
    assert any(f"checkpoint at {cp}" in n for n in r.notes)
    with pytest.raises(AuditChainError):
        kmc.checkpoint()


def test_forged_checkpoint_is_refused(kmc: Kmc) -> None:
    """The attacker rewrites the records after the checkpoint and plants a checkpoint on
    the new head, signed with a key of their own (or with garbage), so that the
    incremental verification would start after their edit."""
    cp = chain_with_checkpoint(kmc)
    rewrite(kmc, cp + 1)
    top = head(kmc)
    with kmc.db.tx() as s:
        h = s.scalar(select(AuditRecord.hash).where(AuditRecord.seq == top))
    mallory = SM2PrivateKey.generate()
    for signature in (mallory.sign(checkpoint_message(top, h)), b"\x30\x00", b""):
        with kmc.db.tx() as s:
            s.merge(AuditCheckpoint(seq=top, hash=h, signature=signature, signed_at=kmc.clock()))
        for r in (kmc.verify_audit(incremental=True), kmc.verify_audit()):
            assert not r.ok and r.first_bad_seq == top and "invalid signature" in r.problem
    # a checkpoint whose hash is not even hex
    sql(kmc, f"UPDATE audit_checkpoints SET hash = 'zz' WHERE seq = {top}")
    assert "invalid signature" in kmc.verify_audit(incremental=True).problem


def test_swapped_audit_key_is_refused(kmc: Kmc) -> None:
    """The attacker replaces the audit public key in the database by their own and
    re-signs every checkpoint: the key is not the one sealed in the SS-CC."""
    cp = chain_with_checkpoint(kmc)
    rewrite(kmc, 2)
    mallory = SM2PrivateKey.generate()
    with kmc.db.tx() as s:
        s.get(ServiceKey, "audit").public_key = mallory.public_key().to_bytes()
        h = s.scalar(select(AuditRecord.hash).where(AuditRecord.seq == cp))
        row = s.get(AuditCheckpoint, cp)
        row.hash, row.signature = h, mallory.sign(checkpoint_message(cp, h))
    for verify in (
        kmc.verify_audit,
        lambda: kmc.verify_audit(incremental=True),
        lambda: kmc.verify_audit(from_seq=1, to_seq=2),
        kmc.checkpoint,
    ):
        with pytest.raises(AuditChainError, match="not the key sealed in the SS-CC"):
            verify()


TAMPERING = {
    # what the attacker does after the checkpoint -> (first bad record, words in problem)
    "delete": (
        "DELETE FROM audit_log WHERE seq = {cp2}",
        "{cp2}",
        "missing",
    ),
    "reorder": ("SWAP", "{cp1}", "does not link"),
    "truncate": (
        "DELETE FROM audit_log WHERE seq > {cp1}",
        "{cp2}",
        "were deleted (head is at",
    ),
    "truncate-and-move-head": (
        "DELETE FROM audit_log WHERE seq > {cp1};"
        "UPDATE audit_head SET seq = {cp1}, hash = (SELECT hash FROM audit_log WHERE seq = {cp1})",
        None,
        None,
    ),
    "truncate-below-checkpoint": (
        "DELETE FROM audit_log WHERE seq >= {cp};"
        "UPDATE audit_head SET seq = {cpm1}, "
        "hash = (SELECT hash FROM audit_log WHERE seq = {cpm1})",
        "{cp}",
        "signed checkpoint at {cp}",
    ),
    "head-moved-back": (
        "UPDATE audit_head SET seq = {cp1}, hash = (SELECT hash FROM audit_log WHERE seq = {cp1})",
        "{cp2}",
        "not covered by the chain head",
    ),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_deletion_reordering_truncation_after_the_checkpoint(kmc: Kmc, kind: str) -> None:
    cp = chain_with_checkpoint(kmc, 3, 4)
    statement, bad, words = TAMPERING[kind]
    values = {"cp": cp, "cp1": cp + 1, "cp2": cp + 2, "cpm1": cp - 1}
    if statement == "SWAP":
        with kmc.db.tx() as s:
            a, b = s.get(AuditRecord, cp + 1), s.get(AuditRecord, cp + 2)
            fields = ("ts", "actor", "action", "target", "details", "prev_hash", "hash")
            va, vb = ({f: getattr(a, f) for f in fields}, {f: getattr(b, f) for f in fields})
            s.execute(update(AuditRecord).where(AuditRecord.seq == cp + 1).values(**vb))
            s.execute(update(AuditRecord).where(AuditRecord.seq == cp + 2).values(**va))
    else:
        for part in statement.split(";"):
            sql(kmc, part.format(**values))
    if bad is None:
        # dropping the newest records together with the head, above the last signed
        # checkpoint, leaves a shorter valid chain: only an external copy of a later
        # checkpoint (or of the head) can tell; the log itself stays consistent
        assert kmc.verify_audit(incremental=True).ok and kmc.verify_audit().ok
        return
    for r in (kmc.verify_audit(incremental=True), kmc.verify_audit()):
        assert not r.ok, r
        assert r.first_bad_seq == int(bad.format(**values)), r
        assert words.format(**values) in r.problem, r


# -- range ----------------------------------------------------------------------------------
def test_range_links_to_the_chain_at_both_ends(kmc: Kmc) -> None:
    cp = chain_with_checkpoint(kmc, 8, 3)
    r = kmc.verify_audit(from_seq=3, to_seq=5)
    assert r.ok and r.mode == "range" and r.from_seq == 3 and r.to_seq == cp
    assert r.records == cp - 2 and r.checkpoints == 1
    # the record before the range no longer carries the hash the range links to
    with kmc.db.tx() as s:
        saved = s.scalar(select(AuditRecord.hash).where(AuditRecord.seq == 2))
    sql(kmc, f"UPDATE audit_log SET hash = '{'11' * 32}' WHERE seq = 2")
    r = kmc.verify_audit(from_seq=3, to_seq=5)
    assert not r.ok and r.first_bad_seq == 3 and "does not link" in r.problem
    sql(kmc, f"UPDATE audit_log SET hash = '{saved}' WHERE seq = 2")
    # the record after the range does not link to its end
    top = head(kmc)
    sql(kmc, f"UPDATE audit_log SET prev_hash = '{'22' * 32}' WHERE seq = {cp + 1}")
    r = kmc.verify_audit(from_seq=cp - 1, to_seq=cp)
    assert not r.ok and r.first_bad_seq == cp + 1 and "does not link" in r.problem
    # open end: to the head, whose link is checked
    r = kmc.verify_audit(from_seq=cp + 2, to_seq=10**9)
    assert r.ok and r.to_seq == top and any("ends at record" in n for n in r.notes)
    with pytest.raises(PolicyError, match="not a range"):
        kmc.verify_audit(from_seq=5, to_seq=4)
    with pytest.raises(PolicyError, match="log ends at record"):
        kmc.verify_audit(from_seq=top + 1, to_seq=top + 5)


def test_range_start_at_a_checkpoint_is_anchored(kmc: Kmc) -> None:
    cp = chain_with_checkpoint(kmc, 4, 4)
    r = kmc.verify_audit(from_seq=cp + 1, to_seq=cp + 2)
    assert r.ok and r.checkpoints == 1  # the checkpoint at the start: signature checked
    with kmc.db.tx() as s:
        s.get(AuditCheckpoint, cp).signature = b"\x30\x00"
    r = kmc.verify_audit(from_seq=cp + 1, to_seq=cp + 2)
    assert not r.ok and "invalid signature" in r.problem


# -- checkpoints: periodic, concurrent -----------------------------------------------------
def test_checkpoint_due_every_n_records_or_t_seconds(kmc: Kmc) -> None:
    t0 = kmc.clock()
    kmc.clock = lambda: t0
    a = kmc.audit
    cp = a.checkpoint_if_due(every_records=5, every_seconds=60)
    assert cp == head(kmc)  # the first one: as soon as there is a record
    assert a.checkpoint_if_due(every_records=5, every_seconds=60) is None  # nothing new
    append(kmc, 4)
    assert a.checkpoint_if_due(every_records=5, every_seconds=60) is None
    append(kmc, 1)
    assert a.checkpoint_if_due(every_records=5, every_seconds=60) == cp + 5
    append(kmc, 1)
    assert a.checkpoint_if_due(every_records=5, every_seconds=60) is None
    kmc.clock = lambda: t0 + timedelta(seconds=61)
    assert a.checkpoint_if_due(every_records=5, every_seconds=60) == cp + 6


def test_housekeeping_signs_checkpoints(kmc: Kmc, tmp_path: Any) -> None:
    from mstcrypt.server.app import create_app, housekeeping_round
    from mstcrypt.server.config import Settings

    settings = Settings(data_dir=tmp_path, checkpoint_records=3, checkpoint_seconds=3600)
    app = create_app(settings, kmc)
    first = housekeeping_round(app, kmc, settings, purge=False)["checkpoint"]
    assert first == head(kmc)
    append(kmc, 2)
    assert housekeeping_round(app, kmc, settings, purge=False)["checkpoint"] is None
    append(kmc, 1)
    assert housekeeping_round(app, kmc, settings, purge=False)["checkpoint"] == first + 3
    append(kmc, 3)
    sql(kmc, f"UPDATE audit_log SET actor = 'mallory' WHERE seq = {first + 4}")
    with pytest.raises(AuditChainError):  # the server logs it and keeps serving
        housekeeping_round(app, kmc, settings, purge=False)


def test_two_instances_sign_one_checkpoint(kmc: Kmc, database_url: str) -> None:
    other = Kmc(Database(database_url), kmc.keystore)
    try:
        append(kmc, 3)
        results: list[int | None] = []
        threads = [
            threading.Thread(target=lambda k=k: results.append(k.checkpoint()))
            for k in (kmc, other, kmc, other)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        top = head(kmc)
        assert sorted(r for r in results if r is not None) == [top]
        with kmc.db.tx() as s:
            assert s.scalar(select(func.count()).select_from(AuditCheckpoint)) == 1
        assert kmc.verify_audit().ok
    finally:
        other.db.dispose()


# -- the console commands -------------------------------------------------------------------
def test_cli_full_incremental_and_range(tmp_path: Path) -> None:
    import os
    import sqlite3
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env.update(PYTHONPATH=str(root / "src"), COLUMNS="200", NO_COLOR="1", TERM="dumb")
    d = ["--data-dir", str(tmp_path / "data")]

    def mstcrypt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mstcrypt", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    assert mstcrypt("ca", "init", *d).returncode == 0
    p = mstcrypt("audit", "checkpoint", *d)
    assert p.returncode == 0 and "signed checkpoint at record" in p.stdout, p.stderr
    cp = int(p.stdout.split("record")[-1])
    assert "nothing new to sign" in mstcrypt("audit", "checkpoint", *d).stdout
    p = mstcrypt("audit", "verify", *d)
    assert p.returncode == 0 and f"audit chain OK: {cp} records, 1 signed" in p.stdout
    p = mstcrypt("audit", "verify", "--incremental", *d)
    assert p.returncode == 0 and f"incremental from signed checkpoint {cp}" in p.stdout
    p = mstcrypt("audit", "verify", "--from", "1", "--to", "1", *d)
    assert p.returncode == 0 and f"OK (range): records 1..{cp} verified" in p.stdout
    p = mstcrypt("audit", "verify", "--incremental", "--from", "1", *d)
    assert p.returncode != 0 and "exclusive" in p.stderr
    with sqlite3.connect(tmp_path / "data" / "mstcrypt.db") as db:
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1")
    p = mstcrypt("audit", "verify", *d)
    assert p.returncode == 1 and "BROKEN at record 1: record 1 was edited" in p.stdout
    assert mstcrypt("audit", "verify", "--incremental", *d).returncode == (0 if cp > 1 else 1)
    p = mstcrypt("audit", "verify", "--from", "1", "--to", "1", *d)
    assert p.returncode == 1 and "record 1 was edited" in p.stdout

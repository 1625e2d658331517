"""Streamed backups (format 2) on SQLite and PostgreSQL: round trip across many chunks,
bounded pieces, no write lock while reading; truncation, reordering, splicing, trailing
data and a wrong passphrase refused with the store left empty; format-1 backups (one
GCM message over one JSON document) still restore."""

from __future__ import annotations

import base64
import io
import json
import secrets
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from mstcrypt.crypto import sm4
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import KeyStoreError, PolicyError
from mstcrypt.kmc import audit
from mstcrypt.kmc.backup import CHUNK, ITERATIONS
from mstcrypt.kmc.context import aware
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import AuditHead, AuditRecord, Base
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import build_csr, name

PASS = "correct horse battery"
TAG = 16
HEADER = 8 + 16 + 7


@pytest.fixture
def kmc(database_url: str) -> Any:
    k = Kmc(Database(database_url), SoftKeyStore(secrets.token_bytes(32)))
    k.create_schema()
    k.init_ca(actor="test")
    terminal = SM2PrivateKey.generate()
    code, _ = k.create_enrollment_code(owner="alice", subject={"CN": "alice"}, actor="op")
    k.enroll(code, build_csr(name(CN="alice"), terminal.public_key(), terminal.sign).der)
    bulk_audit(k, 1500)  # enough for a backup of several chunks
    yield k
    k.db.dispose()


def bulk_audit(k: Kmc, n: int) -> None:
    """Append ``n`` records in one executemany, hashed as :func:`audit.append` does."""
    with k.db.tx() as s:
        seq, prev = s.execute(select(AuditHead.seq, AuditHead.hash)).one()
        batch = []
        for i in range(n):
            seq += 1
            ts, details = audit.now_iso(), {"i": i}
            h = audit.record_hash(prev, seq, ts, "op", "test.bulk", f"t:{i}", details)
            batch.append(
                {
                    "seq": seq,
                    "ts": ts,
                    "actor": "op",
                    "action": "test.bulk",
                    "target": f"t:{i}",
                    "details": details,
                    "prev_hash": prev,
                    "hash": h,
                }
            )
            prev = h
        s.execute(insert(AuditRecord), batch)
        s.execute(update(AuditHead).values(seq=seq, hash=prev))


@pytest.fixture
def empty(tmp_path: Path, kmc: Kmc) -> Any:
    k = Kmc(Database(f"sqlite:///{tmp_path / 'restored.db'}"), kmc.keystore)
    k.create_schema()
    yield k
    k.db.dispose()


def rows(k: Kmc) -> int:
    with k.db.tx() as s:
        return int(s.scalar(select(func.count()).select_from(AuditRecord)))


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    body = blob[HEADER:]
    size = CHUNK + TAG
    return blob[:HEADER], [body[i : i + size] for i in range(0, len(body), size)]


def test_streamed_round_trip(kmc: Kmc, empty: Kmc) -> None:
    pieces = list(kmc.backup_stream(PASS, actor="op"))
    blob = b"".join(pieces)
    assert blob.startswith(b"MSTKMCB2")
    _, chunks = split(blob)
    assert len(chunks) >= 3, "the test should span several chunks"
    assert max(len(p) for p in pieces) <= CHUNK + TAG  # bounded pieces
    n = empty.restore_from(io.BytesIO(blob), PASS, actor="op")
    assert n > 1500 and rows(empty) == rows(kmc) + 1  # + the kmc.restore record
    assert empty.verify_audit().ok and empty.verify_audit().records == rows(empty)
    assert empty.encryption_certificate("alice").der == kmc.encryption_certificate("alice").der
    with pytest.raises(PolicyError, match="empty store"):
        empty.restore(blob, PASS, actor="op")


def test_backup_to_a_file(kmc: Kmc, empty: Kmc, tmp_path: Path) -> None:
    path = tmp_path / "kmc.backup"
    with path.open("wb") as f:
        written = kmc.backup_to(f, PASS, actor="op")
    assert written == path.stat().st_size
    with path.open("rb") as f:
        assert empty.restore_from(f, PASS, actor="op") > 0


def test_backup_blocks_no_writer(kmc: Kmc) -> None:
    stream = kmc.backup_stream(PASS, actor="op")
    next(stream)
    next(stream)  # the snapshot is open, mid-table
    done = threading.Event()

    def write() -> None:
        with kmc.db.tx() as s:
            audit.append(s, actor="op", action="test.op", target="t", details={})
        done.set()

    t = threading.Thread(target=write)
    t.start()
    assert done.wait(15), "a writer waited for the backup"
    rest = b"".join(stream)
    t.join()
    assert rest


def _tampered(blob: bytes) -> dict[str, bytes]:
    header, chunks = split(blob)
    return {
        "drop last chunk": header + b"".join(chunks[:-1]),
        "cut mid-chunk": blob[: HEADER + CHUNK + TAG + 100],
        "swap chunks": header + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        "repeat a chunk": header + chunks[0] + b"".join(chunks),
        "trailing data": blob + b"\x00" * 17,
        "flip a byte": blob[:-40] + bytes([blob[-40] ^ 1]) + blob[-39:],
        "other header": blob[:10] + bytes([blob[10] ^ 1]) + blob[11:],
        "header only": header,
    }


def test_damaged_backup_refused_and_store_left_empty(kmc: Kmc, empty: Kmc) -> None:
    blob = kmc.backup(PASS, actor="op")
    for kind, bad in _tampered(blob).items():
        with pytest.raises(KeyStoreError, match="backup"):
            empty.restore(bad, PASS, actor="op")
        assert rows(empty) == 0, kind
    assert empty.restore(blob, PASS, actor="op") > 0  # the intact one still restores


def test_wrong_passphrase_and_foreign_data(kmc: Kmc, empty: Kmc) -> None:
    blob = kmc.backup(PASS, actor="op")
    with pytest.raises(KeyStoreError, match="passphrase"):
        empty.restore(blob, "wrong passphrase!!", actor="op")
    with pytest.raises(KeyStoreError, match="not an mstcrypt KMC backup"):
        empty.restore(b"PK\x03\x04" + blob[4:], PASS, actor="op")
    with pytest.raises(PolicyError, match="12 characters"):
        kmc.backup_stream("short", actor="op")
    assert rows(empty) == 0


def _v1_backup(k: Kmc, passphrase: str) -> bytes:
    """A backup in format 1, as mstcrypt wrote it before format 2: one JSON document,
    bytes as {"$b": base64}, timestamps as {"$t": iso}, one SM4-GCM message."""
    from mstcrypt.crypto.sm3 import kdf, pbkdf2_hmac_sm3

    def enc(v: Any) -> Any:
        if isinstance(v, bytes):
            return {"$b": base64.b64encode(v).decode()}
        if isinstance(v, datetime):
            return {"$t": aware(v).isoformat()}
        return v

    tables = {}
    with k.db.tx() as s:
        for table in Base.metadata.sorted_tables:
            tables[table.name] = [
                {c: enc(v) for c, v in r.items()} for r in s.execute(table.select()).mappings()
            ]
    plain = json.dumps(
        {"format": "mstcrypt-kmc-backup", "version": 1, "tables": tables},
        separators=(",", ":"),
    ).encode()
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    header = b"MSTKMCB1" + salt + nonce
    key = kdf(pbkdf2_hmac_sm3(passphrase.encode(), salt, ITERATIONS, 32), 16)
    return header + sm4.gcm_encrypt(key, nonce, plain, header)


def test_format_1_backup_still_restores(kmc: Kmc, empty: Kmc) -> None:
    blob = _v1_backup(kmc, PASS)
    with pytest.raises(KeyStoreError, match="passphrase"):
        empty.restore(blob, "wrong passphrase!!", actor="op")
    with pytest.raises(KeyStoreError):
        empty.restore(blob[:-1], PASS, actor="op")
    assert empty.restore(blob, PASS, actor="op") > 1500
    assert rows(empty) == rows(kmc) + 1
    assert empty.verify_audit().ok
    assert empty.encryption_certificate("alice").der == kmc.encryption_certificate("alice").der


def test_cli_backup_create_and_restore(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env.update(PYTHONPATH=str(root / "src"), COLUMNS="200", NO_COLOR="1", TERM="dumb")
    # both stores open with the same SS-CC (the soft master key beside the first one)
    env["MSTCRYPT_SSCC_DIR"] = str(tmp_path / "data.sscc")
    (tmp_path / "pass").write_text(PASS)
    backup = tmp_path / "kmc.backup"

    def mstcrypt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mstcrypt", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    src, dst = ["--data-dir", str(tmp_path / "data")], ["--data-dir", str(tmp_path / "copy")]
    assert mstcrypt("ca", "init", *src).returncode == 0
    pf = ["--passphrase-file", str(tmp_path / "pass")]
    p = mstcrypt("backup", "create", "--out", str(backup), *pf, *src)
    assert p.returncode == 0 and "backup written" in p.stdout, p.stderr
    assert backup.read_bytes().startswith(b"MSTKMCB2") and backup.stat().st_mode & 0o077 == 0
    damaged = tmp_path / "damaged.backup"
    damaged.write_bytes(backup.read_bytes()[:-1])
    p = mstcrypt("backup", "restore", str(damaged), *pf, *dst)
    assert p.returncode != 0 and "damaged" in p.stderr, p.stdout + p.stderr
    p = mstcrypt("backup", "restore", str(backup), *pf, *dst)
    assert p.returncode == 0 and "restored" in p.stdout, p.stderr
    p = mstcrypt("audit", "verify", *dst)
    assert p.returncode == 0 and "audit chain OK" in p.stdout, p.stdout + p.stderr

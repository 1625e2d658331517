"""Operator-initiated key rotation picked up by the terminal: ``rotate`` without a
terminal key keeps the envelope (to the owner's active signing certificate) as a pending
delivery; the terminal lists it with its session, validates the new certificate to its
token's anchor, installs it atomically (the old key kept decrypt-only) and acknowledges.

Attacks: another terminal's session lists or collects someone else's delivery; an
operator's key; a tampered envelope, a certificate that does not match or does not
validate (the token file is unchanged byte for byte); collecting twice; a terminal whose
signing certificate is revoked. The migration goes up and down on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, select

from mstcrypt.apps import files
from mstcrypt.cli.platform import running_platform
from mstcrypt.client import Client, ServiceError
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import DecryptionError, MstCryptError, PolicyError, VerificationError
from mstcrypt.formats.envelope import EnvelopedKey, build_enveloped_key
from mstcrypt.kmc.db import Database, migrate
from mstcrypt.kmc.models import AuditRecord, KeyDelivery
from mstcrypt.kmc.service import Kmc
from mstcrypt.module import KeyUsage, SoftToken
from mstcrypt.pki import Certificate, Issuer, name
from mstcrypt.server.config import Settings
from platform_helpers import add_operators

SUBJECT = {"C": "CN", "O": "Example Unit", "CN": "alice", "email": "alice@example.cn"}
PIN, ADMIN_CODE = "246810", "admin-unlock-code"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
MIGRATIONS = Path(__file__).resolve().parents[1] / "src/mstcrypt/kmc/migrations"


@dataclass
class Plat:
    url: str
    kmc: Kmc
    root: Certificate
    ops: dict[str, str]
    tmp: Path

    def admin(self) -> Client:
        return Client(self.url, anchors=[self.root], operator_token=self.ops["alice"])

    def terminal(self, owner: str, file: str = "") -> tuple[SoftToken, Path, str]:
        """An enrolled soft token (root preset), logged in: (token, its file, session)."""
        path = self.tmp / f"{file or owner}.tok"
        tok = SoftToken.init(path, PIN, ADMIN_CODE, iterations=100_000, anchors=[self.root.der])
        with self.admin() as a:
            code = a.create_enrollment_code(owner, {**SUBJECT, "CN": owner})["code"]
        with Client(self.url) as c:
            c.enroll(code, tok)
            session = str(c.login(tok)["session_token"])
        return tok, path, session

    def audit(self, action: str) -> list[AuditRecord]:
        with self.kmc.db.tx() as s:
            return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


@pytest.fixture
def plat(database_url: str, tmp_path: Path) -> Iterator[Plat]:
    data = tmp_path / "data"
    settings = Settings(
        data_dir=data,
        database_url=database_url,
        checkpoint_seconds=3600,
        static_operators=True,
        crl_max_delay=0,
    )
    with running_platform(data, settings, tls=False) as url:
        kmc = settings.kmc()
        try:
            yield Plat(url, kmc, kmc.chain()[-1], add_operators(kmc), tmp_path)
        finally:
            kmc.db.dispose()


def encrypt_to(cert: Certificate, text: bytes) -> bytes:
    out = io.BytesIO()
    files.encrypt(io.BytesIO(text), out, [cert])
    return out.getvalue()


def decrypt_with(tok: SoftToken, blob: bytes) -> bytes:
    out = io.BytesIO()
    files.decrypt(io.BytesIO(blob), out, tok)  # the module alone: every container's key
    return out.getvalue()


def reopen(path: Path) -> SoftToken:
    tok = SoftToken.open(path)
    tok.login(PIN)
    return tok


# ------------------------------------------------------------------------ the flow ---------
def test_rotate_collect_old_and_new_files_open(plat: Plat) -> None:
    tok, path, session = plat.terminal("alice")
    with Client(plat.url, anchors=[plat.root]) as c:
        v1 = c.recipient_certificate("alice")
        old_file = encrypt_to(v1, b"written to v1")
        assert c.collect_keys(session, tok) == []  # nothing pending yet
        with plat.admin() as a:
            r = a.rotate_key("alice")
            assert r["delivery"] == "pending" and "enveloped_key" not in r
            keys = a.keys("alice")
        assert [(k["version"], k["state"], k["awaiting_pickup"]) for k in keys] == [
            (1, "decrypt_only", False),
            (2, "active", True),
        ]
        v2 = c.recipient_certificate("alice")  # the directory already serves v2
        assert v2.der != v1.der and v2.subject_str == v1.subject_str
        assert v2.public_key != tok.key("main", KeyUsage.ENCRYPT).public_key
        new_file = encrypt_to(v2, b"written to v2")
        with pytest.raises(MstCryptError):
            decrypt_with(tok, new_file)  # not collected yet

        pending = c.pending_keys(session)
        assert [(k["key_id"], k["version"]) for k in pending] == [(r["key_id"], 2)]
        done = c.collect_keys(session, tok)
        assert [(d.key_id, d.version, d.installed) for d in done] == [(r["key_id"], 2, True)]
        assert done[0].previous_container == f"main.enc-{v1.serial:x}"
        assert c.pending_keys(session) == []
        # collecting twice: a clean "nothing pending"
        assert c.collect_keys(session, tok) == []
        with pytest.raises(ServiceError) as e:
            httpx_post(plat.url, f"/kmc/keys/{r['key_id']}/collected", session)
        assert e.value.status == 404

    tok = reopen(path)  # what was persisted
    assert tok.list_containers() == ["main", f"main.enc-{v1.serial:x}"]
    assert tok.key("main", KeyUsage.ENCRYPT).public_key == v2.public_key
    assert tok.get_certificate("main", KeyUsage.ENCRYPT) == v2.der
    kept = f"main.enc-{v1.serial:x}"
    assert tok.get_certificate(kept, KeyUsage.ENCRYPT) == v1.der
    with pytest.raises(MstCryptError):
        tok.key(kept, KeyUsage.SIGN)  # decrypt-only: no signing key there
    assert tok.key_provenance("main", KeyUsage.ENCRYPT).escrowed is True
    assert decrypt_with(tok, old_file) == b"written to v1"
    assert decrypt_with(tok, new_file) == b"written to v2"
    rot, col = plat.audit("key.rotate"), plat.audit("key.collect")
    assert [a.details["delivery"] for a in rot] == [f"pending:{v1_sign(plat, 'alice')}"]
    assert [(a.actor, a.target) for a in col] == [("terminal:alice", f"key:{r['key_id']}")]
    with plat.kmc.db.tx() as s:
        d = s.get(KeyDelivery, r["key_id"])
        assert d is not None and d.envelope is None and d.collected_at is not None


def v1_sign(plat: Plat, owner: str) -> str:
    return next(
        f"{c.serial:x}"
        for c in plat.kmc.find_certificates(owner=owner)
        if "digital_signature" in c.key_usage
    )


def httpx_post(url: str, path: str, session: str) -> Any:
    with Client(url) as c:
        return c._json("POST", path, headers={"Authorization": f"Bearer {session}"})


@SQLITE_ONLY
def test_two_rotations_before_pickup_collect_in_order(plat: Plat) -> None:
    tok, path, session = plat.terminal("alice")
    with Client(plat.url, anchors=[plat.root]) as c, plat.admin() as a:
        blobs = [encrypt_to(c.recipient_certificate("alice"), b"v1")]
        for v in (2, 3):
            a.rotate_key("alice")
            blobs.append(encrypt_to(c.recipient_certificate("alice"), f"v{v}".encode()))
        assert [k["version"] for k in c.pending_keys(session)] == [2, 3]
        assert [k["state"] for k in a.keys("alice")] == ["decrypt_only", "decrypt_only", "active"]
        done = c.collect_keys(session, tok)
        assert [d.version for d in done] == [2, 3]
    tok = reopen(path)
    assert len(tok.list_containers()) == 3
    assert [decrypt_with(tok, b) for b in blobs] == [b"v1", b"v2", b"v3"]


@SQLITE_ONLY
def test_an_interrupted_pickup_is_acknowledged_without_installing_again(plat: Plat) -> None:
    tok, path, session = plat.terminal("alice")
    with Client(plat.url, anchors=[plat.root]) as c, plat.admin() as a:
        a.rotate_key("alice")
        item = c.pending_keys(session)[0]
        cert = Certificate.from_pem(item["encryption_certificate"].encode())
        # the token installed it, the acknowledgement never reached the server
        tok.install_rotated_key(
            "main", base64.b64decode(item["enveloped_key"]), cert.der, keep_previous_as="old"
        )
        before = path.read_bytes()
        done = c.collect_keys(session, tok)
        assert [(d.installed, d.previous_container) for d in done] == [(False, None)]
        assert path.read_bytes() == before
        assert c.pending_keys(session) == []


# ------------------------------------------------------------------------ attacks ----------
@SQLITE_ONLY
def test_another_terminal_cannot_list_or_collect(plat: Plat) -> None:
    _, _, s_a = plat.terminal("alice")
    _, _, s_b = plat.terminal("bob")
    with plat.admin() as a:
        key_id = a.rotate_key("alice")["key_id"]
    with Client(plat.url) as c:
        assert c.pending_keys(s_b) == []  # bob sees only his own
        for kid in (key_id, "no-such-key", "x" * 200):
            with pytest.raises(ServiceError) as e:
                httpx_post(plat.url, f"/kmc/keys/{kid}/collected", s_b)
            assert e.value.status == 404
            assert "pending for this terminal" in e.value.detail
        # the owner is the session's: a parameter naming another owner is ignored
        r = httpx.get(
            f"{plat.url}/kmc/keys/pending",
            params={"owner": "alice"},
            headers={"Authorization": f"Bearer {s_b}"},
        )
        assert r.status_code == 200 and r.json() == {"owner": "bob", "keys": []}
        # no session at all
        assert httpx.get(f"{plat.url}/kmc/keys/pending").status_code == 401
        # nothing changed for alice
        assert [k["key_id"] for k in c.pending_keys(s_a)] == [key_id]
    assert plat.audit("key.collect") == []


@SQLITE_ONLY
def test_operator_keys_are_not_rotated(plat: Plat) -> None:
    code, _ = plat.kmc.operators.add("ops-ra", ["registration_officer"], actor="test")
    tok = SoftToken.init(
        plat.tmp / "op.tok", PIN, ADMIN_CODE, iterations=100_000, anchors=[plat.root.der]
    )
    with Client(plat.url) as c:
        c.enroll(code, tok)
    before = plat.kmc.keys("ops-ra")
    with plat.admin() as a, pytest.raises(ServiceError) as e:
        a.rotate_key("ops-ra")
    assert e.value.status == 409 and "is an operator" in e.value.detail
    with pytest.raises(PolicyError, match="is an operator"):
        plat.kmc.rotate_key("ops-ra", actor="test")
    assert plat.kmc.keys("ops-ra") == before
    with plat.kmc.db.tx() as s:
        assert s.scalars(select(KeyDelivery)).all() == []


@SQLITE_ONLY
def test_revoked_signing_certificate_refuses_the_rotation(plat: Plat) -> None:
    plat.terminal("alice")
    before = plat.kmc.keys("alice")
    plat.kmc.revoke_certificate(v1_sign(plat, "alice"), reason="superseded", actor="test")
    with pytest.raises(PolicyError, match="no active signing certificate"):
        plat.kmc.rotate_key("alice", actor="test")
    with plat.admin() as a, pytest.raises(ServiceError) as e:
        a.rotate_key("alice")
    assert e.value.status == 409
    assert plat.kmc.keys("alice") == before
    assert plat.audit("key.rotate") == []
    # an owner with no terminal at all
    with pytest.raises(PolicyError):
        plat.kmc.rotate_key("nobody", actor="test")


@SQLITE_ONLY
def test_tampered_envelope_or_wrong_certificate_leaves_the_token_unchanged(plat: Plat) -> None:
    tok, path, session = plat.terminal("alice")
    with Client(plat.url, anchors=[plat.root]) as c, plat.admin() as a:
        v1 = c.recipient_certificate("alice")
        a.rotate_key("alice")
        item = c.pending_keys(session)[0]
    env = base64.b64decode(item["enveloped_key"])
    v2 = Certificate.from_pem(item["encryption_certificate"].encode())
    before = path.read_bytes()
    flipped = bytearray(env)
    flipped[-5] ^= 0x01
    other = build_enveloped_key(SM2PrivateKey.generate(), tok.key("main", KeyUsage.SIGN).public_key)
    cases: list[tuple[bytes, bytes, type[Exception]]] = [
        (bytes(flipped), v2.der, MstCryptError),  # tampered envelope
        (env[:-10], v2.der, MstCryptError),  # truncated
        (env, v1.der, VerificationError),  # a certificate for another key
        (other, v2.der, VerificationError),  # a key the certificate is not for
        (env, b"\x30\x03\x02\x01\x01", MstCryptError),  # not a certificate
    ]
    for envelope, cert_der, error in cases:
        with pytest.raises(error):
            tok.install_rotated_key("main", envelope, cert_der, keep_previous_as="main.old")
        assert path.read_bytes() == before
        assert tok.list_containers() == ["main"]
        assert tok.key("main", KeyUsage.ENCRYPT).public_key == v1.public_key
    with pytest.raises(PolicyError):  # the kept key cannot overwrite a container
        tok.install_rotated_key("main", env, v2.der, keep_previous_as="main")
    assert path.read_bytes() == before

    # through the client: a pending item whose certificate does not validate to the
    # token's anchor (another CA), or whose envelope was altered on the way
    key = SM2PrivateKey.generate()
    rogue = Issuer.self_signed(
        name(C="CN", O="mstcrypt", CN="mstcrypt Root CA"), key.public_key(), key.sign
    )
    forged = rogue.issue(subject=name(CN="alice"), public_key=v2.public_key, profile="device_enc")

    class Tampering(Client):
        def __init__(self, url: str, item: dict[str, Any]) -> None:
            super().__init__(url)
            self.item = item

        def pending_keys(self, session_token: str) -> list[dict[str, Any]]:
            return [self.item]

    for bad in (
        {**item, "encryption_certificate": forged.pem.decode()},
        {**item, "enveloped_key": base64.b64encode(bytes(flipped)).decode()},
        {**item, "enveloped_key": "not base64!"},
    ):
        with Tampering(plat.url, bad) as t, pytest.raises(MstCryptError):
            t.collect_keys(session, tok)
        assert path.read_bytes() == before
    with Client(plat.url) as c:
        assert len(c.pending_keys(session)) == 1  # still waiting for the real pickup
    assert plat.audit("key.collect") == []


@SQLITE_ONLY
def test_revoked_or_destroyed_key_is_not_delivered(plat: Plat) -> None:
    plat.terminal("alice")
    with plat.admin() as a:
        key_id = a.rotate_key("alice")["key_id"]
        assert [k["key_id"] for k in plat.kmc.pending_keys("alice")] == [key_id]
        # a lost device: the key (and the pair with the terminal's signing certificate)
        # is revoked; the envelope to that terminal is dropped with it
        a.key_operation(key_id, "revoke", reason="key_compromise")
        assert plat.kmc.pending_keys("alice") == []
        with plat.kmc.db.tx() as s:
            d = s.get(KeyDelivery, key_id)
            assert d is not None and d.envelope is None and d.collected_at is None
        a.key_operation(key_id, "destroy")
    assert plat.kmc.pending_keys("alice") == []


@SQLITE_ONLY
def test_a_reenrolled_terminal_is_not_offered_envelopes_to_its_old_key(plat: Plat) -> None:
    plat.terminal("alice")
    with plat.admin() as a:
        a.rotate_key("alice")
    assert len(plat.kmc.pending_keys("alice")) == 1
    tok, path, session = plat.terminal("alice", "alice-new-phone")  # supersedes the old pair
    with Client(plat.url, anchors=[plat.root]) as c:
        assert c.pending_keys(session) == []
        before = path.read_bytes()
        assert c.collect_keys(session, tok) == []
        assert path.read_bytes() == before


def test_explicit_terminal_key_still_returns_the_envelope(plat: Plat) -> None:
    _, _, session = plat.terminal("alice")
    terminal = SM2PrivateKey.generate()
    with plat.admin() as a:
        r = a.rotate_key(
            "alice", subject=SUBJECT, terminal_public_key=terminal.public_key().to_bytes()
        )
    key = EnvelopedKey.from_der(base64.b64decode(r["enveloped_key"])).open(terminal)
    assert key.public_key() == Certificate.from_pem(r["encryption_certificate"].encode()).public_key
    with Client(plat.url) as c:
        assert c.pending_keys(session) == []  # the caller has it: nothing to deliver
    with pytest.raises(DecryptionError):
        EnvelopedKey.from_der(base64.b64decode(r["enveloped_key"])).open(SM2PrivateKey.generate())


# ------------------------------------------------------------------------ migration --------
def test_migration_up_and_down(database_url: str) -> None:
    db = Database(database_url)
    try:
        migrate(db)
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005_boot")
        assert "key_deliveries" not in inspect(db.engine).get_table_names()
        assert "enc_keys" in inspect(db.engine).get_table_names()
        migrate(db)
        insp = inspect(db.engine)
        assert "key_deliveries" in insp.get_table_names()
        assert {c["name"] for c in insp.get_columns("key_deliveries")} == {
            "key_id",
            "owner",
            "cert_serial",
            "recipient_serial",
            "envelope",
            "created_at",
            "collected_at",
        }
    finally:
        db.dispose()

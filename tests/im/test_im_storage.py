"""The IMS's storage rules on SQLite and PostgreSQL (ImsService directly): what is
accepted, the per-group order under concurrent senders, history since joining, the
per-device queue and acknowledgements, and blob bookkeeping."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from http_helpers import make_kmc
from mstcrypt.apps.im import ImKeyVersionError, ImReplayError, ImSenderError, Text, seal
from mstcrypt.apps.im.service import ImsService
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import AccessDeniedError, PolicyError
from mstcrypt.kmc.context import NotFoundError
from mstcrypt.pki import build_csr, name


@pytest.fixture
def ims(database_url: str, tmp_path: Path) -> Iterator[tuple[ImsService, dict[str, Any]]]:
    kmc = make_kmc(database_url)
    keys = {}
    for who in ("alice", "bob", "carol"):
        key = SM2PrivateKey.generate()
        code, _ = kmc.create_enrollment_code(owner=who, subject={"CN": who}, actor="t")
        kmc.enroll(code, build_csr(name(CN=who), key.public_key(), key.sign).der)
        keys[who] = key
    kmc.create_group("g", ["alice", "bob"], actor="t")
    yield ImsService(kmc, tmp_path / "blobs"), keys
    kmc.db.dispose()


def env(
    keys: dict[str, Any], who: str, seq: int, *, version: int = 1, device: bytes = b"\x01" * 16
) -> bytes:
    return seal(
        Text(f"{who} {seq}"),
        group="g",
        key_version=version,
        group_key=b"k" * 16,  # the server never sees group keys: any key will do here
        sender=who,
        device=device,
        sender_public=keys[who].public_key(),
        sign=keys[who].sign,
        seq=seq,
        timestamp_ms=0,
    )


DEV = (b"\x01" * 16).hex()


def test_accept_order_history_queue(ims: tuple[ImsService, dict[str, Any]]) -> None:
    svc, keys = ims
    a = svc.accept("alice", DEV, env(keys, "alice", 1), keys["alice"].public_key())
    b = svc.accept("bob", DEV, env(keys, "bob", 1), keys["bob"].public_key())
    assert (a.prev, b.prev) == (0, a.pos) and b.pos > a.pos
    with pytest.raises(ImReplayError):
        svc.accept("alice", DEV, env(keys, "alice", 1))
    with pytest.raises(ImSenderError):
        svc.accept("alice", DEV, env(keys, "bob", 2))  # bob's envelope on alice's session
    with pytest.raises(ImSenderError):
        svc.accept("alice", DEV, env(keys, "alice", 2), keys["bob"].public_key())
    with pytest.raises(ImKeyVersionError):
        svc.accept("alice", DEV, env(keys, "alice", 2, version=2))
    with pytest.raises(NotFoundError):
        svc.accept("carol", DEV, env(keys, "carol", 1))  # not a member
    assert [s.pos for s in svc.history("bob", "g")] == [a.pos, b.pos]
    assert [s.pos for s in svc.pending("bob", DEV)] == [a.pos, b.pos]
    assert svc.ack("bob", DEV, "g", a.pos) == a.pos
    assert svc.ack("bob", DEV, "g", 0) == a.pos  # never backwards
    assert [s.pos for s in svc.pending("bob", DEV)] == [b.pos]
    assert [s.pos for s in svc.pending("bob", "02" * 16)] == [a.pos, b.pos]  # other device
    # carol joins at version 2: history and queue start there
    svc.kmc.change_group("g", add=["carol"], actor="t")
    c = svc.accept("alice", DEV, env(keys, "alice", 2, version=2))
    assert [s.pos for s in svc.history("carol", "g")] == [c.pos]
    assert [s.pos for s in svc.pending("carol", DEV)] == [c.pos]
    groups = svc.groups_of("alice", DEV)
    assert groups[0]["version"] == 2 and groups[0]["last_seq"] == 2
    for bad in ({"limit": 0}, {"limit": 501}, {"after": -1}):
        with pytest.raises(PolicyError):
            svc.history("bob", "g", **bad)
    with pytest.raises(PolicyError):
        svc.pending("bob", "not-a-device")


def test_stores_and_acks_commit_together(ims: tuple[ImsService, dict[str, Any]]) -> None:
    """The IMS writer's batch: envelopes and acknowledgements in one transaction, each
    item with its own result; a refused acknowledgement (not a member, a bad device or
    position) does not affect the others, and positions never move backwards within a
    batch either."""
    svc, keys = ims
    a = svc.accept("alice", DEV, env(keys, "alice", 1))
    e2 = svc.check("alice", DEV, env(keys, "alice", 2))
    stored, acked = svc.commit_batch(
        [(e2, "alice", DEV)],
        [
            ("bob", DEV, "g", a.pos),
            ("carol", DEV, "g", a.pos),  # not a member
            ("bob", "not-a-device", "g", a.pos),
            ("bob", DEV, "g", -1),
            ("bob", DEV, "g", 0),  # behind what this batch already acknowledged
            ("bob", DEV, "nope", 1),
        ],
    )
    assert not isinstance(stored[0], Exception) and stored[0].prev == a.pos
    assert acked[0] == a.pos and acked[4] == a.pos
    assert isinstance(acked[1], NotFoundError) and isinstance(acked[5], NotFoundError)
    assert isinstance(acked[2], PolicyError) and isinstance(acked[3], PolicyError)
    assert [s.pos for s in svc.pending("bob", DEV)] == [stored[0].pos]
    with pytest.raises(NotFoundError):
        svc.ack("carol", DEV, "g", 1)


def test_concurrent_senders_keep_group_order(ims: tuple[ImsService, dict[str, Any]]) -> None:
    """Stores into one group are serialised: every message's ``prev`` is exactly the
    group's previous position, whatever the interleaving."""
    svc, keys = ims
    out: list[Any] = []
    errors: list[BaseException] = []

    def run(who: str, device: bytes) -> None:
        try:
            for seq in range(1, 11):
                out.append(svc.accept(who, device.hex(), env(keys, who, seq, device=device)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(who, bytes([i]) * 16))
        for i, who in enumerate(("alice", "alice", "bob", "bob"), start=1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    chain = sorted(out, key=lambda s: s.pos)
    assert len(chain) == 40
    assert [s.prev for s in chain] == [0] + [s.pos for s in chain[:-1]]


def test_blob_bookkeeping(ims: tuple[ImsService, dict[str, Any]], tmp_path: Path) -> None:
    svc, _keys = ims
    blob = "ab" * 16
    part = svc.blob_begin("alice", "g", blob, 0)
    part.write_bytes(os.urandom(100))
    with pytest.raises(PolicyError):
        svc.blob_begin("alice", "g", blob, 5)  # resume at the wrong offset
    with pytest.raises(AccessDeniedError):
        svc.blob_begin("bob", "g", blob, 100)  # someone else's upload
    with pytest.raises(NotFoundError):
        svc.blob_open("bob", blob)  # incomplete
    assert svc.blob_finish("alice", blob) == 100
    path, size = svc.blob_open("bob", blob)
    assert size == 100 and path.read_bytes() == part.with_suffix(".blob").read_bytes()
    with pytest.raises(NotFoundError):
        svc.blob_open("carol", blob)  # not a member of the blob's group
    with pytest.raises(PolicyError):
        svc.blob_begin("alice", "g", "../../etc/passwd", 0)


def test_group_commit_refuses_items_not_the_batch(ims: tuple[ImsService, dict[str, Any]]) -> None:
    """One transaction for many envelopes: a duplicate id, a replayed sequence or a stale
    version inside the batch is refused on its own; the rest is stored in order."""
    from mstcrypt.apps.im import parse
    from mstcrypt.apps.im.service import Stored

    svc, keys = ims
    a1 = parse(env(keys, "alice", 1))
    a2 = parse(env(keys, "alice", 2))
    b1 = parse(env(keys, "bob", 1))
    stale = parse(env(keys, "bob", 2, version=7))
    out = svc.store_batch(
        [
            (a1, "alice", DEV),
            (a1, "alice", DEV),
            (b1, "bob", DEV),
            (stale, "bob", DEV),
            (a2, "alice", DEV),
        ]
    )
    assert isinstance(out[0], Stored) and isinstance(out[2], Stored) and isinstance(out[4], Stored)
    assert isinstance(out[1], ImReplayError) and isinstance(out[3], ImKeyVersionError)
    assert (out[0].prev, out[2].prev, out[4].prev) == (0, out[0].pos, out[2].pos)  # type: ignore[union-attr]
    assert [s.pos for s in svc.history("bob", "g")] == [out[0].pos, out[2].pos, out[4].pos]  # type: ignore[union-attr]

"""The terminal's sealed append-only store: a save costs one record, records are bound
to their place (reorder, removal, duplication, splicing refused), a torn last record
is dropped and reported, the old one-object format is migrated, compaction and GK
pruning. No platform needed: an SM2 identity in memory."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from mstcrypt.apps.im.store import SealedStore
from mstcrypt.apps.im.terminal import Identity
from mstcrypt.crypto import sm4
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import KeyStoreError


def ident(name: str = "alice") -> Identity:
    sk, ek = SM2PrivateKey.generate(), SM2PrivateKey.generate()
    return Identity(name, sk.sign, sk.public_key(), ek.decrypt, ek.public_key())


def msg(i: int, v: int = 1) -> dict[str, object]:
    return {"id": f"{i:032x}", "pos": i, "sender": "bob", "type": "text", "at": i, "v": v}


def lines(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines(keepends=True)


@pytest.fixture
def me() -> Identity:
    return ident()


def test_append_only_one_record_per_save(tmp_path: Path, me: Identity) -> None:
    p = tmp_path / "s"
    st = SealedStore(p, me)
    state = st.load()
    state.update(device="ab" * 16, seq={"g": 0}, messages={"g": []}, keys={"gk": {}})
    st.save(state)
    for i in range(1, 41):
        state["messages"]["g"].append(msg(i))
        state["seq"]["g"] = i
        before = p.stat().st_size
        head = p.read_bytes()
        st.save(state)
        grown = p.read_bytes()
        assert grown.startswith(head), "a save rewrote earlier bytes"
        assert p.stat().st_size - before < 600  # one message's worth, not the whole store
    st.save(state)  # nothing changed: nothing written
    assert len(lines(p)) == 1 + 1 + 1 + 40
    st.close(state)
    again = SealedStore(p, me)
    assert again.load() == state and again.tail == "clean"
    # the plaintext would show as JSON strings; the sealed records are base64, which
    # holds no quote (a bare b"bob" turns up in random base64 now and then)
    data = p.read_bytes()
    assert b'"bob"' not in data and b'"sender"' not in data and b'"g"' not in data
    # another token does not open it
    with pytest.raises(KeyStoreError):
        SealedStore(p, ident()).load()


def _store_with_records(p: Path, me: Identity, n: int) -> dict[str, object]:
    st = SealedStore(p, me)
    state = st.load()
    state["messages"] = {"g": []}
    for i in range(n):
        state["messages"]["g"].append(msg(i))  # type: ignore[index]
        st.save(state)
    st.close(state)
    return state


def test_reordered_removed_duplicated_records_refused(tmp_path: Path, me: Identity) -> None:
    p = tmp_path / "s"
    _store_with_records(p, me, 5)
    good = lines(p)
    attacks = {
        "reordered": [*good[:2], good[3], good[2], *good[4:]],
        "removed": good[:2] + good[3:],
        "duplicated": [*good[:3], good[2], *good[3:]],
        "header swapped": [good[0].replace(b'"id":"', b'"id":"0'), *good[1:]],
    }
    for what, ls in attacks.items():
        p.write_bytes(b"".join(ls))
        with pytest.raises(KeyStoreError):
            SealedStore(p, me).load()
            pytest.fail(what)
    # a record spliced in from another store of the same token does not authenticate
    other = tmp_path / "o"
    _store_with_records(other, me, 5)
    p.write_bytes(b"".join([*good[:3], lines(other)[3], *good[4:]]))
    with pytest.raises(KeyStoreError):
        SealedStore(p, me).load()
    # a flipped bit in a middle record
    bad = bytearray(good[2])
    bad[20] ^= 1 if bad[20] != ord("A") else 2
    p.write_bytes(b"".join([*good[:2], bytes(bad), *good[3:]]))
    with pytest.raises(KeyStoreError):
        SealedStore(p, me).load()


def test_torn_and_cut_tail_detected(tmp_path: Path, me: Identity) -> None:
    p = tmp_path / "s"
    state = _store_with_records(p, me, 5)
    good = lines(p)
    # a crash in the middle of the last append: dropped, reported, store usable
    p.write_bytes(b"".join(good[:-1]) + good[-1][:30])
    st = SealedStore(p, me)
    got = st.load()
    assert st.tail == "torn" and got["messages"] == state["messages"]
    got["messages"]["g"].append(msg(99))
    st.close(got)
    st2 = SealedStore(p, me)
    assert st2.load()["messages"]["g"][-1]["id"] == f"{99:032x}" and st2.tail == "clean"
    # records cut off the end (at a record boundary): no close marker
    p.write_bytes(b"".join(lines(p)[:3]))
    st3 = SealedStore(p, me)
    assert len(st3.load()["messages"]["g"]) == 1 and st3.tail == "unclosed"


def test_concurrent_writers_take_turns(tmp_path: Path, me: Identity) -> None:
    """A chat and a one-shot command on one store: each continues the other's chain."""
    p = tmp_path / "s"
    a, b = SealedStore(p, me), SealedStore(p, me)
    sa = a.load()
    sa["x"] = 1
    a.save(sa)
    sb = b.load()
    sa["y"] = 2
    a.save(sa)
    sb["z"] = 3
    b.save(sb)
    sa["w"] = 4
    a.save(sa)
    final = SealedStore(p, me).load()
    assert final == {"x": 1, "y": 2, "z": 3, "w": 4}
    # the other writer died in the middle of an append: the partial record is dropped
    with p.open("ab") as f:
        f.write(b"QUJDREVG")
    sb["u"] = 6
    b.save(sb)
    assert SealedStore(p, me).load() == {"x": 1, "y": 2, "z": 3, "w": 4, "u": 6}
    a.compact(sa)  # b's next append follows the compaction
    sb["v"] = 5
    b.save(sb)
    assert SealedStore(p, me).load() == {"x": 1, "y": 2, "w": 4, "v": 5}


def test_compaction_on_open_and_migration(tmp_path: Path, me: Identity) -> None:
    p = tmp_path / "s"
    st = SealedStore(p, me, compact_after=10)
    state = st.load()
    state["messages"] = {"g": []}
    for i in range(30):
        state["messages"]["g"].append(msg(i))
        st.save(state)
    assert len(lines(p)) > 30
    st2 = SealedStore(p, me, compact_after=10)
    assert st2.load() == state
    assert len(lines(p)) == 2  # header + snapshot
    # the old one-object format (mstcrypt-im-store-1) opens and is migrated
    old = tmp_path / "old"
    key = os.urandom(16)
    nonce = os.urandom(12)
    body = json.dumps({"device": "cd" * 16, "messages": {"g": [msg(1)]}}).encode()
    ct = sm4.gcm_encrypt(key, nonce, body, b"mstcrypt-im-v1 local store\x00alice")
    old.write_text(
        json.dumps(
            {
                "format": "mstcrypt-im-store-1",
                "key": base64.b64encode(me.enc_public.encrypt(key)).decode(),
                "nonce": nonce.hex(),
                "data": base64.b64encode(ct).decode(),
            }
        )
    )
    m = SealedStore(old, me)
    assert m.load()["device"] == "cd" * 16 and m.tail == "migrated"
    assert json.loads(lines(old)[0])["format"] == "mstcrypt-im-store-2"
    assert SealedStore(old, me).load()["messages"]["g"][0]["id"] == f"{1:032x}"
    with pytest.raises(KeyStoreError):
        SealedStore(old, ident()).load()


def test_prune_keeps_versions_retained_messages_need(tmp_path: Path, me: Identity) -> None:
    from mstcrypt.apps.im.terminal import ImClient

    class NoPlatform:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the platform was asked ({name})")

    p = tmp_path / "s"
    c = ImClient(
        "http://127.0.0.1:9", identity=me, platform=NoPlatform(), session_token="x", state_path=p
    )  # type: ignore[arg-type]
    c.state["keys"]["gk"].update(
        {f"g|{v}": f"{v:032x}" for v in range(1, 6)} | {f"h|{v}": f"{v:032x}" for v in (1, 2)}
    )
    c.state["messages"]["g"] = [msg(1, v=3), msg(2, v=4)]
    c.state["seen"]["g"] = 5
    c.state["current"]["h"] = 2
    assert c.prune_keys() == 3  # g|1, g|2 and h|1
    c.close()
    d = ImClient(
        "http://127.0.0.1:9", identity=me, platform=NoPlatform(), session_token="x", state_path=p
    )  # type: ignore[arg-type]
    assert sorted(d.state["keys"]["gk"]) == ["g|3", "g|4", "g|5", "h|2"]
    assert f"{1:032x}".encode() not in p.read_bytes()
    d.close()

"""Secure messaging end to end: SDK, KMC group keys and the IMS server (one instance,
local fan-out) — text and files, history, offline queue with per-device acks, and the
attacks: a removed member sending or reading, a joiner reading old messages, a forged
sender, a replay, a server that rewrites metadata, an oversized frame, a dropped upload."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from im_helpers import World, world

from mstcrypt.apps.im import (
    FileRef,
    ImDecryptError,
    ImError,
    ImKeyVersionError,
    ImReplayError,
    ImSenderError,
    ImSignatureError,
    Text,
    parse,
    seal,
)
from mstcrypt.apps.im.terminal import ImsError, Keyring, SealedStore
from mstcrypt.errors import KeyStoreError
from mstcrypt.server.ims import running_ims


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("im")
    with world(tmp) as wd:
        for name in ("alice", "bob", "carol", "dave"):
            wd.enroll(name)
        with wd.admin() as a:
            a.create_group("team", ["alice", "bob", "carol"])
        kmc = wd.kmc()
        with running_ims(kmc, blob_dir=tmp / "blobs") as url:
            wd.ims = url  # type: ignore[attr-defined]
            yield wd
        kmc.db.dispose()


def texts(items: list[Any]) -> list[str]:
    return [
        r.content.text for r in items if not isinstance(r, ImError) and isinstance(r.content, Text)
    ]


def test_text_round_trip_history_and_queue(w: World) -> None:
    alice, bob = w.im("alice", w.ims), w.im("bob", w.ims)  # type: ignore[attr-defined]
    groups = {g["group"]: g for g in alice.groups()}
    assert groups["team"]["members"] == ["alice", "bob", "carol"]
    p1 = alice.send_text("team", "hello team")
    p2 = alice.send_text("team", "second")
    assert p2 > p1
    got = bob.receive_pending()
    assert texts(got) == ["hello team", "second"] and all(r.sender == "alice" for r in got)
    assert bob.receive_pending() == []  # acknowledged per device
    # another device of bob's has its own queue
    bob2 = w.im("bob", w.ims, state=False)  # type: ignore[attr-defined]
    assert texts(bob2.receive_pending()) == ["hello team", "second"]
    hist = bob.history("team")
    assert texts(hist)[:2] == ["hello team", "second"]
    # the local store is sealed to bob's token
    raw = (w.tmp / "bob.imstate").read_bytes()
    assert b"hello team" not in raw and b"team|" not in raw
    assert any(m["content"].get("text") == "second" for m in bob.local_messages("team"))
    for c in (alice, bob, bob2):
        c.close()


def test_websocket_delivery(w: World) -> None:
    alice, carol = w.im("alice", w.ims), w.im("carol", w.ims)  # type: ignore[attr-defined]
    carol.receive_pending()
    import threading

    result: list[Any] = []
    t = threading.Thread(
        target=lambda: result.extend(carol.listen(until=lambda g: len(g) >= 2, timeout=10))
    )
    t.start()
    alice.send_text("team", "live one")
    alice.send_text("team", "live two")
    t.join(20)
    assert texts(result) == ["live one", "live two"]
    assert carol.receive_pending() == []  # acked over the WebSocket
    alice.close()
    carol.close()


def test_file_round_trip_and_blob_access(w: World, tmp_path: Path) -> None:
    alice, bob = w.im("alice", w.ims), w.im("bob", w.ims)  # type: ignore[attr-defined]
    bob.receive_pending()
    data = os.urandom(200_000)
    alice.send_file("team", io.BytesIO(data), name="plan.bin", caption="the plan")
    [r] = bob.receive_pending()
    assert isinstance(r, object) and not isinstance(r, ImError)
    ref = r.content
    assert isinstance(ref, FileRef) and ref.name == "plan.bin" and ref.size == len(data)
    out = io.BytesIO()
    bob.fetch_file(ref, out)
    assert out.getvalue() == data
    # the server holds only ciphertext
    stored = (w.tmp / "blobs" / f"{ref.blob}.blob").read_bytes()
    assert data[:64] not in stored and len(stored) == len(data) + 4 * 16
    # dave is no member: the blob is not his to fetch
    dave = w.im("dave", w.ims, state=False)  # type: ignore[attr-defined]
    with pytest.raises(ImsError) as e:
        dave.fetch_file(ref, io.BytesIO())
    assert e.value.status == 404
    for c in (alice, bob, dave):
        c.close()


def test_dropped_upload_resumes_or_fails_cleanly(w: World) -> None:
    alice = w.im("alice", w.ims, state=False)  # type: ignore[attr-defined]
    blob_id = "ab" * 16
    h = alice.http
    r = h.put(f"/im/blobs/{blob_id}", params={"group": "team", "offset": 0}, content=b"x" * 1000)
    assert r.status_code == 200 and r.json() == {"blob": blob_id, "size": 1000, "complete": False}
    # an incomplete blob is not served
    assert h.get(f"/im/blobs/{blob_id}").status_code == 404
    assert h.get(f"/im/blobs/{blob_id}/status").json()["size"] == 1000
    # resuming at the wrong offset is refused; at the right one it completes
    r = h.put(f"/im/blobs/{blob_id}", params={"group": "team", "offset": 10}, content=b"y")
    assert r.status_code == 409 and "resume at offset 1000" in r.json()["detail"]
    r = h.put(
        f"/im/blobs/{blob_id}",
        params={"group": "team", "offset": 1000, "final": "true"},
        content=b"y" * 24,
    )
    assert r.json() == {"blob": blob_id, "size": 1024, "complete": True}
    assert h.get(f"/im/blobs/{blob_id}").content == b"x" * 1000 + b"y" * 24
    # another member cannot append to alice's upload
    bob = w.im("bob", w.ims, state=False)  # type: ignore[attr-defined]
    r = bob.http.put(f"/im/blobs/{'cd' * 16}", params={"group": "nope", "offset": 0}, content=b"")
    assert r.status_code == 404
    alice.close()
    bob.close()


def test_membership_changes_forward_and_backward_secrecy(w: World) -> None:
    with w.admin() as a:
        a.create_group("ops", ["alice", "bob", "carol"])
    alice, bob, carol = (w.im(n, w.ims) for n in ("alice", "bob", "carol"))  # type: ignore[attr-defined]
    alice.send_text("ops", "before dave")
    assert texts(carol.receive_pending())[-1] == "before dave"
    old_carol_key = carol.keys.group_key("ops", 1)[1]
    # carol is removed, dave joins: the group key rotates
    with w.admin() as a:
        assert a.change_group("ops", add=["dave"], remove=["carol"])["version"] == 2
    # alice still holds v1 as current: the server says rekey, the SDK fetches v2 and reseals
    alice.send_text("ops", "after the change")
    env = parse(base64.b64decode(alice._call("GET", "/im/groups/ops/messages")[-1]["envelope"]))
    assert env.key_version == 2
    # carol cannot get the new key from the KMC, nor the message from the server
    with pytest.raises(ImKeyVersionError) as e:
        carol.keys.group_key("ops", 2)
    assert e.value.code == "key-not-available"
    with pytest.raises(ImsError) as e2:
        carol.history("ops")
    assert e2.value.status == 404
    assert "after the change" not in texts(carol.receive_pending())
    # even with the ciphertext in hand (a leak), her old key does not open it
    from mstcrypt.apps.im import open_envelope

    with pytest.raises(ImDecryptError):
        open_envelope(env, sender_public=alice.identity.sign_public, group_key=old_carol_key)
    # carol cannot send any more: with her old key version, or at all
    with pytest.raises((ImsError, ImKeyVersionError)):
        carol.send_text("ops", "I am still here")
    raw = seal(
        Text("sneaky"),
        group="ops",
        key_version=1,
        group_key=old_carol_key,
        sender="carol",
        device=carol.device,
        sender_public=carol.identity.sign_public,
        sign=carol.identity.sign,
        seq=99,
        timestamp_ms=0,
    )
    r = carol.http.post("/im/messages", content=raw)
    assert r.status_code == 404
    # dave reads what came after his joining, and nothing before
    dave = w.im("dave", w.ims)  # type: ignore[attr-defined]
    assert texts(dave.history("ops")) == ["after the change"]
    assert texts(dave.receive_pending()) == ["after the change"]
    with pytest.raises(ImKeyVersionError):
        dave.keys.group_key("ops", 1)
    # bob follows the rotation
    assert texts(bob.receive_pending())[-1] == "after the change"
    for c in (alice, bob, carol, dave):
        c.close()


def test_server_side_refusals(w: World) -> None:
    alice, bob = w.im("alice", w.ims, state=False), w.im("bob", w.ims, state=False)  # type: ignore[attr-defined]
    alice.groups()
    v, gk = alice.keys.group_key("team")
    seq = alice.state["seq"]["team"] + 1

    def env(**kw: Any) -> bytes:
        args: dict[str, Any] = dict(
            group="team",
            key_version=v,
            group_key=gk,
            sender="alice",
            device=alice.device,
            sender_public=alice.identity.sign_public,
            sign=alice.identity.sign,
            seq=seq,
            timestamp_ms=0,
        )
        args.update(kw)
        return seal(Text("x"), **args)

    def post(raw: bytes, who: Any = alice) -> httpx.Response:
        return who.http.post("/im/messages", content=raw)

    # a sender other than the session's owner (bob posting an envelope that names alice)
    r = post(env(device=bob.device), bob)
    assert r.status_code == 403 and r.json()["code"] == "not-the-session-owner"
    # alice's session, but the envelope signed by bob's key in alice's name
    r = post(env(sign=bob.identity.sign))
    assert r.status_code == 403 and r.json()["code"] == "bad-signature"
    # the wrong group key version
    r = post(env(key_version=v + 5))
    assert r.status_code == 409 and r.json()["code"] == "rekey"
    # another device id than the session's
    r = post(env(device=b"\x01" * 16))
    assert r.status_code == 403 and r.json()["code"] == "wrong-device"
    ok = env()
    assert post(ok).status_code == 200
    r = post(ok)  # replayed
    assert r.status_code == 409 and r.json()["code"] in ("out-of-order", "replayed")
    r = post(env(seq=seq))  # same sequence, new message id
    assert r.status_code == 409 and r.json()["code"] == "out-of-order"
    # oversized and malformed bodies
    r = alice.http.post("/im/messages", content=b"\x00" * 70_000)
    assert r.status_code == 409
    r = alice.http.post("/im/messages", content=b"garbage")
    assert r.status_code == 400 and r.json()["code"] == "bad-magic"
    # no session, a bad session, a bad device header
    assert httpx.post(w.ims + "/im/messages", content=ok).status_code == 401  # type: ignore[attr-defined]
    r = httpx.get(
        w.ims + "/im/groups",
        headers={"Authorization": "Bearer MST1.x.y", "X-MST-Device": "00" * 16},
    )  # type: ignore[attr-defined]
    assert r.status_code == 401
    r = httpx.get(
        w.ims + "/im/groups",
        headers={"Authorization": f"Bearer {alice._token}", "X-MST-Device": "zz"},
    )  # type: ignore[attr-defined]
    assert r.status_code == 409
    alice.close()
    bob.close()


def test_reader_refuses_what_a_malicious_server_delivers(w: World) -> None:
    """The server (or anyone on the path) rewrites metadata, replays, forges a sender:
    the reader's checks refuse every one."""
    alice, bob = w.im("alice", w.ims, state=False), w.im("bob", w.ims, state=False)  # type: ignore[attr-defined]
    alice.groups()
    v, gk = alice.keys.group_key("team")
    good = seal(
        Text("genuine"),
        group="team",
        key_version=v,
        group_key=gk,
        sender="alice",
        device=alice.device,
        sender_public=alice.identity.sign_public,
        sign=alice.identity.sign,
        seq=1,
        timestamp_ms=0,
    )
    assert bob.open(good, 1).content == Text("genuine")
    with pytest.raises(ImReplayError):
        bob.open(good, 2)  # replayed by the server
    # on the receive paths a message already accepted is not shown twice (at-least-once
    # delivery when an acknowledgement was lost); a reordered one is still reported
    frame = {"group": "team", "pos": 1, "envelope": base64.b64encode(good).decode()}
    assert bob._consume([frame]) == []
    # metadata rewritten: the claimed timestamp
    e = parse(good)
    bad = good[: len(e.header) - 8] + b"\x00" * 7 + b"\x01" + good[len(e.header) :]
    with pytest.raises(ImSignatureError):
        bob.open(bad, 3)
    # a forged sender: dave (not a member, but certified) signs in alice's name
    dave = w.members["dave"].identity
    forged = seal(
        Text("from alice, honest"),
        group="team",
        key_version=v,
        group_key=gk,
        sender="alice",
        device=alice.device,
        sender_public=dave.sign_public,
        sign=dave.sign,
        seq=5,
        timestamp_ms=0,
    )
    with pytest.raises(ImSenderError) as ex:
        bob.open(forged, 4)
    assert ex.value.code == "wrong-sender-key"
    # a stale key version after the reader learned a newer one
    bob.state["seen"]["team"] = v + 1
    stale = seal(
        Text("old key"),
        group="team",
        key_version=v,
        group_key=gk,
        sender="alice",
        device=alice.device,
        sender_public=alice.identity.sign_public,
        sign=alice.identity.sign,
        seq=9,
        timestamp_ms=0,
    )
    with pytest.raises(ImKeyVersionError) as ex2:
        bob.open(stale, 5)
    assert ex2.value.code == "stale-key-version"
    alice.close()
    bob.close()


def test_key_cache_sealed_to_the_token(w: World, tmp_path: Path) -> None:
    alice = w.members["alice"]
    from im_helpers import _Keys

    store = SealedStore(tmp_path / "keys", alice.identity)
    state = store.load()
    ring = Keyring(alice.identity, _Keys(w.client()), alice.session, state)
    v, gk = ring.group_key("team")
    store.save(state)
    assert gk.hex() not in (tmp_path / "keys").read_text()

    # reopened with the token: the key comes from the cache, no KMC call
    class NoKmc:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError("the KMC was asked")

    ring2 = Keyring(
        alice.identity,
        NoKmc(),
        alice.session,
        SealedStore(tmp_path / "keys", alice.identity).load(),
    )  # type: ignore[arg-type]
    assert ring2.group_key("team", v) == (v, gk)
    # another member's token does not open it
    with pytest.raises(KeyStoreError):
        SealedStore(tmp_path / "keys", w.members["bob"].identity).load()
    assert "team" not in repr(ring2) and gk.hex() not in repr(ring2)


def test_rejoining_member_gets_only_keys_from_the_new_joining(w: World) -> None:
    """KMC rules the terminal relies on: a member who leaves and comes back gets no key
    of the time between (nor of the earlier membership); the KMC serves the session's
    owner only."""
    with w.admin() as a:
        a.create_group("rejoin", ["alice", "bob", "carol"])
    alice, bob = w.im("alice", w.ims), w.im("bob", w.ims)  # type: ignore[attr-defined]
    alice.send_text("rejoin", "v1 message")
    assert bob.keys.group_key("rejoin")[0] == 1
    with w.admin() as a:
        assert a.change_group("rejoin", remove=["bob"])["version"] == 2
    alice.send_text("rejoin", "while bob was away")
    with w.admin() as a:
        assert a.change_group("rejoin", add=["bob"])["version"] == 3
    alice.send_text("rejoin", "bob is back")
    # a fresh device of bob's (no cached keys): v3 only
    bob2 = w.im("bob", w.ims, state=False)  # type: ignore[attr-defined]
    for v in (1, 2):
        with pytest.raises(ImKeyVersionError):
            bob2.keys.group_key("rejoin", v)
    assert bob2.keys.group_key("rejoin")[0] == 3
    assert texts(bob2.history("rejoin")) == ["bob is back"]
    # the group key route answers for the token's owner only: bob's session, alice's name
    # is not a parameter anywhere — the answer is bob's, wrapped under bob's KDK
    with w.client() as c:
        d = c.group_key(w.members["bob"].session, "rejoin")
        assert d["member"] == "bob"
        from mstcrypt.client import ServiceError

        with pytest.raises(ServiceError) as e:
            c.group_key("MST1.forged.token", "rejoin")
        assert e.value.status == 401
    for cl in (alice, bob, bob2):
        cl.close()

"""The IM envelope (docs/im-format.md): round trips, an independent writer built from
the spec, a stored vector, and every refusal of §6 — tampering, a wrong group key
version, a forged sender, replay and reorder, malformed structure and payloads."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest

from mstcrypt.apps.im import (
    MAX_ENVELOPE,
    ContentType,
    Delete,
    Edit,
    FileRef,
    ImContentError,
    ImDecryptError,
    ImFormatError,
    ImReplayError,
    ImSenderError,
    ImSignatureError,
    Location,
    Poll,
    Reaction,
    Reply,
    SequenceTracker,
    Text,
    Vote,
    key_id,
    open_envelope,
    parse,
    seal,
)
from mstcrypt.apps.im import blob as imblob
from mstcrypt.apps.im.errors import FORMAT_CODES
from mstcrypt.crypto import sm4
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecodeError, DecryptionError, VerificationError

VECTOR = Path(__file__).parent / "im_envelope_vector.json"
ALICE = SM2PrivateKey.generate()
MALLORY = SM2PrivateKey.generate()
GK1, GK2 = os.urandom(16), os.urandom(16)
DEV = bytes(range(16))
REF = bytes.fromhex("00112233445566778899aabbccddeeff")


def mk(content=None, *, key=ALICE, sender="alice", gk=GK1, version=1, seq=1, **kw):  # type: ignore[no-untyped-def]
    return seal(
        content or Text("hello group"),
        group=kw.pop("group", "g1"),
        key_version=version,
        group_key=gk,
        sender=sender,
        device=kw.pop("device", DEV),
        sender_public=kw.pop("public", key.public_key()),
        sign=key.sign,
        seq=seq,
        timestamp_ms=kw.pop("ts", 1_764_460_800_000),
        **kw,
    )


def opened(raw: bytes, gk: bytes = GK1):  # type: ignore[no-untyped-def]
    return open_envelope(raw, sender_public=ALICE.public_key(), group_key=gk)


CONTENTS = [
    Text("hello 你好 👋\nsecond line"),
    Text("x" * 16384),
    FileRef(
        name="report.pdf",
        media_type="application/pdf",
        size=123456,
        blob="ab" * 16,
        key=os.urandom(16),
        digest=os.urandom(32),
        caption="Q3",
    ),
    FileRef(
        name="voice.ogg",
        media_type="audio/ogg",
        size=0,
        blob="cd" * 16,
        key=b"k" * 16,
        digest=b"d" * 32,
    ),
    Reply(REF, "agreed"),
    Edit(REF, "fixed typo"),
    Delete(REF),
    Reaction(REF, "👍"),
    Reaction(REF, "👍", remove=True),
    Poll("lunch?", ("noodles", "dumplings", "rice")),
    Vote(REF, 2),
    Location(39.9042, 116.4074, "Beijing"),
    Location(-90, 180),
]


@pytest.mark.parametrize("content", CONTENTS, ids=lambda c: type(c).__name__)
def test_round_trip_every_content_type(content) -> None:  # type: ignore[no-untyped-def]
    raw = mk(content)
    env = parse(raw)
    assert env.content_type is content.TYPE and env.raw == raw
    assert (env.group, env.key_version, env.sender, env.device, env.seq) == (
        "g1",
        1,
        "alice",
        DEV,
        1,
    )
    assert env.sender_key == key_id(ALICE.public_key())
    msg = opened(raw)
    assert msg.content == content and msg.sender == "alice"
    # the ciphertext length hides the text length to 32 bytes
    assert (len(env.body) - 16) % 32 == 0


def test_fresh_session_key_and_nonces_per_message() -> None:
    a, b = parse(mk()), parse(mk())
    assert a.wrapped_key != b.wrapped_key and a.body != b.body and a.message_id != b.message_id
    assert a.wrap_nonce != b.wrap_nonce and a.body_nonce != b.body_nonce


def test_no_secret_or_plaintext_in_reprs() -> None:
    f = CONTENTS[2]
    assert f.key.hex() not in repr(f) and "report.pdf" in repr(f)
    env = parse(mk(Text("the secret plan")))
    assert "secret plan" not in repr(env)


# --- an independent writer, straight from docs/im-format.md §3 -----------------------------
def spec_envelope(
    payload_json: bytes,
    *,
    ctype: int = 1,
    sk: bytes = b"S" * 16,
    gk: bytes = GK1,
    signer: SM2PrivateKey = ALICE,
    pad: bool = True,
    header_patch: bytes | None = None,
) -> bytes:
    group, sender = b"g1", b"alice"
    header = (
        b"\x89MIM"
        + bytes([1, ctype, 0, len(group)])
        + group
        + struct.pack(">I", 1)
        + bytes([len(sender)])
        + sender
        + DEV
        + sm3(b"\x04" + signer.public_key().to_bytes()[1:])
        + REF
        + struct.pack(">QQ", 7, 1_764_460_800_000)
    )
    if header_patch is not None:
        header = header_patch
    body_pt = payload_json
    if pad:
        body_pt += b"\x80" + b"\x00" * (-(len(payload_json) + 1) % 32)
    wn, bn = b"\x01" * 12, b"\x02" * 12
    wrapped = sm4.gcm_encrypt(gk, wn, sk, b"mstcrypt-im-v1 session key\x00" + header)
    body = sm4.gcm_encrypt(sk, bn, body_pt, b"mstcrypt-im-v1 body\x00" + header)
    signed = header + wn + wrapped + bn + struct.pack(">I", len(body)) + body
    sig = signer.sign(b"mstcrypt-im-v1 envelope\x00" + signed)
    return signed + bytes([len(sig)]) + sig


def test_independent_writer_is_read() -> None:
    raw = spec_envelope(b'{"text":"from the spec"}')
    msg = opened(raw)
    assert msg.content == Text("from the spec") and msg.envelope.seq == 7
    assert msg.message_id == REF


def test_stored_vector() -> None:
    """A fixed envelope (written once by the independent writer with fixed keys): the
    format may not change silently."""
    v = json.loads(VECTOR.read_text())
    pub = SM2PrivateKey.from_bytes(bytes.fromhex(v["signing_private_key"])).public_key()
    msg = open_envelope(
        bytes.fromhex(v["envelope"]), sender_public=pub, group_key=bytes.fromhex(v["group_key"])
    )
    assert msg.content == Text(v["text"]) and msg.envelope.group == v["group"]
    assert msg.envelope.key_version == v["key_version"] and msg.envelope.seq == v["seq"]


# --- structure (§6 step 1) -------------------------------------------------------------
def _patch(raw: bytes, offset: int, new: bytes) -> bytes:
    return raw[:offset] + new + raw[offset + len(new) :]


def malformed() -> list[tuple[str, bytes]]:
    raw = mk()
    g_end = 8 + 2  # "g1"
    s_off = g_end + 5  # sender starts after key_version and sender_len
    seq_off = s_off + 5 + 16 + 32 + 16
    body_len_off = seq_off + 16 + 12 + 32 + 12
    return [
        ("truncated", b""),
        ("truncated", raw[:7]),
        ("truncated", raw[:-1]),
        ("truncated", raw[: body_len_off + 10]),
        ("bad-magic", _patch(raw, 0, b"\x89MIX")),
        ("unsupported-version", _patch(raw, 4, b"\x02")),
        ("bad-content-type", _patch(raw, 5, b"\x00")),
        ("bad-content-type", _patch(raw, 5, b"\x0a")),
        ("bad-flags", _patch(raw, 6, b"\x01")),
        ("bad-group", _patch(raw, 7, b"\x00")),
        ("bad-group", _patch(raw, 8, b"\xff\xfe")),
        ("bad-group", _patch(raw, 8, b"g\x07")),
        ("bad-key-version", _patch(raw, g_end, b"\x00\x00\x00\x00")),
        ("bad-key-version", _patch(raw, g_end, b"\x80\x00\x00\x00")),
        ("bad-sender", _patch(raw, g_end + 4, b"\x00")),
        ("bad-sender", _patch(raw, s_off, b"\xc3(")),
        ("bad-sender", _patch(raw, s_off, b" ")),
        ("bad-sequence", _patch(raw, seq_off, bytes(8))),
        ("bad-sequence", _patch(raw, seq_off, b"\x80" + bytes(7))),
        ("bad-timestamp", _patch(raw, seq_off + 8, b"\xff" * 8)),
        ("bad-body-length", _patch(raw, body_len_off, struct.pack(">I", 16))),
        ("bad-body-length", _patch(raw, body_len_off, struct.pack(">I", 47))),
        ("bad-body-length", _patch(raw, body_len_off, struct.pack(">I", 65536 + 48))),
        ("bad-signature-length", raw[: parse(raw).signed.__len__()] + b"\x07" + b"\x00" * 7),
        ("bad-signature-length", raw[: len(parse(raw).signed)] + b"\x49" + b"\x00" * 73),
        ("trailing-data", raw + b"\x00"),
        ("too-large", raw + b"\x00" * MAX_ENVELOPE),
    ]


@pytest.mark.parametrize("code,raw", malformed(), ids=[c for c, _ in malformed()])
def test_malformed_refused(code: str, raw: bytes) -> None:
    assert code in FORMAT_CODES
    with pytest.raises(ImFormatError) as e:
        parse(raw)
    assert e.value.code == code and isinstance(e.value, DecodeError)
    with pytest.raises(ImFormatError):
        opened(raw)


def test_not_bytes_refused() -> None:
    with pytest.raises(ImFormatError):
        parse("text")  # type: ignore[arg-type]


# --- attacks ---------------------------------------------------------------------------
def test_tampering_any_byte_is_refused() -> None:
    """Flip one bit in each byte of the envelope: every single change is refused with a
    typed error (structure, signature), never accepted and never a crash."""
    raw = mk(Text("pay 100"))
    for i in range(len(raw)):
        bad = _patch(raw, i, bytes([raw[i] ^ 0x01]))
        with pytest.raises((ImFormatError, ImSignatureError, ImSenderError)):
            opened(bad)


def test_tampered_ciphertext_resigned_still_fails() -> None:
    """Even a party holding the sender's key cannot swap a body or a wrapped key between
    envelopes: GCM binds both to the header."""
    a, b = parse(mk(Text("one"))), parse(mk(Text("two")))
    # b's body under a's header, re-signed
    swapped = spec_resign(a.header + a.wrap_nonce + a.wrapped_key + b.body_nonce, b.body)
    with pytest.raises(ImDecryptError) as e:
        opened(swapped)
    assert e.value.code == "body-auth-failed" and isinstance(e.value, DecryptionError)
    moved = spec_resign(a.header + b.wrap_nonce + b.wrapped_key + b.body_nonce, b.body)
    with pytest.raises(ImDecryptError) as e:
        opened(moved)
    assert e.value.code == "key-unwrap-failed"
    flipped = bytearray(a.body)
    flipped[3] ^= 0x80
    with pytest.raises(ImDecryptError) as e:
        opened(spec_resign(a.header + a.wrap_nonce + a.wrapped_key + a.body_nonce, bytes(flipped)))
    assert e.value.code == "body-auth-failed"


def spec_resign(prefix: bytes, body: bytes) -> bytes:
    signed = prefix + struct.pack(">I", len(body)) + body
    sig = ALICE.sign(b"mstcrypt-im-v1 envelope\x00" + signed)
    return signed + bytes([len(sig)]) + sig


def test_wrong_group_key_version() -> None:
    """An envelope claiming GK v2 but wrapped under v1 (or read with the wrong key)."""
    raw = mk(gk=GK1, version=2)
    with pytest.raises(ImDecryptError) as e:
        opened(raw, GK2)
    assert e.value.code == "key-unwrap-failed"
    with pytest.raises(ImDecryptError):
        opened(mk(gk=GK1, version=1), GK2)
    assert opened(mk(gk=GK2, version=2), GK2).envelope.key_version == 2


def test_forged_sender() -> None:
    # Mallory signs with her key and names alice as the sender: the reader looks up
    # alice's certified key, and the key id does not match
    forged = mk(key=MALLORY, sender="alice")
    with pytest.raises(ImSenderError) as e:
        opened(forged)
    assert e.value.code == "wrong-sender-key" and isinstance(e.value, VerificationError)
    # ... and naming alice's key id does not help: the signature is Mallory's
    forged = mk(key=MALLORY, sender="alice", public=ALICE.public_key())
    with pytest.raises(ImSignatureError) as e2:
        opened(forged)
    assert e2.value.code == "bad-signature"


def test_server_cannot_retarget_or_rewrite_metadata() -> None:
    """A server that changes the group, the sender, the timestamp or the content type
    breaks the signature (and both tags)."""
    raw = mk(Reply(REF, "yes"))
    env = parse(raw)
    for off, new in ((8, b"g2"), (5, bytes([ContentType.TEXT])), (len(env.header) - 1, b"\x01")):
        with pytest.raises(ImSignatureError):
            opened(_patch(raw, off, new))


def test_replay_and_reorder_detected() -> None:
    t = SequenceTracker()
    m1, m2, m3, m5 = (parse(mk(seq=s)) for s in (1, 2, 3, 5))
    assert t.accept(m1) == 0 and t.accept(m2) == 0
    with pytest.raises(ImReplayError) as e:
        t.accept(m2)  # replay
    assert e.value.code == "replayed"
    assert t.accept(m3) == 0
    assert t.accept(m5) == 1  # seq 4 missing: a gap the user is told about
    late4 = parse(mk(seq=4))
    with pytest.raises(ImReplayError) as e:
        t.accept(late4)  # reordered by the server
    assert e.value.code == "out-of-order"
    # a second device of the same user counts on its own
    assert t.accept(parse(mk(seq=1, device=b"\x99" * 16))) == 0
    # the state survives a restart of the reader
    t2 = SequenceTracker(t.state())
    with pytest.raises(ImReplayError):
        t2.accept(parse(mk(seq=5)))


# --- payloads (§5) ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload,ctype",
    [
        (b'{"text":"a","text":"b"}', 1),  # duplicate key
        (b'{"text":"a","x":1}', 1),  # unknown key
        (b"{}", 1),  # missing key
        (b'{"text":""}', 1),
        (b'{"text":"a\\u0000b"}', 1),
        (b'{"text":1}', 1),
        (b'["text"]', 1),
        (b"not json", 1),
        (b'{"text":"\xff"}', 1),
        (b'{"lat":NaN,"lon":0,"label":""}', 9),
        (b'{"lat":91,"lon":0}', 9),
        (b'{"lat":true,"lon":0}', 9),
        (b'{"ref":"00","text":"a"}', 3),
        (b'{"ref":"' + b"A" * 32 + b'","text":"a"}', 3),
        (b'{"ref":"' + b"0" * 32 + b'","choice":16}', 8),
        (b'{"ref":"' + b"0" * 32 + b'","choice":1.0}', 8),
        (b'{"question":"q","options":["a","a"]}', 7),
        (b'{"question":"q","options":["a"]}', 7),
        (b'{"ref":"' + b"0" * 32 + b'","emoji":"x","remove":1}', 6),
    ],
)
def test_bad_payloads_refused(payload: bytes, ctype: int) -> None:
    with pytest.raises(ImContentError) as e:
        opened(spec_envelope(payload, ctype=ctype))
    assert e.value.code == "bad-content"


def test_bad_file_payloads() -> None:
    good = {
        "name": "a.txt",
        "media_type": "text/plain",
        "size": 1,
        "blob": "00" * 16,
        "key": "11" * 16,
        "digest": "22" * 32,
    }
    assert isinstance(opened(spec_envelope(json.dumps(good).encode(), ctype=2)).content, FileRef)
    for k, v in (
        ("name", "../etc/passwd"),
        ("name", ""),
        ("media_type", "Text/Plain"),
        ("media_type", "text"),
        ("size", -1),
        ("size", 2**41),
        ("key", "11" * 15),
        ("digest", "zz" * 32),
        ("blob", "00" * 17),
    ):
        with pytest.raises(ImContentError):
            opened(spec_envelope(json.dumps({**good, k: v}).encode(), ctype=2))


def test_bad_padding_refused() -> None:
    for payload, pad in ((b'{"text":"a"}', False), (b'{"text":"a"}\x80' + b"\x01" * 18, False)):
        with pytest.raises(ImContentError) as e:
            opened(spec_envelope(payload.ljust(32, b"\x00") if not pad else payload, pad=pad))
        assert e.value.code == "bad-padding"


def test_oversized_content_refused_when_writing() -> None:
    with pytest.raises(ImContentError):
        Text("x" * 16385)
    with pytest.raises(ImContentError):
        Poll("q", tuple(str(i) for i in range(17)))


# --- blobs (§4) ------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, imblob.CHUNK - 1, imblob.CHUNK, 2 * imblob.CHUNK + 5])
def test_blob_round_trip(n: int) -> None:
    data = os.urandom(n)
    s = imblob.BlobSealer(io.BytesIO(data))
    ct = b"".join(s)
    assert len(ct) == imblob.blob_size(n) and s.size == n and s.digest == sm3(data)
    out = io.BytesIO()
    src = io.BytesIO(ct)
    imblob.open_blob(src.read, out.write, blob_id=s.blob_id, key=s.key, size=n, digest=s.digest)
    assert out.getvalue() == data


def test_blob_attacks() -> None:
    data = os.urandom(2 * imblob.CHUNK + 100)
    s = imblob.BlobSealer(io.BytesIO(data))
    ct = b"".join(s)
    c = imblob.CHUNK + 16

    def read(blob: bytes, **kw: object) -> None:
        args = {"blob_id": s.blob_id, "key": s.key, "size": len(data), "digest": s.digest, **kw}
        imblob.open_blob(io.BytesIO(blob).read, lambda b: None, **args)  # type: ignore[arg-type]

    with pytest.raises(ImFormatError):  # truncated mid-upload
        read(ct[: c + 10])
    with pytest.raises(ImDecryptError):  # chunks swapped
        read(ct[c : 2 * c] + ct[:c] + ct[2 * c :])
    with pytest.raises(ImDecryptError):  # dropped final chunk, claiming a shorter file
        read(ct[: 2 * c], size=2 * imblob.CHUNK)
    with pytest.raises(ImFormatError):  # trailing bytes
        read(ct + b"\x00")
    with pytest.raises(ImDecryptError):  # another blob's id
        read(ct, blob_id="ff" * 16)
    with pytest.raises(ImDecryptError):  # a different file (digest named in the message)
        read(ct, digest=b"\x00" * 32)
    flipped = bytearray(ct)
    flipped[5] ^= 1
    with pytest.raises(ImDecryptError):
        read(bytes(flipped))

"""apps.mail offline: sign-then-envelope round trips for several recipients and the
sender, protected headers, streamed attachments, every check on opening, and the
attacks of issue 13 (tampering, From not the signer, revoked or untrusted signer,
recipient not in the envelope, truncated MIME, header injection)."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from mailkit import DOMAIN, User, mailkit

from mstcrypt import pki
from mstcrypt.apps import mail
from mstcrypt.apps.mail.message import read_outer
from mstcrypt.apps.mail.mime import Attachment, InnerMessage, b64_length
from mstcrypt.apps.mail.store import LocalStore
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import DecryptionError, KeyStoreError, PolicyError

MARK_SUBJECT = "SUBJ-MARKER-7f3a"
MARK_BODY = "BODY-MARKER-91c2"
MARK_FILE = b"FILE-MARKER-55e0"
MARK_NAME = "NAME-MARKER-0b1d.txt"


def _attachment(tmp_path: Path, size: int = 50_000, name: str = MARK_NAME) -> Attachment:
    p = tmp_path / name
    p.write_bytes((MARK_FILE + b"\n") * (size // (len(MARK_FILE) + 1)) + b"x" * (size % 17))
    return Attachment.from_path(p)


def _compose(
    tmp_path: Path,
    sender: User,
    to: list[User],
    *,
    inner: InnerMessage | None = None,
    attachments: list[Attachment] | None = None,
) -> bytes:
    inner = inner or InnerMessage(
        sender=sender.address,
        to=[u.address for u in to],
        subject=f"{MARK_SUBJECT} 季度报告",
        text=f"{MARK_BODY}\n你好",
        attachments=attachments if attachments is not None else [_attachment(tmp_path)],
    )
    out = io.BytesIO()
    mail.compose(out, sender.identity, inner, [u.identity.encryption_certificate for u in to])
    return out.getvalue()


def _open(raw: bytes, user: User, save: Path | None = None, **kw):  # type: ignore[no-untyped-def]
    return mail.open_message(
        io.BytesIO(raw), user.identity, validator=mailkit().validator(), save_dir=save, **kw
    )


def test_several_recipients_and_sender_read_it(tmp_path: Path) -> None:
    k = mailkit()
    att = _attachment(tmp_path)
    raw = _compose(tmp_path, k.alice, [k.bob, k.carol], attachments=[att])
    for user in (k.bob, k.carol, k.alice):  # the sender's copy stays readable
        save = tmp_path / f"save-{user.address}"
        r = _open(raw, user, save)
        assert r.trusted
        assert [c.name for c in r.checks] == [
            "envelope",
            "signature",
            "certificate",
            "revocation",
            "sender",
            "addressed",
        ]
        assert r.headers["Subject"] == f"{MARK_SUBJECT} 季度报告"
        assert r.headers["From"] == k.alice.address
        assert r.text == f"{MARK_BODY}\n你好"
        assert r.outer["Subject"] == mail.SUBJECT_PLACEHOLDER
        assert [a.filename for a in r.attachments] == [MARK_NAME]
        assert r.saved == [save / MARK_NAME]
        assert (save / MARK_NAME).read_bytes() == att.path.read_bytes()
        assert r.signer is not None and r.signer.der == k.alice.identity.sign_certificate.der
        assert r.signing_time is not None


def test_wire_form_holds_no_plaintext(tmp_path: Path) -> None:
    k = mailkit()
    raw = _compose(tmp_path, k.alice, [k.bob])
    outer = read_outer(io.BytesIO(raw))
    assert outer["Subject"] == "..." and outer["From"] == k.alice.address
    assert outer.get_content_type() == "application/pkcs7-mime"
    body = raw.split(b"\r\n\r\n", 1)[1]
    decoded = base64.b64decode(body)
    for marker in (MARK_SUBJECT.encode(), MARK_BODY.encode(), MARK_FILE, MARK_NAME.encode()):
        assert marker not in raw and marker not in decoded
    # base64 lines of 76 characters, CRLF
    lines = body.split(b"\r\n")
    assert all(len(line) == 76 for line in lines[:-2]) and lines[-1] == b""


def test_exact_lengths() -> None:
    for n in (0, 1, 56, 57, 58, 114, 1000, 57 * 1024 + 5):
        assert b64_length(n) == len(b"".join(
            base64.b64encode(bytes(n)[i : i + 57]) + b"\r\n" for i in range(0, n, 57)
        ))  # fmt: skip


def test_recipient_not_in_envelope(tmp_path: Path) -> None:
    k = mailkit()
    raw = _compose(tmp_path, k.alice, [k.bob])
    with pytest.raises(DecryptionError, match=r"dave@example\.gov\.cn is not a recipient"):
        _open(raw, k.dave)


def test_tampered_ciphertext_is_refused_and_nothing_saved(tmp_path: Path) -> None:
    k = mailkit()
    raw = _compose(tmp_path, k.alice, [k.bob])
    head, body = raw.split(b"\r\n\r\n", 1)
    der = bytearray(base64.b64decode(body))
    der[len(der) // 2] ^= 0x01  # inside the attachment's ciphertext
    b64 = base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n")
    save = tmp_path / "save"
    with pytest.raises((mail.MailVerificationError, mail.MailFormatError)):
        _open(head + b"\r\n\r\n" + b64, k.bob, save)
    assert not save.exists() or not any(save.iterdir())


def test_truncated_wire_message(tmp_path: Path) -> None:
    k = mailkit()
    raw = _compose(tmp_path, k.alice, [k.bob])
    with pytest.raises(mail.MailFormatError):
        _open(raw[: len(raw) - 300], k.bob)


class _Unclosed(InnerMessage):
    """A protected message whose multipart body has no closing boundary."""

    def __init__(self, **kw):  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self._close = b""


def test_truncated_mime_is_refused(tmp_path: Path) -> None:
    k = mailkit()
    inner = _Unclosed(sender=k.alice.address, to=[k.bob.address], subject="s", text="t")
    raw = _compose(tmp_path, k.alice, [k.bob], inner=inner)
    with pytest.raises(mail.MailFormatError, match="ends before its closing boundary"):
        _open(raw, k.bob)


def test_from_not_matching_signer_is_refused(tmp_path: Path) -> None:
    """Dave signs with his own (valid) certificate a message claiming to be from
    alice: signature, chain and CRL are fine, the sender check is not."""
    k = mailkit()
    inner = InnerMessage(sender=k.alice.address, to=[k.bob.address], subject="s", text="t")
    forger = User(
        mail.MailIdentity(
            k.alice.address,  # what the forger claims
            k.dave.identity.sign_certificate,
            k.dave.sign_key.sign_digest,
            k.dave.identity.encryption_certificate,
            k.dave.enc_key.decrypt,
        ),
        k.dave.sign_key,
        k.dave.enc_key,
    )
    raw = _compose(tmp_path, forger, [k.bob], inner=inner)
    with pytest.raises(mail.MailVerificationError) as info:
        _open(raw, k.bob)
    assert str(info.value) == (
        f"sender check failed: From alice@{DOMAIN} but the signer certificate names dave@{DOMAIN}"
    )
    report = info.value.report
    assert {c.name: c.ok for c in report.checks} == {
        "envelope": True,
        "signature": True,
        "certificate": True,
        "revocation": True,
        "sender": False,
        "addressed": True,
    }
    # non-strict: the report says the same without raising
    r = _open(raw, k.bob, strict=False)
    assert not r.trusted and [c.name for c in r.failed()] == ["sender"]


def test_compose_refuses_from_other_than_signer(tmp_path: Path) -> None:
    k = mailkit()
    inner = InnerMessage(sender=k.alice.address, to=[k.bob.address], subject="s", text="t")
    with pytest.raises(PolicyError, match="is not the address of the signing certificate"):
        mail.compose(io.BytesIO(), k.dave.identity, inner, [k.bob.identity.encryption_certificate])


def test_outer_from_rewritten_is_refused(tmp_path: Path) -> None:
    k = mailkit()
    raw = _compose(tmp_path, k.alice, [k.bob])
    forged = raw.replace(
        f"From: {k.alice.address}".encode(), f"From: {k.carol.address}".encode(), 1
    )
    with pytest.raises(mail.MailVerificationError, match=r"outer From carol@.* differs"):
        _open(forged, k.bob)


def test_revoked_signer_is_refused(tmp_path: Path) -> None:
    k = mailkit()
    raw = _compose(tmp_path, k.revoked, [k.bob])
    with pytest.raises(mail.MailVerificationError, match="revocation check failed") as info:
        _open(raw, k.bob)
    checks = {c.name: c for c in info.value.report.checks}
    assert checks["certificate"].ok and not checks["revocation"].ok
    assert "revoked" in checks["revocation"].detail


def test_untrusted_signer_is_refused(tmp_path: Path) -> None:
    """A signer certified by another CA (a swapped-in certificate chain)."""
    k = mailkit()
    other_key = SM2PrivateKey.generate()
    other = pki.Issuer.self_signed(
        pki.name(CN="Other Root"), other_key.public_key(), other_key.sign
    )
    sk = SM2PrivateKey.generate()
    cert = other.issue(
        subject=pki.name(CN="alice"),
        public_key=sk.public_key(),
        profile=pki.Profile.DEVICE_SIGN,
        subject_alt_names=[k.alice.address],
    )
    fake = User(
        mail.MailIdentity(
            k.alice.address,
            cert,
            sk.sign_digest,
            k.alice.identity.encryption_certificate,
            k.alice.enc_key.decrypt,
        ),
        sk,
        k.alice.enc_key,
    )
    raw = _compose(tmp_path, fake, [k.bob])
    with pytest.raises(mail.MailVerificationError, match="certificate check failed"):
        _open(raw, k.bob)


def test_header_injection_is_refused() -> None:
    k = mailkit()
    with pytest.raises(PolicyError, match="CR, LF or NUL"):
        InnerMessage(
            sender=k.alice.address, to=[k.bob.address], subject="x\r\nBcc: e@x.cn", text=""
        )
    with pytest.raises(PolicyError, match="not an e-mail address"):
        InnerMessage(sender=k.alice.address, to=["bob@x.cn>\r\nX: y"], subject="s", text="")


def test_headers_only_listing(tmp_path: Path) -> None:
    k = mailkit()
    raw = _compose(tmp_path, k.alice, [k.bob])
    r = _open(raw, k.bob, headers_only=True, strict=False)
    assert r.headers["Subject"].startswith(MARK_SUBJECT)
    assert not r.trusted


def test_constant_memory_for_a_large_attachment(tmp_path: Path) -> None:
    """A 24 MiB attachment: composing and opening stay within a few MiB of Python
    allocations (nothing holds the attachment or the message whole)."""
    import tracemalloc

    k = mailkit()
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(24):
            f.write(block)
    inner = InnerMessage(sender=k.alice.address, to=[k.bob.address], subject="big", text="x",
                         attachments=[Attachment.from_path(big)])  # fmt: skip
    wire = tmp_path / "wire.eml"
    tracemalloc.start()
    try:
        with wire.open("wb") as f:
            mail.compose(f, k.alice.identity, inner, [k.bob.identity.encryption_certificate])
        _, peak_compose = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with wire.open("rb") as f:
            r = mail.open_message(f, k.bob.identity, validator=k.validator(),
                                  save_dir=tmp_path / "out")  # fmt: skip
        _, peak_open = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.trusted and r.attachments[0].size == 24 << 20
    assert (tmp_path / "out" / "big.bin").stat().st_size == 24 << 20
    assert wire.stat().st_size > 32 << 20  # base64 of 24 MiB is there on disk
    assert peak_compose < 8 << 20, peak_compose
    assert peak_open < 8 << 20, peak_open


def test_attachment_changed_during_compose_is_refused(tmp_path: Path) -> None:
    k = mailkit()
    att = _attachment(tmp_path, 10_000, "a.txt")
    inner = InnerMessage(sender=k.alice.address, to=[k.bob.address], subject="s", text="t",
                         attachments=[att])  # fmt: skip
    original = inner.chunks

    def changing():  # type: ignore[no-untyped-def]
        yield from original()
        att.path.write_bytes(b"y" * 10_000)  # same size, other bytes, after the first pass

    inner.chunks = changing  # type: ignore[method-assign]
    with pytest.raises(PolicyError, match="changed while the message was built"):
        mail.compose(io.BytesIO(), k.alice.identity, inner, [k.bob.identity.encryption_certificate])


# --- local store --------------------------------------------------------------------


def test_local_store_is_encrypted_under_the_token_key(tmp_path: Path) -> None:
    k = mailkit()
    raw = _compose(tmp_path, k.alice, [k.bob])
    src = tmp_path / "m.eml"
    src.write_bytes(raw)
    store = LocalStore(tmp_path / "store", k.bob.identity)
    mid = store.add("inbox", src, {"subject": MARK_SUBJECT, "from": k.alice.address})
    assert [e[0] for e in store.entries("inbox")] == [mid]
    with store.open(mid) as f:
        assert _open(f.read(), k.bob).trusted
    # no plaintext anywhere in the store
    for f in (tmp_path / "store").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert MARK_SUBJECT.encode() not in data and MARK_BODY.encode() not in data
    # another user's key cannot open it
    with pytest.raises(KeyStoreError, match="does not open with this token"):
        LocalStore(tmp_path / "store", k.carol.identity).entries()
    # tampering with the index is detected
    idx = tmp_path / "store" / "index.enc"
    data = bytearray(idx.read_bytes())
    data[-1] ^= 1
    idx.write_bytes(bytes(data))
    with pytest.raises(KeyStoreError, match="corrupt or was tampered"):
        LocalStore(tmp_path / "store", k.bob.identity).entries()


def test_message_ids_and_dates_are_sane(tmp_path: Path) -> None:
    k = mailkit()
    inner = InnerMessage(sender=k.alice.address, to=[k.bob.address], subject="s", text="t")
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.gov\.cn>", inner.message_id)
    assert inner.date.endswith("GMT")


def test_surreptitious_forwarding_is_flagged(tmp_path: Path) -> None:
    """Carol receives alice's signed message and re-envelopes it, unchanged, for bob:
    the signature is alice's and valid, but bob is not among the signed To/Cc."""
    from mstcrypt.formats import cms

    k = mailkit()
    raw = _compose(tmp_path, k.alice, [k.carol])
    head, body = raw.split(b"\r\n\r\n", 1)
    signed = cms.decrypt(base64.b64decode(body), k.carol.identity.encryption_certificate,
                         k.carol.enc_key)  # fmt: skip
    again = cms.encrypt(signed, [k.bob.identity.encryption_certificate])
    forwarded = head + b"\r\n\r\n" + base64.encodebytes(again).replace(b"\n", b"\r\n")
    with pytest.raises(mail.MailVerificationError, match="addressed check failed") as info:
        _open(forwarded, k.bob)
    checks = {c.name: c.ok for c in info.value.report.checks}
    assert checks == {"envelope": True, "signature": True, "certificate": True,
                      "revocation": True, "sender": True, "addressed": False}  # fmt: skip

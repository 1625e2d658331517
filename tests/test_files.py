"""File encryption (apps.files): round trips, recipients, random access, rewrap, escrow
recovery (also through the KMC service), atomic in-place operations and misuse."""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mstcrypt.apps import files
from mstcrypt.apps.files import format as fmt
from mstcrypt.apps.files import stream as stream_mod
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import KeyStoreError, PolicyError
from mstcrypt.module import KeyUsage, SoftToken
from mstcrypt.pki import Issuer, Profile, name

SRC = Path(__file__).resolve().parents[1] / "src"
KIB = 1024


class Terminal:
    """A soft token with an encryption key per named container."""

    def __init__(self, path: Path, *names: str) -> None:
        self.token = SoftToken.init(path, "123456", "admin-code-1")
        self.handles: dict[str, Any] = {}
        for n in names:
            self.token.create_container(n)
            self.handles[n] = self.token.generate_key_pair(n, KeyUsage.ENCRYPT, escrowed=False)

    def pub(self, n: str) -> Any:
        return self.handles[n].public_key

    def h(self, n: str) -> Any:
        return self.handles[n]


@pytest.fixture(scope="module")
def term(tmp_path_factory: pytest.TempPathFactory) -> Terminal:
    return Terminal(tmp_path_factory.mktemp("tok") / "t.tok", "alice", "bob", "carol")


@pytest.fixture(scope="module")
def ca() -> Issuer:
    k = SM2PrivateKey.generate()
    return Issuer.self_signed(name(C="CN", O="Example", CN="Root"), k.public_key(), k.sign)


def enc_cert(ca: Issuer, pub: Any, cn: str = "alice", **kw: Any) -> Any:
    return ca.issue(subject=name(CN=cn), public_key=pub, profile=Profile.DEVICE_ENC, **kw)


def data(n: int, seed: int = 0) -> bytes:
    block = secrets.token_bytes(min(n, 4096) or 1)
    return (
        (block * (n // len(block) + 1))[:n]
        if seed == 0
        else bytes((i * 31 + seed) & 0xFF for i in range(n))
    )


def enc(pt: bytes, recipients: list[Any], **kw: Any) -> bytes:
    out = io.BytesIO()
    files.encrypt(io.BytesIO(pt), out, recipients, **kw)
    return out.getvalue()


def dec(ct: bytes, module: Any, handle: Any = None) -> bytes:
    out = io.BytesIO()
    n = files.decrypt(io.BytesIO(ct), out, module, handle)
    assert n == len(out.getvalue())
    return out.getvalue()


# --- round trips ---------------------------------------------------------------------------

C1K = 1024
BOUNDARY_SIZES = [0, 1, 15, 16, 17, C1K - 1, C1K, C1K + 1, 2 * C1K - 1, 2 * C1K, 2 * C1K + 1]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.one_of(
        st.sampled_from(BOUNDARY_SIZES),
        st.integers(0, 6 * C1K),
        st.sampled_from([k * C1K + d for k in range(1, 6) for d in (-1, 0, 1)]),
    ),
    seed=st.integers(1, 255),
)
def test_roundtrip_sizes_around_chunk_boundaries(term: Terminal, size: int, seed: int) -> None:
    pt = data(size, seed)
    ct = enc(pt, [term.pub("alice")], chunk_size=C1K)
    chunks = max(1, -(-size // C1K))
    header = files.inspect(ct)
    assert len(ct) == header.size + size + 16 * chunks
    assert dec(ct, term.token, term.h("alice")) == pt
    r = files.EncryptedFileReader(io.BytesIO(ct), term.token, term.h("alice"))
    assert r.size == size and r.pread(0, size + 5) == pt


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=3000))
def test_roundtrip_arbitrary_bytes(pt: bytes) -> None:
    key = SM2PrivateKey.generate()
    ct = enc(pt, [key.public_key()], chunk_size=C1K)
    assert dec(ct, files.KeyIdentity(key)) == pt


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536, 3 * 65536 + 7])
def test_roundtrip_default_chunk_size(term: Terminal, size: int) -> None:
    pt = data(size)
    ct = enc(pt, [term.pub("bob")])
    assert files.inspect(ct).chunk_size == files.DEFAULT_CHUNK_SIZE
    assert dec(ct, term.token, term.h("bob")) == pt


class Trickle(io.RawIOBase):
    """A pipe-like source that returns 1..7 bytes per read."""

    def __init__(self, payload: bytes) -> None:
        self._b = io.BytesIO(payload)
        self._n = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self._n = self._n % 7 + 1
        return self._b.read(min(n, self._n) if n >= 0 else self._n)


def test_short_reads_from_pipes(term: Terminal) -> None:
    pt = data(5000, 3)
    out = io.BytesIO()
    files.encrypt(Trickle(pt), out, [term.pub("alice")], chunk_size=C1K)
    back = io.BytesIO()
    files.decrypt(Trickle(out.getvalue()), back, term.token, term.h("alice"))
    assert back.getvalue() == pt


def test_fresh_file_key_and_salt_every_time(term: Terminal) -> None:
    pt = b"same plaintext" * 100
    a, b = enc(pt, [term.pub("alice")]), enc(pt, [term.pub("alice")])
    ha, hb = files.inspect(a), files.inspect(b)
    assert ha.salt != hb.salt
    assert ha.stanzas[0].wrapped != hb.stanzas[0].wrapped
    assert a[ha.size :] != b[hb.size :]
    # every secret differs: the FEKs are independent
    fa = term.token.decrypt(term.h("alice"), ha.stanzas[0].wrapped)
    fb = term.token.decrypt(term.h("alice"), hb.stanzas[0].wrapped)
    assert fa != fb and len(fa) == 16


def test_progress_callback_counts_plaintext(term: Terminal) -> None:
    pt = data(10 * C1K + 3)
    seen: list[int] = []
    out = io.BytesIO()
    files.encrypt(io.BytesIO(pt), out, [term.pub("alice")], chunk_size=C1K, progress=seen.append)
    assert sum(seen) == len(pt)
    seen.clear()
    files.decrypt(io.BytesIO(out.getvalue()), io.BytesIO(), term.token, progress=seen.append)
    assert sum(seen) == len(pt)


# --- recipients and identities ------------------------------------------------------------------


def test_several_recipients(term: Terminal, ca: Issuer) -> None:
    cert = enc_cert(ca, term.pub("bob"), "bob")
    pt = data(3000, 5)
    ct = enc(pt, [term.pub("alice"), cert, files.Recipient.from_public_key(term.pub("carol"))])
    h = files.inspect(ct)
    assert [s.key_id for s in h.stanzas] == [
        term.pub(n).fingerprint() for n in ["alice", "bob", "carol"]
    ]
    assert h.stanzas[1].cert_fingerprint == bytes.fromhex(cert.fingerprint)
    assert h.stanzas[0].cert_fingerprint is None
    for n in ("alice", "bob", "carol"):
        assert dec(ct, term.token, term.h(n)) == pt
    assert dec(ct, term.token) == pt  # the module alone: every container is tried


def test_no_matching_recipient(term: Terminal) -> None:
    other = SM2PrivateKey.generate()
    ct = enc(b"x", [other.public_key()])
    with pytest.raises(files.NoMatchingRecipientError) as info:
        dec(ct, term.token, term.h("alice"))
    assert info.value.code == "no-matching-recipient"
    with pytest.raises(files.NoMatchingRecipientError):
        dec(ct, term.token)


def test_decryption_needs_the_encryption_key(term: Terminal, tmp_path: Path) -> None:
    ct = enc(b"x", [term.pub("alice")])
    tok = term.token
    if "signer" not in tok.list_containers():
        tok.create_container("signer")
    sh = tok.generate_key_pair("signer", KeyUsage.SIGN, replace=True)
    with pytest.raises(PolicyError, match="encryption key"):
        dec(ct, tok, sh)
    with pytest.raises(PolicyError, match="bare private key"):
        dec(ct, SM2PrivateKey.generate())
    with pytest.raises(PolicyError):
        dec(ct, "not a module")
    with pytest.raises(PolicyError, match="together with its CryptoModule"):
        dec(ct, files.KeyIdentity(SM2PrivateKey.generate()), term.h("alice"))
    empty = SoftToken.init(tmp_path / "e.tok", "123456", "admin-code-1")
    with pytest.raises(KeyStoreError, match="no encryption key"):
        dec(ct, empty)


def test_recipient_from_certificate_rules(term: Terminal, ca: Issuer) -> None:
    sign_cert = ca.issue(
        subject=name(CN="alice"), public_key=term.pub("alice"), profile=Profile.DEVICE_SIGN
    )
    with pytest.raises(PolicyError, match="not an encryption certificate"):
        files.Recipient.from_certificate(sign_cert)
    past = datetime.now(UTC) - timedelta(days=400)
    old = enc_cert(ca, term.pub("alice"), not_before=past, not_after=past + timedelta(days=1))
    with pytest.raises(PolicyError, match="not valid now"):
        enc(b"x", [old])
    r = files.Recipient.from_certificate(old, check_validity=False)
    assert r.key_id == term.pub("alice").fingerprint()
    assert "Recipient(recipient" in repr(r)
    with pytest.raises(PolicyError):
        files.Recipient.from_certificate(b"pem")  # type: ignore[arg-type]


def test_writer_policy(term: Terminal) -> None:
    a = term.pub("alice")
    with pytest.raises(PolicyError, match="at least one recipient"):
        enc(b"x", [])
    with pytest.raises(PolicyError, match="named twice"):
        enc(b"x", [a, a])
    with pytest.raises(PolicyError, match="named twice"):
        enc(b"x", [a], escrow=a)
    for bad in (0, 1000, 512, 1 << 25, 3 * 1024):
        with pytest.raises(PolicyError, match="power of two"):
            enc(b"x", [a], chunk_size=bad)
    with pytest.raises(PolicyError):
        enc(b"x", ["alice"])  # type: ignore[list-item]
    assert dec(enc(b"single", a), term.token) == b"single"  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="binary"):
        files.encrypt(io.StringIO("text"), io.BytesIO(), [a])  # type: ignore[arg-type]


# --- header ------------------------------------------------------------------------------


def test_inspect_and_describe(term: Terminal, tmp_path: Path) -> None:
    ct = enc(data(2500), [term.pub("alice")], escrow=term.pub("carol"), chunk_size=C1K)
    h = files.inspect(ct[:400])  # a prefix holding the header is enough
    assert h == files.inspect(ct)
    assert h.escrow is not None and h.escrow.key_id == term.pub("carol").fingerprint()
    d = h.describe()
    assert d["chunk_size"] == C1K and len(d["stanzas"]) == 2  # type: ignore[arg-type]
    assert d["stanzas"][1]["kind"] == "escrow"  # type: ignore[index]
    p = tmp_path / "f.mst"
    p.write_bytes(ct)
    info = files.inspect_file(p)
    assert info.geometry is not None and info.geometry.chunks == 3
    assert info.describe()["plaintext_size"] == 2500
    assert "stanzas=2" in repr(h) and "Stanza(recipient" in repr(h.stanzas[0])


def test_no_secret_in_reprs_and_errors(term: Terminal) -> None:
    ct = enc(b"secret data", [term.pub("alice")])
    h = files.inspect(ct)
    fek = term.token.decrypt(term.h("alice"), h.stanzas[0].wrapped)
    keys = fmt.FileKeys(fek, h.salt)
    assert fek.hex() not in repr(keys) and "secret" in repr(keys)
    bad = ct[:-1] + bytes([ct[-1] ^ 1])
    with pytest.raises(files.PayloadError) as info:
        dec(bad, term.token)
    for secret in (fek, keys.payload_key, keys.header_key):
        assert secret.hex() not in str(info.value)


def test_error_hierarchy() -> None:
    from mstcrypt.errors import DecodeError, DecryptionError, MstCryptError, VerificationError

    assert issubclass(files.FileFormatError, DecodeError)
    assert issubclass(files.HeaderMacError, VerificationError)
    assert issubclass(files.PayloadError, DecryptionError)
    assert issubclass(files.StanzaUnwrapError, DecryptionError)
    assert issubclass(files.NoMatchingRecipientError, MstCryptError)
    e = files.FileFormatError("bad-magic", "m")
    assert e.code == "bad-magic" and e.message == "m"


# --- random access -------------------------------------------------------------------------


def test_random_access_ranges(term: Terminal) -> None:
    pt = data(10 * C1K + 123, 7)
    ct = enc(pt, [term.pub("alice")], chunk_size=C1K)
    r = files.EncryptedFileReader(io.BytesIO(ct), term.token, term.h("alice"))
    assert r.size == len(pt) and r.geometry.chunks == 11
    for off, n in [
        (0, 0),
        (0, 1),
        (1023, 2),
        (1024, 1024),
        (5000, 3000),
        (10 * C1K, 500),
        (len(pt) - 1, 10),
        (len(pt), 5),
        (len(pt) + 100, 5),
        (0, len(pt)),
    ]:
        assert r.pread(off, n) == pt[off : off + n], (off, n)
    assert b"".join(r.iter_range(3000)) == pt[3000:]
    assert files.open_range(io.BytesIO(ct), term.token, offset=2047, length=3) == pt[2047:2050]
    # io.RawIOBase behaviour
    buf = io.BufferedReader(r, buffer_size=700)
    buf.seek(4000)
    assert buf.read(100) == pt[4000:4100]
    r.seek(-10, os.SEEK_END)
    assert r.read() == pt[-10:]
    r.seek(5, os.SEEK_SET)
    r.seek(5, os.SEEK_CUR)
    assert r.tell() == 10 and r.read(3) == pt[10:13]
    assert r.read(0) == b"" and r.readable() and r.seekable()
    with pytest.raises(PolicyError):
        r.seek(-1)
    with pytest.raises(PolicyError):
        r.seek(0, 7)
    with pytest.raises(PolicyError):
        r.pread(-1, 5)
    with pytest.raises(PolicyError):
        r.pread(0, -5)
    assert "chunks=11" in repr(r)


def test_random_access_decrypts_only_what_it_needs(
    term: Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    pt = data(20 * C1K, 9)
    ct = enc(pt, [term.pub("alice")], chunk_size=C1K)
    opened: list[int] = []
    real = stream_mod._gcm_open

    def spy(keys: Any, index: int, final: bool, chunk: bytes) -> Any:
        opened.append(index)
        return real(keys, index, final, chunk)

    monkeypatch.setattr(stream_mod, "_gcm_open", spy)
    r = files.EncryptedFileReader(io.BytesIO(ct), term.token, term.h("alice"))
    assert opened == [19]  # the final chunk authenticates the length
    assert r.pread(7 * C1K + 10, 1500) == pt[7 * C1K + 10 : 7 * C1K + 1510]
    assert opened == [19, 7, 8]


def test_random_access_authenticates_each_chunk_read(term: Terminal) -> None:
    pt = data(6 * C1K, 2)
    ct = bytearray(enc(pt, [term.pub("alice")], chunk_size=C1K))
    hsize = files.inspect(bytes(ct)).size
    ct[hsize + 3 * (C1K + 16) + 100] ^= 1  # corrupt chunk 3
    r = files.EncryptedFileReader(io.BytesIO(bytes(ct)), term.token)
    assert r.pread(0, 3 * C1K) == pt[: 3 * C1K]  # untouched chunks read fine
    with pytest.raises(files.PayloadError, match="chunk 3 fails authentication"):
        r.pread(3 * C1K, 1)
    # a file cut at a chunk boundary fails when opened (the final chunk is checked)
    cut = bytes(ct[: hsize + 4 * (C1K + 16)])
    with pytest.raises(files.PayloadError, match="chunk 3"):
        files.EncryptedFileReader(io.BytesIO(cut), term.token)


def test_random_access_needs_seekable_source(term: Terminal) -> None:
    class NoSeek(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def seek(self, *a: Any) -> int:
            raise OSError("no")

    with pytest.raises(PolicyError, match="seekable"):
        files.EncryptedFileReader(NoSeek(), term.token)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="seekable"):
        files.EncryptedFileReader(object(), term.token)  # type: ignore[arg-type]


# --- rewrap ---------------------------------------------------------------------------------


def test_rewrap_add_and_remove(term: Terminal, ca: Issuer) -> None:
    pt = data(5000, 4)
    ct = enc(pt, [term.pub("alice")], chunk_size=C1K)
    h = files.inspect(ct)
    out = io.BytesIO()
    new = files.rewrap(
        io.BytesIO(ct),
        out,
        term.token,
        term.h("alice"),
        add=[enc_cert(ca, term.pub("bob"), "bob")],
        remove=[term.pub("alice")],
    )
    ct2 = out.getvalue()
    assert ct2[new.size :] == ct[h.size :]  # the payload is untouched
    assert new.salt == h.salt and new.chunk_log2 == h.chunk_log2
    assert [s.key_id for s in new.stanzas] == [term.pub("bob").fingerprint()]
    assert dec(ct2, term.token, term.h("bob")) == pt
    with pytest.raises(files.NoMatchingRecipientError):
        dec(ct2, term.token, term.h("alice"))
    # key ids given as hex or bytes; escrow add / replace / remove
    h3 = files.rewrap_header(
        new, term.token, term.h("bob"), add=[term.pub("alice")], escrow=term.pub("carol")
    )
    assert h3.escrow is not None
    h4 = files.rewrap_header(
        h3.raw,
        term.token,
        term.h("alice"),
        remove=[term.pub("bob").fingerprint().hex()],
        remove_escrow=True,
    )
    assert [s.key_id for s in h4.stanzas] == [term.pub("alice").fingerprint()]
    h5 = files.rewrap_header(
        h3,
        term.token,
        term.h("carol"),
        escrow=SM2PrivateKey.generate().public_key(),
    )
    assert h5.escrow is not None and h5.escrow.key_id != h3.escrow.key_id
    assert dec(h4.raw + ct[h.size :], term.token) == pt


def test_rewrap_refusals(term: Terminal) -> None:
    ct = enc(b"abc", [term.pub("alice")])
    h = files.inspect(ct)
    with pytest.raises(PolicyError, match="at least one recipient"):
        files.rewrap_header(h, term.token, term.h("alice"), remove=[term.pub("alice")])
    with pytest.raises(PolicyError, match="already a recipient"):
        files.rewrap_header(h, term.token, term.h("alice"), add=[term.pub("alice")])
    with pytest.raises(PolicyError, match="not a recipient"):
        files.rewrap_header(h, term.token, term.h("alice"), remove=[term.pub("bob")])
    with pytest.raises(PolicyError, match="hexadecimal"):
        files.rewrap_header(h, term.token, term.h("alice"), remove=["zz"])
    with pytest.raises(PolicyError, match="32 bytes"):
        files.rewrap_header(h, term.token, term.h("alice"), remove=[b"short"])
    with pytest.raises(files.NoMatchingRecipientError):
        files.rewrap_header(h, term.token, term.h("bob"), add=[term.pub("bob")])
    # a tampered header is never re-MACed: the old MAC is verified first
    raw = bytearray(h.raw)
    raw[12] ^= 1  # salt
    with pytest.raises(files.HeaderMacError):
        files.rewrap_header(bytes(raw), term.token, term.h("alice"), add=[term.pub("bob")])


def test_rewrap_file_in_place_and_to_out(term: Terminal, tmp_path: Path) -> None:
    pt = data(3000, 8)
    p = tmp_path / "doc.mst"
    p.write_bytes(enc(pt, [term.pub("alice")]))
    os.chmod(p, 0o640)
    files.rewrap_file(p, term.token, term.h("alice"), add=[term.pub("bob")])
    assert dec(p.read_bytes(), term.token, term.h("bob")) == pt
    assert p.stat().st_mode & 0o777 == 0o640
    q = tmp_path / "copy.mst"
    files.rewrap_file(p, term.token, out=q, remove=[term.pub("alice")])
    assert len(files.inspect(q.read_bytes()).stanzas) == 1
    assert len(files.inspect(p.read_bytes()).stanzas) == 2
    assert sorted(x.name for x in tmp_path.iterdir()) == ["copy.mst", "doc.mst"]


# --- escrow and recovery ----------------------------------------------------------------------


def test_escrow_recovery_primitives(term: Terminal, tmp_path: Path) -> None:
    kmc_key = SM2PrivateKey.generate()  # the KMC file-recovery key (inside the SS-CC)
    recovery = files.KeyIdentity(kmc_key)
    lost_phone = SM2PrivateKey.generate()
    pt = data(4000, 6)
    path = tmp_path / "f.mst"
    files.encrypt_file(
        io_path(tmp_path, pt),
        path,
        [lost_phone.public_key()],
        escrow=kmc_key.public_key(),
        chunk_size=C1K,
    )
    header = files.inspect(path.read_bytes())
    assert header.escrow is not None

    # flow A: the KMC gets only the escrow ciphertext (POST /admin/file-recovery)
    stanza = files.reissue_stanza_for(header.escrow.wrapped, recovery, term.pub("carol"))
    assert stanza.kind is files.StanzaKind.RECIPIENT
    assert stanza.key_id == term.pub("carol").fingerprint()
    new = files.accept_reissued_stanza(header, stanza.wrapped, term.token, term.h("carol"))
    files.replace_header(path, new)
    assert dec(path.read_bytes(), term.token, term.h("carol")) == pt

    # flow B: the KMC gets the whole header, verifies its MAC and rewraps it
    new2 = files.recover_header(header.raw, recovery, term.pub("bob"))
    assert files.reissue_stanza_for(header, recovery, term.pub("bob")).key_id == (
        term.pub("bob").fingerprint()
    )
    files.replace_header(path, new2.raw)
    assert dec(path.read_bytes(), term.token, term.h("bob")) == pt
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.mst", "plain"]


def io_path(tmp: Path, content: bytes) -> Path:
    p = tmp / "plain"
    p.write_bytes(content)
    return p


def test_escrow_recovery_refusals(term: Terminal) -> None:
    kmc_key = SM2PrivateKey.generate()
    recovery = files.KeyIdentity(kmc_key)
    ct = enc(b"payload", [term.pub("alice")], escrow=kmc_key.public_key())
    h = files.inspect(ct)
    no_escrow = files.inspect(enc(b"p", [term.pub("alice")]))
    wrong = files.KeyIdentity(SM2PrivateKey.generate())
    with pytest.raises(PolicyError, match="no escrow stanza"):
        files.reissue_stanza_for(no_escrow, recovery, term.pub("bob"))
    with pytest.raises(PolicyError, match="no escrow stanza"):
        files.reissue_stanza_for(h, wrong, term.pub("bob"))
    with pytest.raises(PolicyError, match="no escrow stanza"):
        files.recover_header(no_escrow, recovery, term.pub("bob"))
    with pytest.raises(PolicyError, match="not for this recovery key"):
        files.recover_header(h, wrong, term.pub("bob"))
    with pytest.raises(files.StanzaUnwrapError):
        files.reissue_stanza_for(h.escrow.wrapped, wrong, term.pub("bob"))  # type: ignore[union-attr]
    with pytest.raises(files.FileFormatError, match="escrow stanza: wrapped key is not"):
        files.reissue_stanza_for(b"junk", recovery, term.pub("bob"))
    with pytest.raises(PolicyError):
        files.reissue_stanza_for(12, recovery, term.pub("bob"))  # type: ignore[arg-type]
    # the KMC refuses a header whose MAC does not verify (a forged header)
    raw = bytearray(h.raw)
    raw[-1] ^= 1
    with pytest.raises(files.HeaderMacError):
        files.reissue_stanza_for(bytes(raw), recovery, term.pub("bob"))
    # the terminal refuses a released key that belongs to another file
    other = files.inspect(enc(b"other", [term.pub("alice")], escrow=kmc_key.public_key()))
    st_other = files.reissue_stanza_for(other, recovery, term.pub("bob"))
    with pytest.raises(files.HeaderMacError):
        files.accept_reissued_stanza(h, st_other, term.token, term.h("bob"))
    to_alice = files.reissue_stanza_for(h, recovery, term.pub("alice"))
    with pytest.raises(PolicyError, match="already a recipient"):
        files.accept_reissued_stanza(h, to_alice, term.token)
    with pytest.raises(PolicyError, match="not encrypted to any key"):
        files.accept_reissued_stanza(h, st_other.wrapped, term.token, term.h("carol"))
    with pytest.raises(files.FileFormatError, match="released file key"):
        files.accept_reissued_stanza(h, b"junk", term.token, term.h("bob"))


def test_replace_header_refuses_another_file(term: Terminal, tmp_path: Path) -> None:
    p = tmp_path / "a.mst"
    p.write_bytes(enc(b"a", [term.pub("alice")]))
    other = files.inspect(enc(b"b", [term.pub("alice")]))
    with pytest.raises(PolicyError, match="another file"):
        files.replace_header(p, other)


def test_recovery_through_the_kmc_service(term: Terminal, tmp_path: Path) -> None:
    """End to end with the KMC's dual-control file recovery (POST /admin/file-recovery)."""
    from mstcrypt.kmc.db import Database
    from mstcrypt.kmc.service import Kmc
    from mstcrypt.module.sscc import SoftKeyStore

    kmc = Kmc(
        Database(f"sqlite:///{tmp_path / 'kmc.db'}"),
        SoftKeyStore(secrets.token_bytes(32)),
        crl_base_url="http://kmc.test",
    )
    kmc.create_schema()
    kmc.init_ca(actor="test")
    try:
        pt = data(9000, 1)
        p = tmp_path / "report.mst"
        escrow = kmc.escrow_certificate()  # the certified key-escrow key
        assert escrow.public_key == kmc.file_recovery_public_key()
        p.write_bytes(enc(pt, [SM2PrivateKey.generate().public_key()], escrow=escrow.public_key))
        header = files.inspect_file(p).header
        rid = kmc.request_file_recovery(
            header.escrow.wrapped,
            term.pub("carol"),  # type: ignore[union-attr]
            reason="lost phone",
            actor="op1",
        )
        # dual control: the requester never approves; a second officer approves quoting
        # the recipient key's fingerprint
        with pytest.raises(PolicyError, match="dual control"):
            kmc.approve_recovery(rid, actor="op1")
        fingerprint = kmc.recovery_result(rid)["recipient_fingerprint"]
        assert fingerprint == term.pub("carol").fingerprint().hex()
        released = kmc.approve_recovery(rid, actor="op2", recipient_fingerprint=fingerprint)
        assert released is not None
        files.replace_header(p, files.accept_reissued_stanza(header, released, term.token))
        assert dec(p.read_bytes(), term.token, term.h("carol")) == pt
    finally:
        kmc.db.dispose()


# --- whole files and atomicity ------------------------------------------------------------------


def test_encrypt_and_decrypt_in_place(term: Terminal, tmp_path: Path) -> None:
    pt = data(100_000, 3)
    p = tmp_path / "app.db"
    p.write_bytes(pt)
    os.chmod(p, 0o640)
    files.encrypt_file_in_place(p, [term.pub("alice")], escrow=term.pub("carol"))
    assert p.read_bytes().startswith(files.MAGIC)
    assert p.stat().st_mode & 0o777 == 0o640
    with pytest.raises(PolicyError, match="already an encrypted file"):
        files.encrypt_file_in_place(p, [term.pub("alice")])
    assert files.decrypt_file_in_place(p, term.token, term.h("alice")) == len(pt)
    assert p.read_bytes() == pt and p.stat().st_mode & 0o777 == 0o640
    assert [x.name for x in tmp_path.iterdir()] == ["app.db"]


def test_in_place_failure_leaves_the_original(term: Terminal, tmp_path: Path) -> None:
    pt = data(50_000, 5)
    p = tmp_path / "app.db"
    p.write_bytes(pt)

    def boom(n: int) -> None:
        raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError):
        files.encrypt_file_in_place(p, [term.pub("alice")], chunk_size=C1K, progress=boom)
    assert p.read_bytes() == pt
    assert [x.name for x in tmp_path.iterdir()] == ["app.db"]
    # decryption of a corrupted file: neither the output nor a temporary file appears
    ct = bytearray(enc(pt, [term.pub("alice")], chunk_size=C1K))
    ct[-5] ^= 1
    c = tmp_path / "c.mst"
    c.write_bytes(bytes(ct))
    with pytest.raises(files.PayloadError):
        files.decrypt_file(c, tmp_path / "out", term.token)
    with pytest.raises(files.PayloadError):
        files.decrypt_file_in_place(c, term.token)
    assert c.read_bytes() == bytes(ct)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["app.db", "c.mst"]


def test_encrypt_file_and_decrypt_file(term: Terminal, tmp_path: Path) -> None:
    pt = data(7000, 2)
    src, mid, dst = tmp_path / "a", tmp_path / "a.mst", tmp_path / "b"
    src.write_bytes(pt)
    h = files.encrypt_file(src, mid, [term.pub("bob")], chunk_size=C1K)
    assert mid.stat().st_mode & 0o777 == 0o600 and h.chunk_size == C1K
    assert files.decrypt_file(mid, dst, term.token) == len(pt)
    assert dst.read_bytes() == pt and dst.stat().st_mode & 0o777 == 0o600


def test_kill_during_in_place_encryption(tmp_path: Path) -> None:
    """kill -9 in the middle of encrypt_file_in_place: the original file is intact."""
    p = tmp_path / "big.db"
    pt = os.urandom(1 << 20) * 24
    p.write_bytes(pt)
    script = textwrap.dedent(
        f"""
        import sys, time
        from mstcrypt.apps import files
        from mstcrypt.crypto.sm2 import SM2PrivateKey
        done = 0
        def tick(n):
            global done
            done += n
            if done >= 4 << 20:
                print("go", flush=True)
                time.sleep(60)
        files.encrypt_file_in_place({str(p)!r}, [SM2PrivateKey.generate().public_key()],
                                    progress=tick)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"go"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert p.read_bytes() == pt
    left = [x.name for x in tmp_path.iterdir() if x.name != "big.db"]
    assert all(n.startswith(".big.db.") and n.endswith(".mstcrypt-tmp") for n in left)


def test_header_limits() -> None:
    assert fmt.MAX_HEADER_SIZE < 300_000
    with pytest.raises(files.PayloadError, match="2\\^56"):
        fmt.nonce(b"\x00" * 4, 1 << 56, False)
    assert fmt.nonce(b"abcd", 1, True) == b"abcd" + (1).to_bytes(7, "big") + b"\x01"
    keys = fmt.FileKeys(bytes(16), bytes(16))
    with pytest.raises(PolicyError):
        fmt.Header.build([], keys, salt=bytes(16))
    with pytest.raises(PolicyError):
        fmt.FileKeys(bytes(15), bytes(16))
    with pytest.raises(PolicyError):
        fmt.Stanza(files.StanzaKind.RECIPIENT, b"short", b"x")


def test_stanzas_interoperate_with_openssl(openssl: Any, term: Terminal, tmp_path: Path) -> None:
    """Stanzas are plain GM/T 0009 SM2 ciphertexts: OpenSSL's pkeyutl decrypts one to the
    FEK that opens the file, and an FEK encrypted by OpenSSL is accepted as a recipient
    stanza (the recovery path)."""
    from mstcrypt.crypto import sm4
    from mstcrypt.formats.keys import dump_private_key, dump_public_key

    alice = SM2PrivateKey.generate()
    kp = tmp_path / "alice.pem"
    kp.write_bytes(dump_private_key(alice))
    pt = data(3000, 4)
    ct = enc(pt, [alice.public_key()], chunk_size=C1K)
    h = files.inspect(ct)
    (tmp_path / "wrapped.der").write_bytes(h.stanzas[0].wrapped)
    fek = openssl("pkeyutl", "-decrypt", "-inkey", str(kp), "-in", str(tmp_path / "wrapped.der"))
    keys = fmt.FileKeys(fek, h.salt)
    h.verify_mac(keys)
    chunk0 = ct[h.size : h.size + C1K + 16]
    assert (
        sm4.gcm_decrypt(keys.payload_key, fmt.nonce(keys.nonce_prefix, 0, False), chunk0)
        == (pt[:C1K])
    )
    # OpenSSL wraps the FEK to carol's key; the terminal adds that as its stanza
    cp = tmp_path / "carol.pub"
    cp.write_bytes(dump_public_key(term.pub("carol")))
    (tmp_path / "fek").write_bytes(fek)
    released = openssl(
        "pkeyutl", "-encrypt", "-pubin", "-inkey", str(cp), "-in", str(tmp_path / "fek")
    )
    new = files.accept_reissued_stanza(h, released, term.token, term.h("carol"))
    assert dec(new.raw + ct[h.size :], term.token, term.h("carol")) == pt

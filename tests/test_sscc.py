"""SS-CC key store (mstcrypt.module.sscc): one contract, two backends.

Every contract test runs on the soft backend (master key) and on the PKCS#11 backend
against a fresh SoftHSM2 token per test session (``softhsm2-util --init-token`` in a
temporary token directory named by ``SOFTHSM2_CONF``). PKCS#11 tests are skipped, with the
reason, only where SoftHSM2 (``softhsm2-util`` and ``libsofthsm2.so``) or python-pkcs11
is not installed.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mstcrypt.crypto import sm4
from mstcrypt.crypto.sm2 import DEFAULT_ID, SM2PrivateKey, SM2PublicKey
from mstcrypt.crypto.sm3 import kdf
from mstcrypt.errors import (
    DecryptionError,
    KeyStoreError,
    PolicyError,
    UnsupportedError,
    VerificationError,
)
from mstcrypt.formats.envelope import open_enveloped_key
from mstcrypt.formats.keys import dump_public_key
from mstcrypt.module.server import KeyWrapper
from mstcrypt.module.sscc import (
    Pkcs11KeyStore,
    ServerKeyStore,
    SM2Operator,
    SoftKeyStore,
    SsccConfig,
    find_softhsm2_module,
    open_keystore,
)

PIN = "sscc-test-pin-4711"
SO_PIN = "sscc-test-so-9876"
TOKENS = ("sscc-a", "sscc-b", "sscc-pin", "sscc-kek")
CTX = b"enc:42"

# Blobs written by KeyWrapper before the SS-CC existed (master key bytes(range(32))): an
# existing database holds exactly such bytes.
LEGACY_MASTER = bytes(range(32))
LEGACY_SCALAR = "3945208f7b2144b13f36e38ac6d39f95889393692860b51a42fb81ef4df7c5b8"
LEGACY_KEY_BLOB = bytes.fromhex(
    "fb7deb69b89d106f4d3a0aef543cd2e59ff94bc7f852119bd6055d198812034d8b0c8b5cee8fcaee23d0b2"
    "63b9e20d3e861f1a1285893cf71e631f73"
)
LEGACY_KDK_BLOB = bytes.fromhex(
    "1f94a8b398944dc4acc2940f33f2f10dead4c9af3508d0236dd1dfcb3335acae0d5bc1a6f0b22fdb91bc70ef"
)


# --- SoftHSM2 -------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftHsm:
    module: str
    conf: Path

    def store(self, label: str = "sscc-a", **kw: Any) -> Pkcs11KeyStore:
        return Pkcs11KeyStore(self.module, label, kw.pop("pin", PIN), **kw)

    def raw_session(self, label: str = "sscc-a") -> Any:
        """A python-pkcs11 session of its own on ``token`` (no mstcrypt code involved).
        ``label``. Opened without a PIN: PKCS#11 login is per application, so it is logged in when a
        store on that token is open in this process (and closing it logs nobody out)."""
        import pkcs11

        return pkcs11.lib(self.module).get_token(token_label=label).open(rw=True)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    util = shutil.which("softhsm2-util")
    module = find_softhsm2_module()
    if util is None or module is None:
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed (pip install '.[test]')")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        for label in TOKENS:
            subprocess.run(
                [
                    util,
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--pin",
                    PIN,
                    "--so-pin",
                    SO_PIN,
                ],
                check=True,
                capture_output=True,
            )
        yield SoftHsm(module, conf)


# --- one contract, two backends ---------------------------------------------------------


class Backend:
    """Opens stores of one backend: ``open()`` on the same key material (master key or
    token), ``other()`` on different key material."""

    name: str

    def open(self, **kw: Any) -> ServerKeyStore:
        raise NotImplementedError

    def other(self) -> ServerKeyStore:
        raise NotImplementedError


class SoftBackend(Backend):
    name = "soft"

    def __init__(self) -> None:
        self.master = os.urandom(32)

    def open(self, **kw: Any) -> ServerKeyStore:
        return SoftKeyStore(self.master, **kw)

    def other(self) -> ServerKeyStore:
        return SoftKeyStore(os.urandom(32))


class Pkcs11Backend(Backend):
    name = "pkcs11"

    def __init__(self, hsm: SoftHsm) -> None:
        self.hsm = hsm

    def open(self, **kw: Any) -> ServerKeyStore:
        return self.hsm.store("sscc-a", **kw)

    def other(self) -> ServerKeyStore:
        return self.hsm.store("sscc-b")


@pytest.fixture(params=["soft", "pkcs11"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "soft":
        return SoftBackend()
    return Pkcs11Backend(request.getfixturevalue("softhsm"))


@pytest.fixture
def store(backend: Backend) -> Iterator[ServerKeyStore]:
    s = backend.open()
    yield s
    s.close()


def test_backend_name(backend: Backend, store: ServerKeyStore) -> None:
    assert store.backend == backend.name


def test_sign_verifies_with_the_public_key(store: ServerKeyStore) -> None:
    pub, blob = store.generate_sm2(CTX)
    assert isinstance(pub, SM2PublicKey)
    assert store.public_key(blob, CTX) == pub
    for msg in (b"", b"message digest", bytes(range(256)) * 4):
        sig = store.sign(blob, CTX, msg)
        pub.verify(sig, msg)
        pub.verify(sig, msg, signer_id=DEFAULT_ID)
        with pytest.raises(VerificationError):
            pub.verify(sig, msg + b"x")
    sig = store.sign(blob, CTX, b"m", signer_id=b"alice@example.com")
    pub.verify(sig, b"m", signer_id=b"alice@example.com")
    with pytest.raises(VerificationError):
        pub.verify(sig, b"m")
    sign = store.signer(blob, CTX)
    pub.verify(sign(b"tbs"), b"tbs")


def test_sign_verifies_with_the_openssl_cli(
    store: ServerKeyStore, openssl: Callable[..., bytes], tmp_path: Path
) -> None:
    pub, blob = store.generate_sm2(b"ca:root")
    msg = b"to be signed by the SS-CC\n" * 10
    (tmp_path / "pub.pem").write_bytes(dump_public_key(pub))
    (tmp_path / "msg").write_bytes(msg)
    (tmp_path / "bad").write_bytes(msg + b"!")
    (tmp_path / "sig").write_bytes(store.sign(blob, b"ca:root", msg))
    args = [
        "pkeyutl",
        "-verify",
        "-rawin",
        "-digest",
        "sm3",
        "-pubin",
        "-inkey",
        str(tmp_path / "pub.pem"),
        "-pkeyopt",
        "distid:1234567812345678",
        "-sigfile",
        str(tmp_path / "sig"),
        "-in",
    ]
    assert b"Verified Successfully" in openssl(*args, str(tmp_path / "msg"))
    with pytest.raises(subprocess.CalledProcessError):
        openssl(*args, str(tmp_path / "bad"))


def test_decrypt_gmt0009_ciphertext(store: ServerKeyStore) -> None:
    pub, blob = store.generate_sm2(CTX)
    for plain in (b"\x00", b"secret payload", os.urandom(300)):
        assert store.decrypt(blob, CTX, pub.encrypt(plain)) == plain
    ct = bytearray(pub.encrypt(b"secret payload"))
    ct[-1] ^= 1
    with pytest.raises(DecryptionError):
        store.decrypt(blob, CTX, bytes(ct))
    other = SM2PrivateKey.generate().public_key()
    with pytest.raises(DecryptionError):
        store.decrypt(blob, CTX, other.encrypt(b"not for this key"))


def test_export_enveloped_opens_with_formats_envelope(store: ServerKeyStore) -> None:
    pub, blob = store.generate_sm2(CTX)
    terminal = SM2PrivateKey.generate()
    der = store.export_enveloped(blob, CTX, terminal.public_key())
    delivered = open_enveloped_key(der, terminal)
    assert delivered.public_key() == pub
    assert store.decrypt(blob, CTX, pub.encrypt(b"x")) == delivered.decrypt(pub.encrypt(b"x"))
    with pytest.raises(DecryptionError):
        open_enveloped_key(der, SM2PrivateKey.generate())
    with pytest.raises(PolicyError):
        store.export_enveloped(blob, CTX, terminal)  # type: ignore[arg-type]


def test_secrets_round_trip(store: ServerKeyStore) -> None:
    """A KDK and a group key: delivered to the member by SM2, GK wrapped under the KDK."""
    member = SM2PrivateKey.generate()
    kdk_blob = store.generate_secret(b"kdk:alice:1")
    gk_blob = store.generate_secret(b"gk:team:1")
    kdk = member.decrypt(store.encrypt_secret_to(kdk_blob, b"kdk:alice:1", member.public_key()))
    gk = member.decrypt(store.encrypt_secret_to(gk_blob, b"gk:team:1", member.public_key()))
    assert len(kdk) == len(gk) == 16 and kdk != gk
    nonce, aad = os.urandom(12), b"group=team;version=1;member=alice"
    wrapped = store.wrap_secret(kdk_blob, b"kdk:alice:1", gk_blob, b"gk:team:1", nonce, aad)
    assert sm4.gcm_decrypt(kdk, nonce, wrapped, aad) == gk
    with pytest.raises(DecryptionError):
        sm4.gcm_decrypt(kdk, nonce, wrapped, aad + b"x")
    big = store.generate_secret(b"s:32", 32)
    assert len(member.decrypt(store.encrypt_secret_to(big, b"s:32", member.public_key()))) == 32
    with pytest.raises(KeyStoreError):  # a 32-byte secret is no SM4 key
        store.wrap_secret(big, b"s:32", gk_blob, b"gk:team:1", nonce, aad)
    for bad in (0, 15, 65, "16"):
        with pytest.raises(PolicyError):
            store.generate_secret(b"s", bad)  # type: ignore[arg-type]


def test_values_round_trip_and_are_domain_separated(store: ServerKeyStore) -> None:
    for value in (b"", b"backup field", os.urandom(5000)):
        assert store.unwrap_value(store.wrap_value(value, b"backup:x"), b"backup:x") == value
    # A key or secret blob does not open as a value (that would export the scalar) and
    # a value does not open as a key, even under the same context.
    _, key_blob = store.generate_sm2(b"same")
    with pytest.raises(KeyStoreError):
        store.unwrap_value(key_blob, b"same")
    with pytest.raises(KeyStoreError):
        store.unwrap_value(store.generate_secret(b"same"), b"same")
    value_blob = store.wrap_value(os.urandom(32), b"same")
    with pytest.raises(KeyStoreError):
        store.sign(value_blob, b"same", b"m")
    with pytest.raises(KeyStoreError):
        store.encrypt_secret_to(value_blob, b"same", SM2PrivateKey.generate().public_key())


def _every_use(store: ServerKeyStore, key_blob: bytes, ctx: bytes) -> list[Callable[[], Any]]:
    other = SM2PrivateKey.generate().public_key()
    return [
        lambda: store.sign(key_blob, ctx, b"m"),
        lambda: store.signer(key_blob, ctx),
        lambda: store.decrypt(key_blob, ctx, other.encrypt(b"x")),
        lambda: store.export_enveloped(key_blob, ctx, other),
        lambda: store.public_key(key_blob, ctx),
    ]


def test_blob_moved_to_another_context_is_refused(store: ServerKeyStore) -> None:
    """Attack: copy a key blob into another row (another context) and use it there."""
    pub, blob = store.generate_sm2(b"enc:1")
    store.sign(blob, b"enc:1", b"warm the cache")
    for use in _every_use(store, blob, b"enc:2"):
        with pytest.raises(KeyStoreError):
            use()
    kdk = store.generate_secret(b"kdk:alice:1")
    gk = store.generate_secret(b"gk:team:1")
    member = SM2PrivateKey.generate().public_key()
    with pytest.raises(KeyStoreError):
        store.encrypt_secret_to(kdk, b"kdk:mallory:1", member)
    with pytest.raises(KeyStoreError):
        store.wrap_secret(kdk, b"kdk:alice:1", gk, b"gk:other:1", os.urandom(12), b"")
    with pytest.raises(KeyStoreError):
        store.wrap_secret(kdk, b"kdk:mallory:1", gk, b"gk:team:1", os.urandom(12), b"")
    with pytest.raises(KeyStoreError):
        store.unwrap_value(store.wrap_value(b"v", b"backup:1"), b"backup:2")
    pub.verify(store.sign(blob, b"enc:1", b"m"), b"m")  # still fine where it belongs


def test_edited_blob_is_refused(store: ServerKeyStore) -> None:
    """Attack: flip any byte, truncate or extend a blob (cache warm for the original)."""
    _, blob = store.generate_sm2(CTX)
    store.sign(blob, CTX, b"warm")
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(KeyStoreError):
            store.sign(bytes(bad), CTX, b"m")
    for bad in (blob[:-1], blob + b"\x00", b"", blob[:12]):
        with pytest.raises(KeyStoreError):
            store.sign(bad, CTX, b"m")
    secret = store.generate_secret(b"kdk:a:1")
    edited = secret[:-1] + bytes([secret[-1] ^ 0x80])
    with pytest.raises(KeyStoreError):
        store.encrypt_secret_to(edited, b"kdk:a:1", SM2PrivateKey.generate().public_key())
    value = store.wrap_value(b"payload", b"v")
    with pytest.raises(KeyStoreError):
        store.unwrap_value(value[:20] + bytes([value[20] ^ 4]) + value[21:], b"v")
    with pytest.raises(KeyStoreError):
        store.sign("not bytes", CTX, b"m")  # type: ignore[arg-type]


def test_other_master_key_or_token_is_refused(backend: Backend, store: ServerKeyStore) -> None:
    """Attack: a copy of the database opened with another master key / another token."""
    _, blob = store.generate_sm2(CTX)
    secret = store.generate_secret(b"kdk:a:1")
    value = store.wrap_value(b"payload", b"v")
    other = backend.other()
    try:
        for use in _every_use(other, blob, CTX):
            with pytest.raises(KeyStoreError):
                use()
        with pytest.raises(KeyStoreError):
            other.encrypt_secret_to(secret, b"kdk:a:1", SM2PrivateKey.generate().public_key())
        with pytest.raises(KeyStoreError):
            other.unwrap_value(value, b"v")
    finally:
        other.close()


def test_blobs_survive_reopening_the_store(backend: Backend) -> None:
    first = backend.open()
    pub, blob = first.generate_sm2(CTX)
    secret = first.generate_secret(b"kdk:a:1")
    value = first.wrap_value(b"payload", b"v")
    member = SM2PrivateKey.generate()
    s1 = member.decrypt(first.encrypt_secret_to(secret, b"kdk:a:1", member.public_key()))
    first.close()
    with pytest.raises(KeyStoreError):
        first.sign(blob, CTX, b"m")
    with pytest.raises(KeyStoreError):
        first.generate_sm2(CTX)
    first.close()  # idempotent
    again = backend.open()
    try:
        pub.verify(again.sign(blob, CTX, b"m"), b"m")
        assert again.unwrap_value(value, b"v") == b"payload"
        assert (
            member.decrypt(again.encrypt_secret_to(secret, b"kdk:a:1", member.public_key())) == s1
        )
    finally:
        again.close()


def test_import_sm2_for_migration(store: ServerKeyStore) -> None:
    key = SM2PrivateKey.generate()
    blob = store.import_sm2(key, b"ca:root")
    assert store.public_key(blob, b"ca:root") == key.public_key()
    key.public_key().verify(store.sign(blob, b"ca:root", b"m"), b"m")
    with pytest.raises(PolicyError):
        store.import_sm2(key.private_bytes(), b"ca:root")  # type: ignore[arg-type]


def test_context_must_be_nonempty_bytes(store: ServerKeyStore) -> None:
    for bad in (b"", "enc:1", None):
        with pytest.raises(PolicyError):
            store.generate_sm2(bad)  # type: ignore[arg-type]


def test_cache_is_bounded_and_optional(backend: Backend) -> None:
    s = backend.open(cache_size=2)
    try:
        keys = [s.generate_sm2(f"k:{i}".encode()) for i in range(5)]
        for i, (pub, blob) in enumerate(keys):
            pub.verify(s.sign(blob, f"k:{i}".encode(), b"m"), b"m")
            assert s.cached_keys <= 2
        assert s.cached_keys == 2
        s.clear_cache()
        assert s.cached_keys == 0
    finally:
        s.close()
    s = backend.open(cache_size=0)
    try:
        pub, blob = s.generate_sm2(CTX)
        pub.verify(s.sign(blob, CTX, b"m"), b"m")
        assert s.cached_keys == 0
    finally:
        s.close()
    with pytest.raises(PolicyError):
        backend.open(cache_size=-1)


def test_concurrent_threads(backend: Backend) -> None:
    """Server worker threads share one store (and its cache, and for PKCS#11 one session):
    every operation must come out right."""
    s = backend.open(cache_size=0)
    pub, blob = s.generate_sm2(CTX)
    values = [(s.wrap_value(bytes([i]) * 40, b"v:%d" % i), i) for i in range(8)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for j in range(15):
                v, i = values[(n + j) % len(values)]
                assert s.unwrap_value(v, b"v:%d" % i) == bytes([i]) * 40
                pub.verify(s.sign(blob, CTX, b"t%d" % j), b"t%d" % j)
                s.wrap_value(b"x", b"w")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.close()
    assert not errors, errors[0]


def test_no_secret_in_reprs_or_errors(backend: Backend, store: ServerKeyStore) -> None:
    key = SM2PrivateKey.generate()
    blob = store.import_sm2(key, CTX)
    secrets_ = [key.private_bytes().hex(), PIN]
    if isinstance(backend, SoftBackend):
        secrets_.append(backend.master.hex())
    texts = [repr(store), str(store)]
    for use in _every_use(store, blob, b"other"):
        with pytest.raises(KeyStoreError) as exc:
            use()
        texts.append(str(exc.value))
    for t in texts:
        for s in secrets_:
            assert s not in t and s.upper() not in t


# --- soft backend: compatibility with the former KeyWrapper -----------------------------


def test_soft_opens_blobs_written_by_the_former_keywrapper() -> None:
    s = SoftKeyStore(LEGACY_MASTER)
    pub = SM2PrivateKey.from_bytes(bytes.fromhex(LEGACY_SCALAR)).public_key()
    assert s.public_key(LEGACY_KEY_BLOB, b"enc:42") == pub
    pub.verify(s.sign(LEGACY_KEY_BLOB, b"enc:42", b"m"), b"m")
    member = SM2PrivateKey.generate()
    ct = s.encrypt_secret_to(LEGACY_KDK_BLOB, b"kdk:alice:1", member.public_key())
    assert member.decrypt(ct) == bytes(range(16))
    with pytest.raises(KeyStoreError):
        s.sign(LEGACY_KEY_BLOB, b"enc:43", b"m")


def test_soft_blobs_follow_the_documented_layout() -> None:
    """nonce ‖ SM4-GCM(SM3-KDF(master ‖ label, 16), nonce, d, label|context), computed
    here independently of the store."""
    master = os.urandom(32)
    s = SoftKeyStore(master)
    pub, blob = s.generate_sm2(b"enc:7")
    kek = kdf(master + b"mstcrypt-kmc-wrap", 16)
    d = sm4.gcm_decrypt(kek, blob[:12], blob[12:], b"mstcrypt-kmc-wrap|enc:7")
    assert SM2PrivateKey.from_bytes(d).public_key() == pub
    assert len(blob) == 12 + 32 + 16
    nonce = os.urandom(12)
    mine = SM2PrivateKey.generate()
    handmade = nonce + sm4.gcm_encrypt(kek, nonce, mine.private_bytes(), b"mstcrypt-kmc-wrap|x")
    mine.public_key().verify(s.sign(handmade, b"x", b"m"), b"m")


def test_soft_blobs_interchange_with_keywrapper() -> None:
    master = os.urandom(32)
    s, w = SoftKeyStore(master), KeyWrapper(master)
    pub, blob = s.generate_sm2(b"enc:1")
    assert w.unwrap(blob, b"enc:1").public_key() == pub
    key = SM2PrivateKey.generate()
    key.public_key().verify(s.sign(w.wrap(key, b"enc:2"), b"enc:2", b"m"), b"m")
    secret = s.generate_secret(b"kdk:a:1")
    assert len(w.unwrap_bytes(secret, b"kdk:a:1")) == 16
    member = SM2PrivateKey.generate()
    ct = s.encrypt_secret_to(w.wrap_bytes(b"k" * 16, b"gk:g:1"), b"gk:g:1", member.public_key())
    assert member.decrypt(ct) == b"k" * 16
    with pytest.raises(KeyStoreError):
        w.unwrap(blob, b"enc:2")
    assert "<master key hidden>" in repr(w)


def test_soft_master_key_must_be_32_bytes() -> None:
    for bad in (b"", bytes(31), bytes(33), "00" * 32):
        with pytest.raises(PolicyError):
            SoftKeyStore(bad)  # type: ignore[arg-type]


class _TokenHandle:
    """An SM2 operator that does not expose its scalar, like a key kept on a device."""

    def __init__(self, key: SM2PrivateKey) -> None:
        self._sign, self._decrypt, self._pub = key.sign_digest, key.decrypt, key.public_key()

    def public_key(self) -> SM2PublicKey:
        return self._pub

    def sign_digest(self, digest: bytes) -> bytes:
        return self._sign(digest)

    def decrypt(self, ciphertext: bytes) -> bytes:
        return self._decrypt(ciphertext)


def test_sm2_seam_needs_no_private_scalar() -> None:
    """The seam for a token with SM2 mechanisms: a backend whose _load_sm2 returns a
    handle works for every operation but export, which it must provide itself."""

    class HandleStore(SoftKeyStore):
        loads = 0

        def _load_sm2(self, blob: bytes, context: bytes) -> SM2Operator:
            HandleStore.loads += 1
            key = super()._load_sm2(blob, context)
            assert isinstance(key, SM2PrivateKey)
            return _TokenHandle(key)

    s = HandleStore(os.urandom(32))
    pub, blob = s.generate_sm2(CTX)
    pub.verify(s.sign(blob, CTX, b"m"), b"m")
    assert s.decrypt(blob, CTX, pub.encrypt(b"x")) == b"x"
    with pytest.raises(UnsupportedError):
        s.export_enveloped(blob, CTX, SM2PrivateKey.generate().public_key())
    assert HandleStore.loads == 1  # cached after the first use


# --- PKCS#11 backend (SoftHSM2) -------------------------------------------------------------


def test_softhsm2_has_no_sm2_sm3_sm4_mechanisms(softhsm: SoftHsm) -> None:
    """SoftHSM2 implements AES-GCM and AES key generation but no SM2/SM3/SM4: those exist
    only as vendor-defined mechanisms (CKM_VENDOR_DEFINED = 0x80000000 and up), of which
    it has none. That is why the KEK is AES and SM2 runs in process memory."""
    import pkcs11

    s = softhsm.store()
    try:
        mechs = s.token_mechanisms()
    finally:
        s.close()
    assert int(pkcs11.Mechanism.AES_GCM) in mechs
    assert int(pkcs11.Mechanism.AES_KEY_GEN) in mechs
    assert int(pkcs11.Mechanism.ECDSA) in mechs  # it does do elliptic curves, not SM2
    assert not [m for m in mechs if m >= 0x80000000]
    names = {pkcs11.Mechanism(m).name for m in mechs if m in pkcs11.Mechanism._value2member_map_}
    assert not [n for n in names if n.startswith(("SM2", "SM3", "SM4"))]


def _keks(hsm: SoftHsm, token: str, label: str = "mstcrypt-sscc-kek") -> list[Any]:
    import pkcs11

    session = hsm.raw_session(token)
    try:
        return list(session.get_objects({pkcs11.Attribute.LABEL: label}))
    finally:
        session.close()


def test_kek_is_sensitive_and_never_leaves_the_token(softhsm: SoftHsm) -> None:
    """Attack: read the KEK's value, wrap it out under a key we control, or flip it to
    extractable — all refused by the token."""
    import pkcs11
    from pkcs11 import Attribute as A

    store = softhsm.store()  # keeps the token logged in for the raw session
    session = softhsm.raw_session()
    try:
        (kek,) = session.get_objects({A.LABEL: "mstcrypt-sscc-kek"})
        assert kek[A.TOKEN] and kek[A.PRIVATE] and kek[A.SENSITIVE]
        assert not kek[A.EXTRACTABLE]
        assert kek[A.NEVER_EXTRACTABLE] and kek[A.ALWAYS_SENSITIVE]
        assert not kek[A.WRAP] and not kek[A.UNWRAP] and not kek[A.SIGN]
        assert kek[A.VALUE_LEN] == 32 and kek[A.KEY_TYPE] == pkcs11.KeyType.AES
        with pytest.raises(pkcs11.AttributeSensitive):
            kek[A.VALUE]
        wrapper = session.generate_key(
            pkcs11.KeyType.AES, 256, store=False, template={A.WRAP: True, A.EXTRACTABLE: True}
        )
        for mech in (pkcs11.Mechanism.AES_KEY_WRAP, pkcs11.Mechanism.AES_KEY_WRAP_PAD):
            with pytest.raises(pkcs11.KeyUnextractable):
                wrapper.wrap_key(kek, mechanism=mech)
        with pytest.raises(pkcs11.PKCS11Error):
            kek[A.EXTRACTABLE] = True
        with pytest.raises(pkcs11.PKCS11Error):
            kek[A.SENSITIVE] = False
        assert not kek[A.EXTRACTABLE] and kek[A.SENSITIVE]
    finally:
        session.close()
        store.close()


def test_planted_weak_kek_is_refused(softhsm: SoftHsm) -> None:
    """Attack: someone places an extractable AES key under the KEK label so that blobs get
    sealed under a key they can read out. The store refuses to use it."""
    import pkcs11
    from pkcs11 import Attribute as A

    keep = softhsm.store("sscc-kek")
    session = softhsm.raw_session("sscc-kek")
    try:
        session.generate_key(
            pkcs11.KeyType.AES,
            256,
            label="weak",
            store=True,
            template={A.EXTRACTABLE: True, A.SENSITIVE: False, A.TOKEN: True},
        )
        with pytest.raises(KeyStoreError, match="extractable"):
            softhsm.store("sscc-kek", key_label="weak")
        for _ in range(2):
            session.generate_key(
                pkcs11.KeyType.AES,
                256,
                label="dup",
                store=True,
                template={A.EXTRACTABLE: False, A.SENSITIVE: True},
            )
        with pytest.raises(KeyStoreError, match="ambiguous"):
            softhsm.store("sscc-kek", key_label="dup")
        with pytest.raises(KeyStoreError, match="no KEK"):
            softhsm.store("sscc-kek", key_label="absent", create=False)
        assert _keks(softhsm, "sscc-kek", "absent") == []
    finally:
        session.close()
        keep.close()


def test_kek_created_once_and_found_by_label(softhsm: SoftHsm) -> None:
    a = softhsm.store("sscc-kek", key_label="once")
    b = softhsm.store("sscc-kek", key_label="once")
    try:
        assert len(_keks(softhsm, "sscc-kek", "once")) == 1
        assert b.unwrap_value(a.wrap_value(b"v", b"c"), b"c") == b"v"
    finally:
        a.close()
        b.close()


_CHILD = textwrap.dedent(
    """
    import os, sys
    from mstcrypt.module.sscc import Pkcs11KeyStore
    store = Pkcs11KeyStore(os.environ["T_MODULE"], os.environ["T_TOKEN"], os.environ["T_PIN"],
                           os.environ["T_LABEL"])
    blob = sys.stdin.buffer.read()
    if blob:
        sys.stdout.write(store.sign(blob, b"ca:root", b"signed in another process").hex())
    else:
        sys.stdout.write(store.wrap_value(b"from %d" % os.getpid(), b"v").hex())
    store.close()
    """
)

# Loads the library and logs in first (a store on another label), then waits for the
# gate file so that every child reaches the KEK look-up at the same moment.
_RACER = textwrap.dedent(
    """
    import os, sys, time
    from mstcrypt.module.sscc import Pkcs11KeyStore
    e = os.environ
    warm = Pkcs11KeyStore(e["T_MODULE"], e["T_TOKEN"], e["T_PIN"], "warmup")
    while not os.path.exists(e["T_GATE"]):
        time.sleep(0.001)
    store = Pkcs11KeyStore(e["T_MODULE"], e["T_TOKEN"], e["T_PIN"], e["T_LABEL"])
    sys.stdout.write(store.wrap_value(b"from %d" % os.getpid(), b"v").hex())
    store.close()
    warm.close()
    """
)


def _child_env(hsm: SoftHsm, token: str, label: str) -> dict[str, str]:
    return {
        **os.environ,
        "SOFTHSM2_CONF": str(hsm.conf),
        "T_MODULE": hsm.module,
        "T_TOKEN": token,
        "T_PIN": PIN,
        "T_LABEL": label,
    }


def test_second_process_finds_the_same_kek(softhsm: SoftHsm) -> None:
    store = softhsm.store()
    try:
        pub, blob = store.generate_sm2(b"ca:root")
        out = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=blob,
            capture_output=True,
            env=_child_env(softhsm, "sscc-a", "mstcrypt-sscc-kek"),
            check=True,
        )
        pub.verify(bytes.fromhex(out.stdout.decode().strip()), b"signed in another process")
        out = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=b"",
            capture_output=True,
            env=_child_env(softhsm, "sscc-a", "mstcrypt-sscc-kek"),
            check=True,
        )
        assert store.unwrap_value(bytes.fromhex(out.stdout.decode()), b"v").startswith(b"from ")
        assert len(_keks(softhsm, "sscc-a")) == 1
    finally:
        store.close()


def test_processes_creating_the_kek_at_once_agree_on_one(softhsm: SoftHsm, tmp_path: Path) -> None:
    """Four processes start on a token without the KEK and create it at the same moment:
    they must all end up sealing under one and the same KEK."""
    gate = tmp_path / "go"
    env = {**_child_env(softhsm, "sscc-kek", "raced"), "T_GATE": str(gate)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(4)
    ]
    time.sleep(1.5)
    gate.write_text("go")
    outs = []
    for c in children:
        out, err = c.communicate(timeout=60)
        assert c.returncode == 0, err.decode()[-2000:]
        outs.append(bytes.fromhex(out.decode()))
    store = softhsm.store("sscc-kek", key_label="raced", create=False)
    try:
        assert len(_keks(softhsm, "sscc-kek", "raced")) == 1
        for blob in outs:
            assert store.unwrap_value(blob, b"v").startswith(b"from ")
    finally:
        store.close()


def test_token_missing_wrong_pin_or_module_is_a_keystore_error(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    with pytest.raises(KeyStoreError, match="not found") as exc:
        softhsm.store("no-such-token")
    assert PIN not in str(exc.value)
    with pytest.raises(KeyStoreError, match="wrong PIN") as exc:
        softhsm.store("sscc-pin", pin="not-the-pin-0000")
    assert "not-the-pin-0000" not in str(exc.value)
    with pytest.raises(KeyStoreError, match="module not found"):
        Pkcs11KeyStore(tmp_path / "libnothing.so", "sscc-a", PIN)
    (tmp_path / "libjunk.so").write_bytes(b"not an ELF file")
    with pytest.raises(KeyStoreError, match="cannot load"):
        Pkcs11KeyStore(tmp_path / "libjunk.so", "sscc-a", PIN)
    s = softhsm.store("sscc-pin")  # the right PIN still works afterwards
    s.close()
    for bad in ("", None):
        with pytest.raises(PolicyError):
            softhsm.store("sscc-a", pin=bad)


def test_same_token_shared_by_two_stores_in_one_process(softhsm: SoftHsm) -> None:
    """PKCS#11 login belongs to the process: closing one store must not log out another,
    and a second store with a different PIN is refused rather than silently accepted."""
    a = softhsm.store(cache_size=0)
    b = softhsm.store(cache_size=0)
    pub, blob = a.generate_sm2(CTX)
    a.close()
    pub.verify(b.sign(blob, CTX, b"m"), b"m")
    with pytest.raises(KeyStoreError, match="another PIN"):
        softhsm.store(pin="a-different-pin")
    b.close()


def test_lost_session_is_reopened(softhsm: SoftHsm) -> None:
    """The HSM connection drops (session closed under the store): one reconnect, then on."""
    s = softhsm.store(cache_size=0)
    try:
        pub, blob = s.generate_sm2(CTX)
        link = s._link
        assert link is not None
        link.session.close()
        pub.verify(s.sign(blob, CTX, b"m"), b"m")
    finally:
        s.close()


def test_blobs_of_one_backend_do_not_open_in_the_other(softhsm: SoftHsm) -> None:
    soft, hsm = SoftKeyStore(os.urandom(32)), softhsm.store()
    try:
        _, sb = soft.generate_sm2(CTX)
        _, hb = hsm.generate_sm2(CTX)
        with pytest.raises(KeyStoreError, match="another backend"):
            hsm.sign(sb, CTX, b"m")
        with pytest.raises(KeyStoreError):
            soft.sign(hb, CTX, b"m")
        with pytest.raises(KeyStoreError, match="token-resident"):
            hsm.sign(b"\x02" + hb[1:], CTX, b"m")
        assert hb[0] == Pkcs11KeyStore.KIND_SEALED
        assert len(hb) == 1 + 12 + 32 + 16
    finally:
        hsm.close()


# --- configuration ------------------------------------------------------------------------

_ENV = (
    "MSTCRYPT_SSCC",
    "MSTCRYPT_MASTER_KEY",
    "MSTCRYPT_MASTER_KEY_FILE",
    "MSTCRYPT_SSCC_DIR",
    "MSTCRYPT_PKCS11_MODULE",
    "MSTCRYPT_PKCS11_TOKEN",
    "MSTCRYPT_PKCS11_PIN",
    "MSTCRYPT_PKCS11_PIN_FILE",
    "MSTCRYPT_PKCS11_KEY_LABEL",
    "MSTCRYPT_SSCC_CACHE",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_default_master_key_lives_beside_not_inside_the_data(
    env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cfg = SsccConfig.from_env(data)
    assert cfg.backend == "soft"
    assert cfg.master_key_file == tmp_path / "data.sscc" / "master.key"
    assert not cfg.master_key_file.exists()  # from_env creates nothing
    with caplog.at_level(logging.WARNING, logger="mstcrypt.sscc"):
        store = open_keystore(cfg)
    assert isinstance(store, SoftKeyStore)
    assert not caplog.records
    key_file = tmp_path / "data.sscc" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert len(key_file.read_bytes()) == 32
    assert not list(data.iterdir())  # nothing key-like in the data directory
    pub, blob = store.generate_sm2(CTX)
    again = open_keystore(SsccConfig.from_env(data))
    pub.verify(again.sign(blob, CTX, b"m"), b"m")
    # the same relative spelling resolves to the same place
    env.chdir(tmp_path)
    assert SsccConfig.from_env("data").master_key_file == key_file


def test_sscc_dir_overrides_the_default(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("MSTCRYPT_SSCC_DIR", str(tmp_path / "keys"))
    cfg = SsccConfig.from_env(tmp_path / "data")
    assert cfg.master_key_file == tmp_path / "keys" / "master.key"
    open_keystore(cfg)
    assert (tmp_path / "keys" / "master.key").is_file()
    assert not (tmp_path / "data.sscc").exists()


def test_old_layout_master_key_is_still_read_with_a_warning(
    env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    master = os.urandom(32)
    (data / "master.key").write_bytes(master)
    old_blob = KeyWrapper(master).wrap(key := SM2PrivateKey.generate(), b"ca:root")
    with caplog.at_level(logging.WARNING, logger="mstcrypt.sscc"):
        store = open_keystore(SsccConfig.from_env(data))
    key.public_key().verify(store.sign(old_blob, b"ca:root", b"m"), b"m")
    assert not (tmp_path / "data.sscc").exists()  # nothing new created
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "inside the data directory" in msg and "data.sscc" in msg
    assert master.hex() not in msg
    # once moved, the new place wins; a leftover copy is reported
    (tmp_path / "data.sscc").mkdir(mode=0o700)
    moved = tmp_path / "data.sscc" / "master.key"
    moved.write_bytes(master)
    moved.chmod(0o644)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mstcrypt.sscc"):
        store = open_keystore(cfg := SsccConfig.from_env(data))
    assert cfg.master_key_file == moved
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "old master key remains" in messages
    assert "readable by other users (mode 644)" in messages
    key.public_key().verify(store.sign(old_blob, b"ca:root", b"m"), b"m")
    moved.chmod(0o600)
    (data / "master.key").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mstcrypt.sscc"):
        open_keystore(SsccConfig.from_env(data))
    assert not caplog.records


def test_master_key_from_environment(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    master = os.urandom(32)
    env.setenv("MSTCRYPT_MASTER_KEY", master.hex())
    cfg = SsccConfig.from_env(tmp_path / "data")
    assert master.hex() not in repr(cfg) and " master_key=" not in repr(cfg)
    blob = open_keystore(cfg).wrap_value(b"v", b"c")
    assert SoftKeyStore(master).unwrap_value(blob, b"c") == b"v"
    assert not (tmp_path / "data.sscc").exists()
    env.setenv("MSTCRYPT_MASTER_KEY", "zz" * 32)
    with pytest.raises(KeyStoreError):
        SsccConfig.from_env(tmp_path / "data")
    env.setenv("MSTCRYPT_MASTER_KEY", "ab" * 16)
    with pytest.raises(KeyStoreError):
        SsccConfig.from_env(tmp_path / "data")
    env.delenv("MSTCRYPT_MASTER_KEY")
    (tmp_path / "mk").write_text(master.hex())
    env.setenv("MSTCRYPT_MASTER_KEY_FILE", str(tmp_path / "mk"))
    assert open_keystore(SsccConfig.from_env(tmp_path / "data")).unwrap_value(blob, b"c") == b"v"
    env.setenv("MSTCRYPT_MASTER_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(KeyStoreError):
        open_keystore(SsccConfig.from_env(tmp_path / "data"))


def test_unknown_backend_and_bad_cache(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("MSTCRYPT_SSCC", "sdf")
    with pytest.raises(PolicyError, match="soft, pkcs11"):
        SsccConfig.from_env(tmp_path)
    env.setenv("MSTCRYPT_SSCC", "soft")
    env.setenv("MSTCRYPT_SSCC_CACHE", "many")
    with pytest.raises(PolicyError):
        SsccConfig.from_env(tmp_path)
    env.setenv("MSTCRYPT_SSCC_CACHE", "0")
    assert SsccConfig.from_env(tmp_path).cache_size == 0
    with pytest.raises(PolicyError):
        open_keystore(SsccConfig(backend="hsm"))


def test_pkcs11_configuration_from_environment(
    env: pytest.MonkeyPatch, softhsm: SoftHsm, tmp_path: Path
) -> None:
    env.setenv("MSTCRYPT_SSCC", "pkcs11")
    with pytest.raises(KeyStoreError, match="MSTCRYPT_PKCS11_MODULE"):
        open_keystore(SsccConfig.from_env(tmp_path))
    env.setenv("MSTCRYPT_PKCS11_MODULE", softhsm.module)
    with pytest.raises(KeyStoreError, match="MSTCRYPT_PKCS11_TOKEN"):
        open_keystore(SsccConfig.from_env(tmp_path))
    env.setenv("MSTCRYPT_PKCS11_TOKEN", "sscc-a")
    with pytest.raises(KeyStoreError, match="PIN"):
        open_keystore(SsccConfig.from_env(tmp_path))
    (tmp_path / "pin").write_text(PIN + "\n")
    env.setenv("MSTCRYPT_PKCS11_PIN_FILE", str(tmp_path / "pin"))
    cfg = SsccConfig.from_env(tmp_path)
    store = open_keystore(cfg)
    try:
        assert isinstance(store, Pkcs11KeyStore) and store.key_label == "mstcrypt-sscc-kek"
        blob = store.wrap_value(b"v", b"c")
    finally:
        store.close()
    env.delenv("MSTCRYPT_PKCS11_PIN_FILE")
    env.setenv("MSTCRYPT_PKCS11_PIN", PIN)
    cfg = SsccConfig.from_env(tmp_path)
    assert PIN not in repr(cfg)
    store = open_keystore(cfg)
    try:
        assert store.unwrap_value(blob, b"c") == b"v"
        assert PIN not in repr(store)
    finally:
        store.close()
    assert not (tmp_path.with_name(tmp_path.name + ".sscc")).exists()  # no master key file


# --- the KMC on each backend ---------------------------------------------------------------


def test_kmc_end_to_end_on_each_backend(backend: Backend, tmp_path: Path) -> None:
    """The whole KMC runs on the key store: CA and escrowed keys generated in it, every
    signature, envelope, KDK and group key through it; nothing else holds the master key."""
    from mstcrypt.formats.envelope import open_enveloped_key
    from mstcrypt.kmc.db import Database
    from mstcrypt.kmc.service import Kmc
    from mstcrypt.pki import CRL, build_csr, name, validate_path

    kmc = Kmc(Database(f"sqlite:///{tmp_path / 'kmc.db'}"), backend.open())
    kmc.create_schema()
    issuing, root = kmc.init_ca(actor="test")
    terminal = SM2PrivateKey.generate()
    code, _ = kmc.create_enrollment_code(owner="alice", subject={"CN": "alice"}, actor="ra")
    e = kmc.enroll(code, build_csr(name(CN="x"), terminal.public_key(), terminal.sign).der)
    crls = [CRL.from_der(kmc.crl("issuing")), CRL.from_der(kmc.crl("root"))]
    for cert in (e.sign_certificate, e.encryption_certificate, kmc.escrow_certificate()):
        validate_path(cert, anchors=[root], intermediates=[issuing], crls=crls)
    enc = open_enveloped_key(e.enveloped_key, terminal)
    assert enc.public_key() == e.encryption_certificate.public_key
    delivered = kmc.kdk_delivery("alice", actor="terminal:alice")
    assert (
        delivered["version"] == 1
        and len(enc.decrypt(base64.b64decode(delivered["ciphertext"]))) == 16
    )
    new_device = SM2PrivateKey.generate()
    rid = kmc.request_recovery(e.key_id, new_device.public_key(), reason="lost", actor="o1")
    env = kmc.approve_recovery(rid, actor="o2")
    assert env is not None and open_enveloped_key(env, new_device).public_key() == enc.public_key()
    assert kmc.checkpoint() is not None and kmc.verify_audit().ok
    # another store (other master key / other token) opens none of it
    other = Kmc(kmc.db, backend.other())
    with pytest.raises(KeyStoreError):
        other.kdk_delivery("alice", actor="terminal:alice")
    with pytest.raises(KeyStoreError):  # the issuing CA's key: CRLs are signed by the publisher
        other.crl_publisher.publish("issuing", force=True)
    kmc.db.dispose()

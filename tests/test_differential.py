"""Differential tests against gmalg 1.1.2, an independent pure-Python SM2/SM3/SM4 (test
oracle only, never a runtime dependency).

gmalg's formats, from its source (gmalg/sm2.py):

* keys: ``SM2(sk=<big-endian d>, uid=<ID bytes>, pk=<04‖x‖y>)``; the ID must be non-empty.
* ``sign(msg) -> (r, s)`` as *minimal* big-endian byte strings (not padded to 32 bytes);
  ``verify(msg, r, s) -> bool``. Both use e = SM3(Z ‖ M) with Z over the same fields as
  GB/T 32918.2.
* ``encrypt(pt)`` returns raw C1 ‖ C3 ‖ C2 with C1 = 04‖x‖y (PC_MODE.RAW, the default);
  ``decrypt`` reads the same. An empty plaintext makes gmalg loop forever (its "KDF output
  all zero" retry never ends for klen = 0), so plaintexts here are >= 1 byte (mstcrypt
  refuses empty plaintexts anyway).
* key exchange: ``begin_key_exchange() -> (R, t)`` with t = d + x̄·r mod n, then
  ``end_key_exchange(klen, t, R_peer, uid_peer, pk_peer, KEYXCHG_MODE.INITIATOR |
  RESPONDER) -> K``. It has no confirmation values (S_A/S_B), so only K is compared here;
  S_A/S_B are checked against the standard's vector in test_vectors.py.
"""

from __future__ import annotations

import gmalg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mstcrypt.crypto import sm4
from mstcrypt.crypto.curve import N
from mstcrypt.crypto.hazmat.ec import mul_base
from mstcrypt.crypto.sm2 import SM2PrivateKey, signature_from_raw, signature_to_raw
from mstcrypt.crypto.sm2_kex import KeyExchangeInitiator, KeyExchangeResponder
from mstcrypt.crypto.sm3 import SM3, sm3
from mstcrypt.formats.gmt0009 import cipher_from_raw, cipher_to_raw

SLOW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.integers(min_value=1, max_value=N - 2).map(SM2PrivateKey)
messages = st.binary(max_size=200)
plaintexts = st.binary(min_size=1, max_size=200)
ids = st.binary(min_size=1, max_size=40)


def _gm(key: SM2PrivateKey, uid: bytes | None = None, *, public_only: bool = False) -> gmalg.SM2:
    pk = key.public_key().to_bytes()
    if public_only:
        return gmalg.SM2(pk=pk, uid=uid)
    return gmalg.SM2(sk=key.private_bytes(), uid=uid, pk=pk)


# --- SM2 signatures -------------------------------------------------------------------


@SLOW
@given(key=keys, uid=ids, msg=messages)
def test_mstcrypt_signs_gmalg_verifies(key: SM2PrivateKey, uid: bytes, msg: bytes) -> None:
    raw = key.sign(msg, signer_id=uid, encoding="raw")
    g = _gm(key, uid, public_only=True)
    assert g.verify(msg, raw[:32], raw[32:])
    der = key.sign(msg, signer_id=uid)
    raw2 = signature_to_raw(der)
    assert g.verify(msg, raw2[:32], raw2[32:])
    assert not g.verify(msg + b"\x00", raw[:32], raw[32:])


@SLOW
@given(key=keys, uid=ids, msg=messages)
def test_gmalg_signs_mstcrypt_verifies(key: SM2PrivateKey, uid: bytes, msg: bytes) -> None:
    r, s = _gm(key, uid).sign(msg)
    raw = r.rjust(32, b"\x00") + s.rjust(32, b"\x00")
    pub = key.public_key()
    pub.verify(raw, msg, signer_id=uid, encoding="raw")
    pub.verify(signature_from_raw(raw), msg, signer_id=uid)


@settings(max_examples=25, deadline=None)
@given(key=keys, uid=ids, msg=messages, k=st.integers(min_value=1, max_value=N - 1))
def test_fixed_k_signature_matches_gmalg(
    key: SM2PrivateKey, uid: bytes, msg: bytes, k: int
) -> None:
    """gmalg draws k as rnd_fn(bits) (retrying outside [1, n-1]), so a constant rnd_fn
    fixes k: its (r, s) must then equal the textbook values computed from mstcrypt's
    e = SM3(Z ‖ M) and mstcrypt's [k]G."""
    g = gmalg.SM2(
        sk=key.private_bytes(), uid=uid, pk=key.public_key().to_bytes(), rnd_fn=lambda _bits: k
    )
    r, s = (int.from_bytes(v, "big") for v in g.sign(msg))
    e = int.from_bytes(key.public_key().message_digest(msg, uid), "big")
    d = key.private_int()
    assert r == (e + mul_base(k).x) % N
    assert s == pow(1 + d, -1, N) * (k - r * d) % N
    key.public_key().verify(
        r.to_bytes(32, "big") + s.to_bytes(32, "big"), msg, signer_id=uid, encoding="raw"
    )


# --- SM2 encryption -------------------------------------------------------------------


@SLOW
@given(key=keys, pt=plaintexts)
def test_gmalg_encrypts_mstcrypt_decrypts(key: SM2PrivateKey, pt: bytes) -> None:
    raw = _gm(key, public_only=True).encrypt(pt)  # 04‖x‖y ‖ C3 ‖ C2
    assert raw[0] == 4 and len(raw) == 65 + 32 + len(pt)
    der = cipher_from_raw(raw, "c1c3c2")
    assert key.decrypt(der) == pt
    assert cipher_to_raw(der) == raw
    legacy = raw[:65] + raw[97:] + raw[65:97]  # the same ciphertext as C1C2C3
    assert cipher_from_raw(legacy, "c1c2c3") == der
    assert key.decrypt(cipher_from_raw(raw[1:], "c1c3c2", with_04=False)) == pt


@SLOW
@given(key=keys, pt=plaintexts)
def test_mstcrypt_encrypts_gmalg_decrypts(key: SM2PrivateKey, pt: bytes) -> None:
    der = key.public_key().encrypt(pt)
    assert _gm(key).decrypt(cipher_to_raw(der, "c1c3c2")) == pt


# --- SM2 key exchange -----------------------------------------------------------------

_KEX = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_KEX
@given(a_key=keys, b_key=keys, id_a=ids, id_b=ids, klen=st.integers(1, 80))
def test_kex_mstcrypt_initiator_gmalg_responder(
    a_key: SM2PrivateKey, b_key: SM2PrivateKey, id_a: bytes, id_b: bytes, klen: int
) -> None:
    a = KeyExchangeInitiator(a_key, b_key.public_key(), own_id=id_a, peer_id=id_b, klen=klen)
    b = _gm(b_key, id_b)
    r_b, t_b = b.begin_key_exchange()
    k_b = b.end_key_exchange(
        klen, t_b, a.ephemeral, id_a, a_key.public_key().to_bytes(), gmalg.KEYXCHG_MODE.RESPONDER
    )
    k_a, s_a = a.finish(r_b)
    assert s_a is None
    assert k_a == k_b and len(k_a) == klen


@_KEX
@given(a_key=keys, b_key=keys, id_a=ids, id_b=ids, klen=st.integers(1, 80))
def test_kex_gmalg_initiator_mstcrypt_responder(
    a_key: SM2PrivateKey, b_key: SM2PrivateKey, id_a: bytes, id_b: bytes, klen: int
) -> None:
    a = _gm(a_key, id_a)
    r_a, t_a = a.begin_key_exchange()
    b = KeyExchangeResponder(b_key, a_key.public_key(), own_id=id_b, peer_id=id_a, klen=klen)
    r_b, s_b = b.respond(r_a)
    assert s_b is None and b.key is not None
    k_a = a.end_key_exchange(
        klen, t_a, r_b, id_b, b_key.public_key().to_bytes(), gmalg.KEYXCHG_MODE.INITIATOR
    )
    assert k_a == b.key and len(k_a) == klen


# --- SM3 / SM4 (cheap) ----------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(0, 300))
def test_sm3_agrees_with_gmalg(data: bytes, cut: int) -> None:
    g = gmalg.SM3()
    g.update(data)
    assert sm3(data) == g.value()
    assert SM3(data[:cut]).update(data[cut:]).digest() == g.value()


@settings(max_examples=30, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    iv=st.binary(min_size=16, max_size=16),
    blocks=st.binary(min_size=16, max_size=128).map(lambda b: b[: len(b) // 16 * 16]),
)
def test_sm4_ecb_and_cbc_agree_with_gmalg(key: bytes, iv: bytes, blocks: bytes) -> None:
    g = gmalg.SM4(key)
    ecb = b"".join(g.encrypt(blocks[j : j + 16]) for j in range(0, len(blocks), 16))
    assert sm4.ecb_encrypt_blocks(key, blocks) == ecb
    prev, cbc = iv, b""
    for j in range(0, len(blocks), 16):
        prev = g.encrypt(bytes(x ^ y for x, y in zip(blocks[j : j + 16], prev, strict=True)))
        cbc += prev
    assert sm4.cbc_encrypt(key, iv, blocks, padding=False) == cbc

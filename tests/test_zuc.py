"""ZUC-128, 128-EEA3 and 128-EIA3 against the 3GPP / GB/T 33133 test data, through both
backends (the C extension and the pure-Python fallback), and the backends against each other."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mstcrypt.crypto import zuc
from mstcrypt.crypto.zuc import ZUC128, eea3, eia3, eia3_verify
from mstcrypt.errors import DecodeError, PolicyError, UnsupportedError, VerificationError

VECTORS = json.loads((pathlib.Path(__file__).parent / "vectors" / "zuc.json").read_text())

NO_NATIVE = "native ZUC extension not built (no C compiler at install time)"
BACKENDS = [
    pytest.param("native", marks=pytest.mark.skipif(not zuc.NATIVE_AVAILABLE, reason=NO_NATIVE)),
    "python",
]
needs_native = pytest.mark.skipif(not zuc.NATIVE_AVAILABLE, reason=NO_NATIVE)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _ids(sets: list[dict[str, Any]]) -> list[str]:
    return [f"set{v['test_set']}" for v in sets]


def _params(v: dict[str, Any]) -> tuple[bytes, int, int, int]:
    return bytes.fromhex(v["key"]), int(v["count"], 16), v["bearer"], v["direction"]


# --- ZUC-128 keystream -------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS["zuc128_keystream"], ids=_ids(VECTORS["zuc128_keystream"]))
def test_keystream_vectors(v: dict[str, Any], backend: str) -> None:
    key, iv = bytes.fromhex(v["key"]), bytes.fromhex(v["iv"])
    expected = [int(z, 16) for z in v["z"]]
    assert ZUC128(key, iv, backend=backend).keystream_words(len(expected)) == expected
    ks = ZUC128(key, iv, backend=backend).keystream(4 * len(expected))
    assert ks == bytes.fromhex("".join(v["z"]))
    if "z2000" in v:
        words = ZUC128(key, iv, backend=backend).keystream_words(2000)
        assert words[1999] == int(v["z2000"], 16)
        # The same word reached through several calls of uneven size.
        z = ZUC128(key, iv, backend=backend)
        z.keystream_words(1000)
        z.keystream_words(999)
        assert z.keystream_words(1) == [int(v["z2000"], 16)]


def test_keystream_continuity(backend: str) -> None:
    key, iv = bytes(range(16)), bytes(range(16, 32))
    a = ZUC128(key, iv, backend=backend)
    assert a.keystream(5) + a.keystream(11) == ZUC128(key, iv, backend=backend).keystream(16)
    b = ZUC128(key, iv, backend=backend)
    parts = b"".join(b.keystream(n) for n in (1, 0, 2, 3, 7, 4, 13, 1, 64, 65, 3))
    assert parts == ZUC128(key, iv, backend=backend).keystream(163)


def test_keystream_words_match_bytes() -> None:
    key, iv = b"\x11" * 16, b"\x22" * 16
    words = ZUC128(key, iv).keystream_words(8)
    assert ZUC128(key, iv).keystream(32) == b"".join(w.to_bytes(4, "big") for w in words)
    # keystream_words() after a partial word drops the rest of that word.
    z = ZUC128(key, iv)
    z.keystream(2)
    assert z.keystream_words(2) == words[1:3]


def test_accepts_bytearray_and_memoryview() -> None:
    key, iv = bytes(range(16)), bytes(16)
    ref = ZUC128(key, iv).keystream(8)
    assert ZUC128(bytearray(key), memoryview(iv)).keystream(8) == ref


@pytest.mark.parametrize(
    ("key", "iv", "word"),
    [(bytes(15), bytes(16), "key"), (bytes(17), bytes(16), "key"),
     (bytes(16), bytes(8), "IV"), (bytes(16), b"", "IV")],
)  # fmt: skip
def test_zuc_wrong_lengths(key: bytes, iv: bytes, word: str) -> None:
    with pytest.raises(DecodeError, match=f"{word} must be 16 bytes"):
        ZUC128(key, iv)


def test_zuc_wrong_types_and_counts() -> None:
    with pytest.raises(DecodeError):
        ZUC128("0" * 16, bytes(16))  # type: ignore[arg-type]
    z = ZUC128(bytes(16), bytes(16))
    with pytest.raises(PolicyError):
        z.keystream(-1)
    with pytest.raises(PolicyError):
        z.keystream_words(-1)


@settings(max_examples=30, deadline=None)
@given(key=st.binary(min_size=16, max_size=16), iv=st.binary(min_size=16, max_size=16))
def test_keystream_matches_gmalg(key: bytes, iv: bytes) -> None:
    gmalg = pytest.importorskip("gmalg")
    other = gmalg.ZUC(key, iv)
    expected = b"".join(other.generate() for _ in range(20))
    assert ZUC128(key, iv).keystream(80) == expected


# --- 128-EEA3 ---------------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS["eea3_128"], ids=_ids(VECTORS["eea3_128"]))
def test_eea3_vectors(v: dict[str, Any], backend: str) -> None:
    key, count, bearer, direction = _params(v)
    pt, ct, nbits = bytes.fromhex(v["plaintext"]), bytes.fromhex(v["ciphertext"]), v["length_bits"]
    assert eea3(key, count, bearer, direction, pt, nbits, backend=backend) == ct
    assert eea3(key, count, bearer, direction, ct, nbits, backend=backend) == pt


def test_eea3_empty_and_trailing_bits(backend: str) -> None:
    key = bytes(16)
    assert eea3(key, 0, 0, 0, b"", 0, backend=backend) == b""
    # Bits past LENGTH are zero in the output whatever the input holds there.
    out = eea3(key, 1, 2, 1, b"\xff\xff", 9, backend=backend)
    assert out[1] & 0x7F == 0
    assert out == eea3(key, 1, 2, 1, b"\xff\x80", 9, backend=backend)


@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    count=st.integers(0, 2**32 - 1),
    bearer=st.integers(0, 31),
    direction=st.integers(0, 1),
    length_bits=st.integers(0, 3000),
    data=st.data(),
)
def test_eea3_involution(
    key: bytes, count: int, bearer: int, direction: int, length_bits: int, data: st.DataObject
) -> None:
    nbytes = (length_bits + 7) // 8
    raw = data.draw(st.binary(min_size=nbytes, max_size=nbytes))
    spare = nbytes * 8 - length_bits
    msg = ((int.from_bytes(raw, "big") >> spare) << spare).to_bytes(nbytes, "big")
    ct = eea3(key, count, bearer, direction, msg, length_bits)
    assert len(ct) == nbytes
    assert int.from_bytes(ct, "big") & ((1 << spare) - 1) == 0
    assert eea3(key, count, bearer, direction, ct, length_bits) == msg


# --- 128-EIA3 ---------------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS["eia3_128"], ids=_ids(VECTORS["eia3_128"]))
def test_eia3_vectors(v: dict[str, Any], backend: str) -> None:
    key, count, bearer, direction = _params(v)
    msg, mac, nbits = bytes.fromhex(v["message"]), bytes.fromhex(v["mac"]), v["length_bits"]
    assert eia3(key, count, bearer, direction, msg, nbits, backend=backend) == mac
    eia3_verify(key, count, bearer, direction, msg, nbits, mac, backend=backend)


@pytest.mark.parametrize("v", VECTORS["eia3_128"], ids=_ids(VECTORS["eia3_128"]))
def test_eia3_verify_rejects_tampering(v: dict[str, Any], backend: str) -> None:
    key, count, bearer, direction = _params(v)
    msg, mac, nbits = bytes.fromhex(v["message"]), bytes.fromhex(v["mac"]), v["length_bits"]
    bad_mac = bytes([mac[0] ^ 0x01]) + mac[1:]
    with pytest.raises(VerificationError):
        eia3_verify(key, count, bearer, direction, msg, nbits, bad_mac, backend=backend)
    bad_msg = bytes([msg[0] ^ 0x80]) + msg[1:]  # bit 0 is always within LENGTH (>= 1)
    with pytest.raises(VerificationError):
        eia3_verify(key, count, bearer, direction, bad_msg, nbits, mac, backend=backend)
    last = (nbits - 1) // 8  # the last bit within LENGTH
    flip = 0x80 >> ((nbits - 1) % 8)
    bad_tail = msg[:last] + bytes([msg[last] ^ flip]) + msg[last + 1 :]
    with pytest.raises(VerificationError):
        eia3_verify(key, count, bearer, direction, bad_tail, nbits, mac, backend=backend)
    with pytest.raises(VerificationError):
        eia3_verify(key, count, bearer, direction ^ 1, msg, nbits, mac, backend=backend)


def _eia3_reference(
    key: bytes, count: int, bearer: int, direction: int, message: bytes, length_bits: int
) -> bytes:
    """128-EIA3 literally as written in 3GPP Document 1, one message bit at a time."""
    c = count.to_bytes(4, "big")
    iv = c + bytes([bearer << 3, 0, 0, 0, c[0] ^ (direction << 7)]) + c[1:]
    iv += bytes([bearer << 3, 0, direction << 7, 0])
    n_words = -(-length_bits // 32) + 2
    k = int.from_bytes(ZUC128(key, iv).keystream(4 * n_words), "big")
    total = 32 * n_words

    def z(i: int) -> int:
        return (k >> (total - 32 - i)) & 0xFFFFFFFF

    t = 0
    for i in range(length_bits):
        if message[i // 8] >> (7 - i % 8) & 1:
            t ^= z(i)
    t ^= z(length_bits)
    return (t ^ z(32 * (n_words - 1))).to_bytes(4, "big")


@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    count=st.integers(0, 2**32 - 1),
    bearer=st.integers(0, 31),
    direction=st.integers(0, 1),
    length_bits=st.integers(0, 1200),
    data=st.data(),
)
def test_eia3_matches_bitwise_reference(
    key: bytes, count: int, bearer: int, direction: int, length_bits: int, data: st.DataObject
) -> None:
    nbytes = (length_bits + 7) // 8
    msg = data.draw(st.binary(min_size=nbytes, max_size=nbytes))
    expected = _eia3_reference(key, count, bearer, direction, msg, length_bits)
    for name in zuc.BACKENDS:
        assert eia3(key, count, bearer, direction, msg, length_bits, backend=name) == expected


def test_eia3_ignores_bits_past_length(backend: str) -> None:
    key = bytes(range(16))
    mac = eia3(key, 5, 3, 1, b"\xa0", 3, backend=backend)
    assert mac == eia3(key, 5, 3, 1, b"\xbf", 3, backend=backend)
    # and across a word boundary: 33 bits, the 7 spare bits of the 5th byte set or not
    msg = bytes(range(1, 5)) + b"\x80"
    mac = eia3(key, 9, 1, 0, msg, 33, backend=backend)
    assert mac == eia3(key, 9, 1, 0, msg[:4] + b"\xff", 33, backend=backend)


# --- parameter validation ------------------------------------------------------------------

_KEY = bytes(16)


@pytest.mark.parametrize("fn", [eea3, eia3], ids=["eea3", "eia3"])
@pytest.mark.parametrize(
    ("count", "bearer", "direction", "length_bits"),
    [(-1, 0, 0, 8), (2**32, 0, 0, 8), (0, 32, 0, 8), (0, -1, 0, 8),
     (0, 0, 2, 8), (0, 0, -1, 8), (0, 0, 0, -8)],
)  # fmt: skip
def test_out_of_range_parameters(
    fn: Any, count: int, bearer: int, direction: int, length_bits: int
) -> None:
    with pytest.raises(PolicyError):
        fn(_KEY, count, bearer, direction, b"\x00", length_bits)


@pytest.mark.parametrize("fn", [eea3, eia3], ids=["eea3", "eia3"])
@pytest.mark.parametrize(
    ("data", "length_bits"),
    [(b"\x00", 9), (b"\x00\x00", 8), (b"", 1), (b"\x00", 0), (bytes(4), 33)],
)
def test_data_length_mismatch(fn: Any, data: bytes, length_bits: int) -> None:
    with pytest.raises(DecodeError, match="ceil"):
        fn(_KEY, 0, 0, 0, data, length_bits)


@pytest.mark.parametrize("fn", [eea3, eia3], ids=["eea3", "eia3"])
def test_bad_key(fn: Any) -> None:
    with pytest.raises(DecodeError, match="key must be 16 bytes"):
        fn(bytes(15), 0, 0, 0, b"\x00", 8)
    with pytest.raises(DecodeError, match="key must be 16 bytes"):
        fn(bytes(32), 0, 0, 0, b"", 0)


def test_eia3_verify_bad_mac_length() -> None:
    mac = eia3(_KEY, 0, 0, 0, b"\x00", 1)
    with pytest.raises(DecodeError):
        eia3_verify(_KEY, 0, 0, 0, b"\x00", 1, mac + b"\x00")
    with pytest.raises(DecodeError):
        eia3_verify(_KEY, 0, 0, 0, b"\x00", 1, mac[:3])


# --- native against pure Python ----------------------------------------------------------


@needs_native
@settings(max_examples=150, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    iv=st.binary(min_size=16, max_size=16),
    chunks=st.lists(st.integers(0, 200), max_size=6),
    words=st.integers(0, 70),
)
def test_native_keystream_matches_python(
    key: bytes, iv: bytes, chunks: list[int], words: int
) -> None:
    """Word and byte streams, in calls of any size (the C ring buffer wraps at 16 words)."""
    nat, py = ZUC128(key, iv, backend="native"), ZUC128(key, iv, backend="python")
    assert nat.backend == "native" and py.backend == "python"
    for n in chunks:
        assert nat.keystream(n) == py.keystream(n)
    assert nat.keystream_words(words) == py.keystream_words(words)
    assert nat.keystream(37) == py.keystream(37)


@needs_native
@settings(max_examples=150, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    count=st.integers(0, 2**32 - 1),
    bearer=st.integers(0, 31),
    direction=st.integers(0, 1),
    length_bits=st.one_of(
        st.integers(0, 1100),
        st.integers(0, 40).map(lambda k: 512 * 8 + k - 20),  # around a 64-byte block edge
        st.integers(60_000, 140_000),
    ),
    data=st.data(),
)
def test_native_eea3_eia3_match_python(
    key: bytes, count: int, bearer: int, direction: int, length_bits: int, data: st.DataObject
) -> None:
    nbytes = (length_bits + 7) // 8
    msg = data.draw(st.binary(min_size=nbytes, max_size=nbytes))
    args = (key, count, bearer, direction, msg, length_bits)
    assert eea3(*args, backend="native") == eea3(*args, backend="python")
    assert eia3(*args, backend="native") == eia3(*args, backend="python")


@needs_native
def test_native_accepts_every_bytes_like_input() -> None:
    key, msg = bytearray(range(16)), memoryview(bytes(range(100)))
    for fn in (eea3, eia3):
        assert fn(key, 7, 3, 1, msg, 797, backend="native") == fn(
            bytes(key), 7, 3, 1, bytes(msg), 797, backend="python"
        )


@needs_native
def test_native_checks_lengths_before_calling_c() -> None:
    """The C core reads 16 key bytes and ceil(LENGTH/8) data bytes: short buffers never
    reach it (an out-of-bounds read would otherwise leak memory into the output)."""
    with pytest.raises(DecodeError):
        eea3(bytes(8), 0, 0, 0, bytes(1000), 8000, backend="native")
    with pytest.raises(DecodeError):
        eea3(bytes(16), 0, 0, 0, bytes(999), 8000, backend="native")
    with pytest.raises(DecodeError):
        eia3(bytes(16), 0, 0, 0, bytes(3), 33, backend="native")
    with pytest.raises(DecodeError):
        ZUC128(bytes(16), bytes(15), backend="native")


# --- backend selection ---------------------------------------------------------------------


def test_backend_names() -> None:
    assert zuc.BACKEND in ("native", "python")
    assert zuc.BACKEND in zuc.BACKENDS
    assert zuc.backend_info().startswith(zuc.BACKEND + ":")
    assert ZUC128(bytes(16), bytes(16)).backend == zuc.BACKEND
    assert ("native" in zuc.BACKENDS) == zuc.NATIVE_AVAILABLE


@pytest.mark.parametrize("fn", [eea3, eia3], ids=["eea3", "eia3"])
def test_unknown_backend_refused(fn: Any) -> None:
    with pytest.raises(UnsupportedError):
        fn(bytes(16), 0, 0, 0, b"\x00", 8, backend="asm")
    with pytest.raises(UnsupportedError):
        ZUC128(bytes(16), bytes(16), backend="Native")


def _backend_in_subprocess(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != zuc.ENV_VAR}
    if value is not None:
        env[zuc.ENV_VAR] = value
    code = (
        "from mstcrypt.crypto import zuc\n"
        "print(zuc.BACKEND, zuc.ZUC128(bytes(16), bytes(16)).keystream(4).hex())"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )


def test_env_var_forces_python_fallback() -> None:
    p = _backend_in_subprocess("python")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["python", "27bede74"]  # 3GPP set 1, first key-word


def test_env_var_default_prefers_native() -> None:
    for value in (None, "auto", ""):
        p = _backend_in_subprocess(value)
        assert p.returncode == 0, p.stderr
        expected = "native" if zuc.NATIVE_AVAILABLE else "python"
        assert p.stdout.split() == [expected, "27bede74"]


def test_env_var_native_or_bogus() -> None:
    p = _backend_in_subprocess("native")
    if zuc.NATIVE_AVAILABLE:
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == ["native", "27bede74"]
    else:
        assert p.returncode != 0 and "BackendError" in p.stderr
    p = _backend_in_subprocess("fastest")
    assert p.returncode != 0
    assert "BackendError" in p.stderr and "MSTCRYPT_ZUC_BACKEND" in p.stderr


@needs_native
@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    count=st.integers(0, 2**32 - 1),
    bearer=st.integers(0, 31),
    direction=st.integers(0, 1),
    length_bits=st.one_of(
        st.integers(0, 300),
        st.integers(-3, 3).map(lambda d: 64 * 8 * 4 + d),  # around a group of 8 chunks
        st.integers(0, 40_000),
    ),
    data=st.data(),
)
def test_native_eia3_clmul_matches_portable(
    key: bytes, count: int, bearer: int, direction: int, length_bits: int, data: st.DataObject
) -> None:
    """On x86 the C EIA3 uses carry-less multiplication; it must agree with the portable
    word-at-a-time C code (and, through the tests above, with Python)."""
    from mstcrypt.crypto._zuc_native import lib  # type: ignore[attr-defined]

    nbytes = (length_bits + 7) // 8
    msg = data.draw(st.binary(min_size=nbytes, max_size=nbytes))
    args = (key, count, bearer, direction, msg, length_bits)
    fast = eia3(*args, backend="native")
    lib.mst_zuc_force_portable = 1
    try:
        portable = eia3(*args, backend="native")
    finally:
        lib.mst_zuc_force_portable = 0
    assert fast == portable

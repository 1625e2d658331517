"""Pure-Python ZUC-128, 128-EEA3 and 128-EIA3: the fallback backend of
:mod:`mstcrypt.crypto.zuc` (used when the C extension is not built, or when
``MSTCRYPT_ZUC_BACKEND=python``), and the reference the native backend is tested against.

Implemented from the specifications:

* ZUC-128: GB/T 33133.1 (GM/T 0001.1) = ETSI/SAGE "Specification of the 3GPP Confidentiality
  and Integrity Algorithms 128-EEA3 & 128-EIA3, Document 2: ZUC Specification" v1.6.
* 128-EEA3 / 128-EIA3: GB/T 33133.2 / 33133.3 = 3GPP Document 1 (lengths are in *bits*).

The keystream generator keeps the LFSR and the F registers in local variables, and replaces
both linear transforms L1/L2 and the S-layer with byte-indexed tables already shifted into
their 32-bit lanes, so a key-word costs a few dozen integer operations. EEA3 XORs the whole
buffer at once through ``int.from_bytes`` and EIA3 is evaluated bit-sliced on big integers
(32 passes over the message, not one per bit). Expect a few MB/s.

Nothing here validates its arguments: :mod:`mstcrypt.crypto.zuc` does that before calling in.
"""

from __future__ import annotations

import sys
from array import array

__all__ = ["Core", "eea3", "eia3"]

_MASK32 = 0xFFFFFFFF
_P31 = 0x7FFFFFFF  # 2^31 - 1, the LFSR modulus

# Table 3.1 of the ZUC specification: the S-box S0 (row = high nibble, column = low nibble).
_S0 = bytes.fromhex(
    "3e725b47cae0003304d1549809b96dcb"
    "7b1bf932af9d6aa5b82dfc1d08530390"
    "4d4e8499e4ced991ddb685488b296eac"
    "cdc1f81e734369c6b5bdfd396320d438"
    "767db2a7cfed57c5f32cbb142106559b"
    "e3ef5e314f7f5aa40d8251495fba581c"
    "4a16d517a892241f8cffd8ae2e01d3ad"
    "3b4bda46ebc9de9a8f87d73a806f2fc8"
    "b1b437f70a2213287ccc3c89c7c39656"
    "07bf7ef00b2b975235417961a64c10fe"
    "bc2695888ab0a3fbc01894f2e1e5e95d"
    "d0dc1166645cec59427512f5749caa23"
    "0e86abbe2a02e767e644a26cc2939ff1"
    "f6fa36d250689e6271153dd640c4e20f"
    "8e83776b25053f0c30ea70b7a1e8a965"
    "8d271adb81b3a0f4457a19dfee783460"
)
# Table 3.2: the S-box S1.
_S1 = bytes.fromhex(
    "55c263713bc847869f3cda5b29aafd77"
    "8cc5940ca61a1300e3a8167240f9f842"
    "4426689681d9453e1076c6a78b3943e1"
    "3ab5562ac06db3052266bfdc0bfa6248"
    "dd20110636c9c1cff62752bb69f5d487"
    "7f844cd29c57a4bc4f9adffed68d7aeb"
    "2b53d85ca11417fb23d57d3067730809"
    "eeb7703f61b2198e4ee54b938f5ddba9"
    "adf1ae2ecb0dfcf42d466e1d97e8d1e9"
    "4d37a5755e839eab829db91ce0cd4989"
    "01b6bd5824a25f387899159050b895e4"
    "d091c7ceed0fb46fa0ccf0024a79c3de"
    "a3efea51e66b18ec1b2c80f774e7ff21"
    "5a6a541e41319235c433070aba7e0e34"
    "88b1987cf33d606c7bcad31f32650428"
    "64be859b2f598ad7b025acaf1203e2f2"
)

# Section 3.5: the 15-bit key-loading constants d0..d15.
_D = (
    0x44D7, 0x26BC, 0x626B, 0x135E, 0x5789, 0x35E2, 0x7135, 0x09AF,
    0x4D78, 0x2F13, 0x6BC4, 0x1AF1, 0x5E26, 0x3C4D, 0x789A, 0x47AC,
)  # fmt: skip


def _rotl32(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK32


def _l1(x: int) -> int:
    """Linear transform L1 of section 3.4.2."""
    return x ^ _rotl32(x, 2) ^ _rotl32(x, 10) ^ _rotl32(x, 18) ^ _rotl32(x, 24)


def _l2(x: int) -> int:
    """Linear transform L2 of section 3.4.2."""
    return x ^ _rotl32(x, 8) ^ _rotl32(x, 14) ^ _rotl32(x, 22) ^ _rotl32(x, 30)


# The 32-bit S-box S = (S0, S1, S0, S1) of section 3.4.1 as four lanes already shifted into
# place: S(x) = SL3[x >> 24] | SL2[(x >> 16) & 255] | SL1[(x >> 8) & 255] | SL0[x & 255].
_SL3 = tuple(b << 24 for b in _S0)
_SL2 = tuple(b << 16 for b in _S1)
_SL1 = tuple(b << 8 for b in _S0)
_SL0 = tuple(_S1)
# L1 and L2 are GF(2)-linear, so L(x) = XOR over the bytes of x of L(byte << 8i).
_L1_LANES = tuple(tuple(_l1(b << (8 * i)) for b in range(256)) for i in range(4))
_L2_LANES = tuple(tuple(_l2(b << (8 * i)) for b in range(256)) for i in range(4))

_WORD_CODE = "I" if array("I").itemsize == 4 else "L"
_SWAP_TO_BE = sys.byteorder == "little"


def _words_to_bytes(words: list[int]) -> bytes:
    """Serialise 32-bit words big-endian, in one C-level pass."""
    buf = array(_WORD_CODE, words)
    if _SWAP_TO_BE:
        buf.byteswap()
    return buf.tobytes()


class Core:
    """The ZUC-128 state after key/IV loading and initialisation; key-words on demand."""

    __slots__ = ("_lfsr", "_r1", "_r2")

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._initialise(key, iv)

    def _initialise(self, key: bytes, iv: bytes) -> None:
        # Key loading (3.5): s_i = k_i || d_i || iv_i (31 bits).
        s = [(key[i] << 23) | (_D[i] << 8) | iv[i] for i in range(16)]
        r1 = r2 = 0
        t3, t2, t1, t0 = _SL3, _SL2, _SL1, _SL0
        a0, a1, a2, a3 = _L1_LANES
        b0, b1, b2, b3 = _L2_LANES
        # 32 rounds of the initialisation stage (3.6.1), then one working-stage round whose
        # F output is discarded (3.6.2). Same tables as words(), spelt out step by step.
        for rnd in range(33):
            x0 = ((s[15] & 0x7FFF8000) << 1) | (s[14] & 0xFFFF)
            x1 = ((s[11] & 0xFFFF) << 16) | (s[9] >> 15)
            x2 = ((s[7] & 0xFFFF) << 16) | (s[5] >> 15)
            w = ((x0 ^ r1) + r2) & _MASK32
            w1 = (r1 + x1) & _MASK32
            w2 = r2 ^ x2
            u = a3[(w1 >> 8) & 255] ^ a2[w1 & 255] ^ a1[w2 >> 24] ^ a0[(w2 >> 16) & 255]
            v = b3[(w2 >> 8) & 255] ^ b2[w2 & 255] ^ b1[w1 >> 24] ^ b0[(w1 >> 16) & 255]
            r1 = t3[u >> 24] | t2[(u >> 16) & 255] | t1[(u >> 8) & 255] | t0[u & 255]
            r2 = t3[v >> 24] | t2[(v >> 16) & 255] | t1[(v >> 8) & 255] | t0[v & 255]
            # 2^15 s15 + 2^17 s13 + 2^21 s10 + 2^20 s4 + (1 + 2^8) s0 (mod 2^31 - 1)
            f = (s[15] << 15) + (s[13] << 17) + (s[10] << 21) + (s[4] << 20) + s[0] * 257
            if rnd < 32:
                f += w >> 1  # LFSRWithInitialisationMode(W >> 1)
            s.append(f % _P31 or _P31)  # a zero cell is represented by 2^31 - 1
            del s[0]
        self._lfsr = tuple(s)
        self._r1 = r1
        self._r2 = r2

    def words(self, n: int) -> list[int]:
        """Clock the working stage ``n`` times and return the ``n`` key-words."""
        s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15 = self._lfsr
        r1 = self._r1
        r2 = self._r2
        out: list[int] = []
        emit = out.append
        t3, t2, t1, t0 = _SL3, _SL2, _SL1, _SL0
        a0, a1, a2, a3 = _L1_LANES
        b0, b1, b2, b3 = _L2_LANES
        m32 = _MASK32
        p31 = _P31
        for _ in range(n):
            # Bit reorganisation + F. W1 is left unreduced: only its bytes are read below.
            w1 = r1 + (((s11 & 0xFFFF) << 16) | (s9 >> 15))
            w2 = r2 ^ (((s7 & 0xFFFF) << 16) | (s5 >> 15))
            # Z = F(X0, X1, X2) ^ X3
            emit(
                (((((s15 & 0x7FFF8000) << 1) | (s14 & 0xFFFF)) ^ r1) + r2 & m32)
                ^ (((s2 & 0xFFFF) << 16) | (s0 >> 15))
            )
            # u = L1(W1L || W2H), v = L2(W2L || W1H), byte by byte.
            u = a3[(w1 >> 8) & 255] ^ a2[w1 & 255] ^ a1[w2 >> 24] ^ a0[(w2 >> 16) & 255]
            v = b3[(w2 >> 8) & 255] ^ b2[w2 & 255] ^ b1[(w1 >> 24) & 255] ^ b0[(w1 >> 16) & 255]
            r1 = t3[u >> 24] | t2[(u >> 16) & 255] | t1[(u >> 8) & 255] | t0[u & 255]
            r2 = t3[v >> 24] | t2[(v >> 16) & 255] | t1[(v >> 8) & 255] | t0[v & 255]
            # LFSRWithWorkMode
            s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15 = (
                s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15,
                ((s15 << 15) + (s13 << 17) + (s10 << 21) + (s4 << 20) + s0 * 257) % p31 or p31,
            )  # fmt: skip
        self._lfsr = (s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15)
        self._r1 = r1
        self._r2 = r2
        return out

    def block(self, nwords: int) -> bytes:
        """The next ``nwords`` key-words serialised big-endian."""
        return _words_to_bytes(self.words(nwords))


def eea3(
    key: bytes, count: int, bearer: int, direction: int, buf: bytes, length_bits: int
) -> bytes:
    """128-EEA3 of ``buf`` (exactly ``ceil(length_bits / 8)`` bytes, already checked)."""
    head = count.to_bytes(4, "big") + bytes((bearer << 3 | direction << 2, 0, 0, 0))
    nbytes = len(buf)
    if nbytes == 0:
        return b""
    ks = Core(key, head + head).block((nbytes + 3) >> 2)[:nbytes]
    out = int.from_bytes(buf, "big") ^ int.from_bytes(ks, "big")
    spare = (nbytes << 3) - length_bits
    if spare:
        out &= ~((1 << spare) - 1)
    return out.to_bytes(nbytes, "big")


def _eia3_iv(count: int, bearer: int, direction: int) -> bytes:
    c = count.to_bytes(4, "big")
    return bytes(
        (
            c[0], c[1], c[2], c[3], bearer << 3, 0, 0, 0,
            c[0] ^ (direction << 7), c[1], c[2], c[3], bearer << 3, 0, direction << 7, 0,
        )
    )  # fmt: skip


def eia3(key: bytes, count: int, bearer: int, direction: int, buf: bytes, length_bits: int) -> int:
    """128-EIA3 MAC of ``buf`` as a 32-bit integer (arguments already checked)."""
    n = (length_bits + 31) >> 5  # message words; the spec's L = n + 2 key-words
    ks_words = Core(key, _eia3_iv(count, bearer, direction)).words(n + 2)

    # z_i is the 32-bit keystream window starting at bit i. With K = W_0 || ... || W_n,
    # the word j of (K >> (32 - b)) (counted from the top, n words) is z_{32j+b}. So
    #   T = XOR_{i : m_i = 1} z_i = fold( XOR_b (K >> (32 - b)) & sel_b )
    # where sel_b has word j all-ones iff message bit 32j+b is set: 32 big-int passes.
    tag = 0
    if n:
        m = int.from_bytes(buf.ljust(n << 2, b"\0"), "big")
        spare = (n << 5) - length_bits
        m = (m >> spare) << spare  # drop bits past LENGTH
        k = int.from_bytes(_words_to_bytes(ks_words[: n + 1]), "big")
        ones = int.from_bytes(b"\0\0\0\1" * n, "big")
        acc = 0
        for b in range(32):
            sel = ((m >> (31 - b)) & ones) * _MASK32
            if sel:
                acc ^= (k >> (32 - b)) & sel
        words = n
        while words > 1:  # XOR all 32-bit words of acc together
            half = (words + 1) >> 1
            acc = (acc >> (half << 5)) ^ (acc & ((1 << (half << 5)) - 1))
            words = half
        tag = acc
    j, b = length_bits >> 5, length_bits & 31
    tag ^= (((ks_words[j] << 32) | ks_words[j + 1]) >> (32 - b)) & _MASK32  # z_LENGTH
    tag ^= ks_words[n + 1]  # z_{32(L-1)}
    return tag

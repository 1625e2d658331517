"""An independent, deliberately plain reference of the private SRTP profiles for
differential tests: block cipher, hash and keystream from gmalg (a pure-Python SM
implementation this project did not write), HMAC, CTR, GHASH/GCM, EEA3/EIA3 and the
SRTP framing written out here from the specifications (RFC 2104, RFC 3711, RFC 7714,
3GPP 128-EEA3/EIA3 and docs/voice.md), sharing no code with mstcrypt.protocols.srtp.
"""

from __future__ import annotations

import gmalg


def sm3(data: bytes) -> bytes:
    h = gmalg.SM3()
    h.update(data)
    return h.value()


def hmac_sm3(key: bytes, msg: bytes) -> bytes:
    if len(key) > 64:
        key = sm3(key)
    key = key.ljust(64, b"\x00")
    ipad = bytes(b ^ 0x36 for b in key)
    opad = bytes(b ^ 0x5C for b in key)
    return sm3(opad + sm3(ipad + msg))


def sm4_block(key: bytes, block: bytes) -> bytes:
    return gmalg.SM4(key).encrypt(block)


def sm4_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    out = bytearray()
    c = int.from_bytes(iv, "big")
    for off in range(0, len(data), 16):
        ks = sm4_block(key, (c % (1 << 128)).to_bytes(16, "big"))
        out += bytes(a ^ b for a, b in zip(data[off : off + 16], ks, strict=False))
        c += 1
    return bytes(out)


def zuc_words(key: bytes, iv: bytes, n: int) -> list[int]:
    z = gmalg.ZUC(key, iv)
    return [int.from_bytes(z.generate(), "big") for _ in range(n)]


def kdf(cipher: str, mk: bytes, ms: bytes, label: int, n: int, ssrc: int = 0, rh: int = 0) -> bytes:
    salt = ms.ljust(14, b"\x00")
    key_id = bytearray(14)
    key_id[0:4] = ssrc.to_bytes(4, "big")
    key_id[4:6] = rh.to_bytes(2, "big")
    key_id[7] = label
    x = bytes(a ^ b for a, b in zip(key_id, salt, strict=True))
    if cipher == "zuc":
        words = zuc_words(mk, x + b"\x00\x00", (n + 3) // 4)
        return b"".join(w.to_bytes(4, "big") for w in words)[:n]
    return sm4_ctr(mk, x + b"\x00\x00", bytes(n))


def eea3(ck: bytes, count: int, bearer: int, direction: int, data: bytes) -> bytes:
    iv = count.to_bytes(4, "big") + bytes([(bearer << 3) | (direction << 2), 0, 0, 0])
    words = zuc_words(ck, iv + iv, (len(data) + 3) // 4)
    ks = b"".join(w.to_bytes(4, "big") for w in words)
    return bytes(a ^ b for a, b in zip(data, ks, strict=False))


def eia3(ik: bytes, count: int, bearer: int, direction: int, msg: bytes) -> bytes:
    nbits = len(msg) * 8
    c = count.to_bytes(4, "big")
    iv = bytearray(16)
    iv[0:4] = c
    iv[4] = bearer << 3
    iv[8] = c[0] ^ (direction << 7)
    iv[9:12] = c[1:4]
    iv[12] = iv[4]
    iv[14] = direction << 7
    nw = (nbits + 31) // 32 + 2
    z = 0
    for w in zuc_words(ik, bytes(iv), nw):
        z = (z << 32) | w
    total = nw * 32

    def window(i: int) -> int:
        return (z >> (total - 32 - i)) & 0xFFFFFFFF

    t = 0
    m = int.from_bytes(msg, "big")
    for i in range(nbits):
        if (m >> (nbits - 1 - i)) & 1:
            t ^= window(i)
    t ^= window(nbits)
    t ^= window(32 * (nw - 1))
    return t.to_bytes(4, "big")


def _gf_mul(x: int, y: int) -> int:
    r = 0xE1 << 120
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ r if v & 1 else v >> 1
    return z


def sm4_gcm(key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> bytes:
    h = int.from_bytes(sm4_block(key, bytes(16)), "big")
    j0 = nonce + b"\x00\x00\x00\x01"
    ct = sm4_ctr(key, (int.from_bytes(j0, "big") + 1).to_bytes(16, "big"), pt)

    def blocks(b: bytes) -> list[int]:
        b = b + bytes(-len(b) % 16)
        return [int.from_bytes(b[i : i + 16], "big") for i in range(0, len(b), 16)]

    y = 0
    lens = ((len(aad) * 8) << 64) | (len(ct) * 8)
    for blk in [*blocks(aad), *blocks(ct), lens]:
        y = _gf_mul(y ^ blk, h)
    s = int.from_bytes(sm4_block(key, j0), "big")
    return ct + (y ^ s).to_bytes(16, "big")


def protect(profile: str, mk: bytes, ms: bytes, packet: bytes, hlen: int, roc: int) -> bytes:
    """SRTP-protect ``packet`` (header of ``hlen`` bytes) at rollover counter ``roc``."""
    seq = int.from_bytes(packet[2:4], "big")
    ssrc = int.from_bytes(packet[8:12], "big")
    index = (roc << 16) | seq
    header, payload = packet[:hlen], packet[hlen:]
    if profile == "MST_SM4_CM_128_HMAC_SM3_80":
        ke, ka = kdf("sm4", mk, ms, 0, 16), kdf("sm4", mk, ms, 1, 32)
        ks = kdf("sm4", mk, ms, 2, 14)
        iv = ((int.from_bytes(ks, "big") << 16) ^ (ssrc << 64) ^ (index << 16)).to_bytes(16, "big")
        m = header + sm4_ctr(ke, iv, payload)
        return m + hmac_sm3(ka, m + roc.to_bytes(4, "big"))[:10]
    if profile == "MST_AEAD_SM4_128_GCM":
        ke, ks = kdf("sm4", mk, ms, 0, 16), kdf("sm4", mk, ms, 2, 12)
        raw = b"\x00\x00" + ssrc.to_bytes(4, "big") + roc.to_bytes(4, "big") + packet[2:4]
        nonce = bytes(a ^ b for a, b in zip(raw, ks, strict=True))
        return header + sm4_gcm(ke, nonce, payload, header)
    if profile == "MST_ZUC_128_EEA3_EIA3_32":
        ke = kdf("zuc", mk, ms, 0, 16, ssrc, roc >> 16)
        ka = kdf("zuc", mk, ms, 1, 16, ssrc, roc >> 16)
        count = ((roc & 0xFFFF) << 16) | seq
        m = header + eea3(ke, count, 0, 0, payload)
        return m + eia3(ka, count, 0, 0, m + roc.to_bytes(4, "big"))
    raise ValueError(profile)


def protect_rtcp(profile: str, mk: bytes, ms: bytes, packet: bytes, index: int) -> bytes:
    ssrc = int.from_bytes(packet[4:8], "big")
    trailer = (0x80000000 | index).to_bytes(4, "big")
    if profile == "MST_SM4_CM_128_HMAC_SM3_80":
        ke, ka = kdf("sm4", mk, ms, 3, 16), kdf("sm4", mk, ms, 4, 32)
        ks = kdf("sm4", mk, ms, 5, 14)
        iv = ((int.from_bytes(ks, "big") << 16) ^ (ssrc << 64) ^ (index << 16)).to_bytes(16, "big")
        m = packet[:8] + sm4_ctr(ke, iv, packet[8:]) + trailer
        return m + hmac_sm3(ka, m)[:10]
    if profile == "MST_AEAD_SM4_128_GCM":
        ke, ks = kdf("sm4", mk, ms, 3, 16), kdf("sm4", mk, ms, 5, 12)
        raw = b"\x00\x00" + ssrc.to_bytes(4, "big") + b"\x00\x00" + index.to_bytes(4, "big")
        nonce = bytes(a ^ b for a, b in zip(raw, ks, strict=True))
        return packet[:8] + sm4_gcm(ke, nonce, packet[8:], packet[:8] + trailer) + trailer
    if profile == "MST_ZUC_128_EEA3_EIA3_32":
        ke = kdf("zuc", mk, ms, 3, 16, ssrc, 0)
        ka = kdf("zuc", mk, ms, 4, 16, ssrc, 0)
        m = packet[:8] + eea3(ke, index, 1, 0, packet[8:]) + trailer
        return m + eia3(ka, index, 1, 0, m)
    raise ValueError(profile)

"""An independent reading of the WAI and WPI layouts, for cross-checking the product code.

Written from the field tables (GB 15629.11 §8.1.4 as Wireshark's WAI dissector and the
Realtek WPI driver lay them out), in a different style from
``mstcrypt.protocols.wai``: each message is a list of (kind, value) items flattened by
one function; WPI uses SM4 single-block encryption (ECB) to run OFB and CBC-MAC by hand.
"""

from __future__ import annotations

import struct

from mstcrypt.crypto.sm4 import SM4ECB


def flatten(items: list[tuple[str, object]]) -> bytes:
    out = bytearray()
    for kind, value in items:
        if kind == "u8":
            out.append(int(value))  # type: ignore[call-overload]
        elif kind == "raw":
            out += value  # type: ignore[operator]
        elif kind == "tlv16":  # id(2) len(2) data
            ident, data = value  # type: ignore[misc]
            out += struct.pack(">HH", ident, len(data)) + data
        elif kind == "ecdh":  # id(1) len(2) data
            ident, data = value  # type: ignore[misc]
            out += struct.pack(">BH", ident, len(data)) + data
        elif kind == "key":  # len(1) data
            out += bytes([len(value)]) + value  # type: ignore[arg-type]
        elif kind == "attr":  # type(1) len(2) body
            t, body = value  # type: ignore[misc]
            out += struct.pack(">BH", t, len(body)) + body
        else:
            raise AssertionError(kind)
    return bytes(out)


def header(subtype: int, body_len: int, seq: int, frag: int = 0, flag: int = 0) -> bytes:
    return struct.pack(">HBBHHHBB", 1, 1, subtype, 0, 12 + body_len, seq, frag, flag)


def signature(identity: bytes, hash_id: int, sig_id: int, oid: bytes, value: bytes) -> bytes:
    alg = bytes([hash_id, sig_id, 1]) + struct.pack(">H", len(oid)) + oid
    body = flatten([("tlv16", (1, identity))]) + struct.pack(">H", len(alg)) + alg
    body += struct.pack(">H", len(value)) + value
    return flatten([("attr", (1, body))])


def kd_hmac(hmac_fn, key: bytes, text: bytes, length: int) -> bytes:  # type: ignore[no-untyped-def]
    blocks = []
    prev = text
    while sum(map(len, blocks)) < length:
        prev = hmac_fn(key, prev)
        blocks.append(prev)
    return b"".join(blocks)[:length]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def wpi_protect(
    ek: bytes, ck: bytes, pn_field: bytes, key_idx: int, pseudo: bytes, data: bytes
) -> bytes:
    """pn_field: the 16 bytes as sent; IV is their reverse."""
    e = SM4ECB(ek).encrypt_blocks
    c = SM4ECB(ck).encrypt_blocks
    iv = pn_field[::-1]
    # CBC-MAC
    y = c(iv)
    for part in (pseudo, data):
        for i in range(0, len(part), 16):
            blk = part[i : i + 16]
            blk = blk + bytes(16 - len(blk))
            y = c(_xor(y, blk))
    plain = data + y
    # OFB
    out = bytearray()
    s = iv
    for i in range(0, len(plain), 16):
        s = e(s)
        chunk = plain[i : i + 16]
        out += _xor(chunk, s[: len(chunk)])
    return bytes([key_idx, 0]) + pn_field + bytes(out)


def vectors() -> dict[str, object]:
    """The content of wapi_vectors.json (``python tests/wapi/wapi_kit.py`` rewrites it)."""
    import hashlib
    import hmac

    from mstcrypt.crypto.sm3 import hmac_sm3

    def h256(k: bytes, d: bytes) -> bytes:
        return hmac.new(k, d, hashlib.sha256).digest()

    out: dict[str, list[dict[str, object]] | str] = {
        "description": "WAPI vectors computed by tests/wapi/wapi_kit.py (an independent reading "
        "of the layouts); checked against mstcrypt.protocols.wai by "
        "tests/wapi/test_wapi_vectors.py",
        "kd": [],
        "wpi": [],
    }
    for name, fn in (("sha256", h256), ("sm3", hmac_sm3)):
        key = bytes(range(24))
        text = b"base key expansion for key and additional nonce"
        out["kd"].append(  # type: ignore[union-attr]
            {
                "hash": name,
                "key": key.hex(),
                "text": text.hex(),
                "length": 48,
                "out": kd_hmac(fn, key, text, 48).hex(),
            }
        )
    ek = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    ck = bytes.fromhex("101112131415161718191a1b1c1d1e1f")
    pn = int.from_bytes(bytes.fromhex("5c36" * 8), "big") + 1
    for size, qos in ((0, None), (17, None), (64, "0500"), (1500, "0500")):
        data = bytes((i * 7 + 3) & 0xFF for i in range(size))
        fc = "8842" if qos else "0842"
        a1, a2, a3 = "020000000002", "020000000001", "020000000001"
        fcb = bytes.fromhex(fc)
        ph = bytes([fcb[0] & 0x8F, (fcb[1] & 0xC7) | 0x40]) + bytes.fromhex(a1 + a2)
        ph += bytes([0x35 & 0x0F, 0]) + bytes.fromhex(a3) + bytes(6)
        if qos:
            ph += bytes.fromhex(qos)
        ph += bytes([1, 0]) + size.to_bytes(2, "big")
        body = wpi_protect(ek, ck, pn.to_bytes(16, "little"), 1, ph, data)
        out["wpi"].append(  # type: ignore[union-attr]
            {
                "uek": ek.hex(),
                "uck": ck.hex(),
                "pn": f"{pn:032x}",
                "key_idx": 1,
                "fc": fc,
                "addr1": a1,
                "addr2": a2,
                "addr3": a3,
                "seq_ctl": "3512",
                "qos": qos,
                "data": data.hex(),
                "pseudo_header": ph.hex(),
                "body": body.hex(),
            }
        )
    return out


if __name__ == "__main__":
    import json
    from pathlib import Path

    (Path(__file__).parent / "wapi_vectors.json").write_text(json.dumps(vectors(), indent=1))

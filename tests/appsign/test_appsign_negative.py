"""Hostile and malformed packages, built byte by byte (no apksigner needed): every one is
refused by the strict parser with a typed error and its code, never a crash; and the
content digest streams in constant memory."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from appsign_kit import build_apk, channel_pki, manifest_axml

from mstcrypt.apps import appsign
from mstcrypt.apps.appsign.format import (
    CHANNEL_PAIR_ID,
    DEVELOPER_PAIR_ID,
    ChannelLayer,
    DeveloperLayer,
)
from mstcrypt.apps.appsign.manifest import parse_axml
from mstcrypt.apps.appsign.package import (
    APK_SIG_BLOCK_MAGIC,
    MAX_PAIRS,
    PADDING_PAIR_ID,
    V2_PAIR_ID,
    content_digest,
    read_layout,
    write_with_pairs,
)

FAKE_V2 = (V2_PAIR_ID, b"\x00" * 40)


def _pairs(*pairs: tuple[int, bytes]) -> bytes:
    return b"".join(struct.pack("<QI", len(v) + 4, i) + v for i, v in pairs)


def _block(body: bytes, *, header: int | None = None, footer: int | None = None) -> bytes:
    size = len(body) + 24
    h = size if header is None else header
    f = size if footer is None else footer
    return struct.pack("<Q", h) + body + struct.pack("<Q", f) + APK_SIG_BLOCK_MAGIC


def _zip(entries: int = 2, package: str = "cn.example.neg", version: int = 3) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("AndroidManifest.xml", manifest_axml(package, version), zipfile.ZIP_DEFLATED)
        for i in range(entries - 1):
            z.writestr(f"assets/{i}.bin", bytes(range(256)) * 4)
    return buf.getvalue()


def _with_block(zdata: bytes, block: bytes) -> bytes:
    """Insert ``block`` before the central directory and fix the EOCD offset."""
    eocd = zdata.rindex(b"PK\x05\x06")
    (cd,) = struct.unpack_from("<I", zdata, eocd + 16)
    out = bytearray(zdata[:cd] + block + zdata[cd:])
    struct.pack_into("<I", out, eocd + len(block) + 16, cd + len(block))
    return bytes(out)


def _layout(data: bytes):
    return read_layout(io.BytesIO(data))


def _code(data: bytes) -> str:
    with pytest.raises(appsign.PackageFormatError) as e:
        _layout(data)
    return e.value.code


def test_well_formed_synthetic_block_parses():
    data = _with_block(_zip(), _block(_pairs(FAKE_V2, (0x1234, b"x"))))
    lay = _layout(data)
    assert [p.id for p in lay.pairs] == [V2_PAIR_ID, 0x1234]
    assert lay.pair(0x1234).length == 1


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        (
            "footer size beyond the file start",
            lambda z: _with_block(z, _block(_pairs(FAKE_V2), footer=1 << 40)),
            "bad-signing-block",
        ),
        (
            "footer size below the minimum",
            lambda z: _with_block(z, _block(_pairs(FAKE_V2), footer=8)),
            "bad-signing-block",
        ),
        (
            "header and footer sizes disagree",
            lambda z: _with_block(z, _block(_pairs(FAKE_V2), header=1)),
            "bad-signing-block",
        ),
        (
            "pair length past the block",
            lambda z: _with_block(z, _block(struct.pack("<QI", 1 << 62, V2_PAIR_ID) + bytes(40))),
            "bad-pair",
        ),
        (
            "pair length below 4",
            lambda z: _with_block(z, _block(struct.pack("<QI", 3, V2_PAIR_ID) + bytes(40))),
            "bad-pair",
        ),
        (
            "overlapping pairs (length one short)",
            lambda z: _with_block(
                z, _block(struct.pack("<QI", 43, V2_PAIR_ID) + bytes(40) + _pairs((7, b"abc")))
            ),
            "bad-pair",
        ),
        (
            "stray bytes after the pairs",
            lambda z: _with_block(z, _block(_pairs(FAKE_V2) + b"\x01\x02\x03")),
            "bad-pair",
        ),
        (
            "duplicate pair IDs",
            lambda z: _with_block(z, _block(_pairs(FAKE_V2, FAKE_V2))),
            "duplicate-pair",
        ),
        (
            "too many pairs",
            lambda z: _with_block(
                z, _block(_pairs(FAKE_V2, *((i + 1, b"") for i in range(MAX_PAIRS))))
            ),
            "bad-signing-block",
        ),
        (
            "block without v2/v3 signature",
            lambda z: _with_block(z, _block(_pairs((0x1234, b"x")))),
            "no-apk-signature",
        ),
        ("plain zip", lambda z: z, "no-signing-block"),
        ("truncated in the middle", lambda z: z[: len(z) // 2], "not-a-zip"),
        ("empty file", lambda z: b"", "not-a-zip"),
    ],
)
def test_hostile_signing_blocks(name, make, code):
    assert _code(make(_zip())) == code, name


def _eocd_patch(data: bytes, field: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, data.rindex(b"PK\x05\x06") + field, value)
    return bytes(out)


def test_hostile_end_records():
    good = _with_block(_zip(3), _block(_pairs(FAKE_V2)))
    assert _code(_eocd_patch(good, 16, "<I", 0xFFFFFFFF)) == "zip64-unsupported"
    assert _code(_eocd_patch(good, 10, "<H", 0xFFFF)) == "zip64-unsupported"
    assert _code(_eocd_patch(good, 4, "<H", 1)) == "multi-disk-unsupported"
    assert _code(_eocd_patch(good, 12, "<I", 10)) == "bad-eocd"  # CD size
    assert _code(_eocd_patch(good, 8, "<H", 2)) == "multi-disk-unsupported"
    # central directory count says 2 but holds 3 headers
    both = _eocd_patch(_eocd_patch(good, 8, "<H", 2), 10, "<H", 2)
    assert _code(both) == "bad-central-directory"
    # a central directory header pointing into the signing block (overlap)
    cd = good.rindex(b"PK\x01\x02")
    out = bytearray(good)
    struct.pack_into("<I", out, cd + 42, good.index(APK_SIG_BLOCK_MAGIC) - 30)
    assert _code(bytes(out)) == "bad-central-directory"
    # a comment that makes the EOCD not end the file
    assert _code(good + b"junk") == "not-a-zip"


def _layer_package(value: bytes, pair_id: int = DEVELOPER_PAIR_ID) -> bytes:
    return _with_block(_zip(), _block(_pairs(FAKE_V2, (pair_id, value))))


def test_hostile_layers(tmp_path):
    store = channel_pki("neg-store")
    good_dev = tmp_path / "good.apk"
    good_dev.write_bytes(_with_block(_zip(), _block(_pairs(FAKE_V2))))
    appsign.sign_developer(
        good_dev,
        tmp_path / "dev.apk",
        signer=store.developer.signer(),
        certificates=[store.developer.cert],
    )
    value = appsign.inspect(tmp_path / "dev.apk").developer.encode()
    assert DeveloperLayer.decode(value).certificate == store.developer.cert
    cases = {
        "truncated": value[:-1],
        "trailing": value + b"\0",
        "huge length": struct.pack("<I", 0xFFFFFFF0) + value[4:],
        "empty": b"",
        "bad certificate": value.replace(
            store.developer.cert.der, b"\x31" + store.developer.cert.der[1:]
        ),
        "no certificate": value[: len(value) - len(store.developer.cert.der) - 8] + bytes(4),
    }
    for name, bad in cases.items():
        path = tmp_path / "bad.apk"
        path.write_bytes(_layer_package(bad))
        with pytest.raises(appsign.LayerFormatError) as e:
            appsign.inspect(path)
        assert e.value.code == "bad-layer", name
    # a channel layer with a developer label is refused (labels separate the layers)
    path = tmp_path / "bad.apk"
    path.write_bytes(_layer_package(value, CHANNEL_PAIR_ID))
    with pytest.raises(appsign.LayerFormatError):
        appsign.inspect(path)
    with pytest.raises(appsign.LayerFormatError):
        ChannelLayer.decode(value)
    # more than 1 MiB in our pair is refused before it is read
    path.write_bytes(_layer_package(bytes((1 << 20) + 1)))
    with pytest.raises(appsign.PackageFormatError) as e:
        appsign.inspect(path)
    assert e.value.code == "pair-too-large"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x03\x00\x08\x00\x10\x00\x00\x00",
        manifest_axml("cn.a.b", 1)[:-4],
        b"<manifest/>",
        manifest_axml("cn.a.b", 1)[:8] + b"\x01\x00\x1c\x00\xff\xff\xff\x7f" + bytes(100),
    ],
)
def test_hostile_manifests(data):
    with pytest.raises(appsign.PackageFormatError) as e:
        parse_axml(data)
    assert e.value.code == "bad-manifest"


@pytest.mark.parametrize("utf8", [False, True])
def test_manifest_reader_matches_kit(utf8):
    long_name = "org.example." + "x" * 200  # two-byte lengths in a UTF-8 pool
    for package, version, vname in (
        ("org.example.x", 123456, "9.8"),
        (long_name, 2**31 - 1, "版本 2"),
    ):
        m = parse_axml(manifest_axml(package, version, vname, utf8=utf8))
        assert (m.package, m.version_code, m.version_name) == (package, version, vname)


def test_missing_manifest_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("classes.dex", b"dex")
    path = tmp_path / "nomanifest.apk"
    path.write_bytes(_with_block(buf.getvalue(), _block(_pairs(FAKE_V2))))
    with pytest.raises(appsign.PackageFormatError) as e:
        appsign.inspect(path)
    assert e.value.code == "bad-manifest"


def test_writer_keeps_padding_multiple_of_4096():
    data = _with_block(_zip(), _block(_pairs(FAKE_V2, (PADDING_PAIR_ID, bytes(4096 - 96)))))
    lay = _layout(data)
    assert lay.block_size % 4096 == 0
    for extra in (1, 100, 4000, 4085, 5000):
        out = io.BytesIO()
        write_with_pairs(io.BytesIO(data), lay, out, {0x1234: bytes(extra)})
        new = _layout(out.getvalue())
        assert new.block_size % 4096 == 0 and new.pair(0x1234).length == extra
        assert content_digest(io.BytesIO(out.getvalue()), new) == content_digest(
            io.BytesIO(data), lay
        )


def test_sign_and_verify_stream_in_constant_memory(tmp_path):
    """A 48 MiB package: digest, developer signature (a full copy) and the channel's
    review and countersignature run within 4 MiB of Python allocations."""
    store = channel_pki("mem-store")
    path = build_apk(tmp_path / "big.apk", payload=48 << 20)
    data_zip = path.read_bytes()
    path.write_bytes(_with_block(data_zip, _block(_pairs(FAKE_V2))))
    del data_zip
    with open(path, "rb") as f:
        lay = read_layout(f)
        tracemalloc.start()
        digest = content_digest(f, lay)
        _, peak_digest = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert len(digest) == 32
    tracemalloc.start()
    appsign.sign_developer(
        path,
        tmp_path / "dev.apk",
        signer=store.developer.signer(),
        certificates=[store.developer.cert],
    )
    appsign.countersign(
        tmp_path / "dev.apk",
        tmp_path / "pub.apk",
        signer=store.signer.signer(),
        certificates=[store.signer.cert],
        channel_name=store.name,
        channel_ca=store.ca.certificate,
        crls=[store.crl()],
    )
    _, peak_sign = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak_digest < 4 << 20, peak_digest
    assert peak_sign < 4 << 20, peak_sign
    assert (tmp_path / "pub.apk").stat().st_size > 48 << 20


def test_unsigned_input_to_sign_is_a_clear_error(tmp_path):
    store = channel_pki("neg-store")
    z = build_apk(Path(tmp_path) / "plain.apk")
    with pytest.raises(appsign.NotSignedError) as e:
        appsign.sign_developer(
            z,
            tmp_path / "o.apk",
            signer=store.developer.signer(),
            certificates=[store.developer.cert],
        )
    assert "apksigner" in str(e.value)

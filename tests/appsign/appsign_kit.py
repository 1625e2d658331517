"""Test material for app signing: small, real Android packages.

:func:`manifest_axml` encodes an AndroidManifest.xml in Android's binary XML (string
pool, resource map, namespace and element chunks), written here independently of the
product's reader (``mstcrypt.apps.appsign.manifest``) so that each checks the other;
apksigner parses the same manifest for minSdkVersion when it signs. :func:`build_apk`
zips it with a few entries, and :func:`apksign` signs the result with the stock
``apksigner`` (scheme v2 and v3) under a throw-away ECDSA P-256 key.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import struct
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.pki import CRL, Certificate, Issuer, Profile, RevokedEntry, build_csr
from mstcrypt.pki import name as pki_name

ANDROID_NS = "http://schemas.android.com/apk/res/android"
ATTR_IDS = {"versionCode": 0x0101021B, "versionName": 0x0101021C, "minSdkVersion": 0x0101020C}
TYPE_STRING, TYPE_INT_DEC = 0x03, 0x10


def apksigner_path() -> str | None:
    return os.environ.get("MSTCRYPT_APKSIGNER") or shutil.which("apksigner")


def _len8(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else bytes([0x80 | (n >> 8), n & 0xFF])


def _pool(strings: list[str], utf8: bool = False) -> bytes:
    data, offsets = b"", []
    for s in strings:
        offsets.append(len(data))
        if utf8:  # as aapt2 writes: UTF-16 length, UTF-8 length, bytes, NUL
            b = s.encode("utf-8")
            data += _len8(len(s.encode("utf-16-le")) // 2) + _len8(len(b)) + b + b"\0"
        else:
            data += struct.pack("<H", len(s)) + s.encode("utf-16-le") + b"\0\0"
    data += bytes((-len(data)) % 4)
    header = 28
    start = header + 4 * len(strings)
    body = b"".join(struct.pack("<I", o) for o in offsets) + data
    return (
        struct.pack(
            "<HHIIIIII",
            0x0001,
            header,
            header + len(body),
            len(strings),
            0,
            0x100 if utf8 else 0,
            start,
            0,
        )
        + body
    )


def manifest_axml(
    package: str,
    version_code: int,
    version_name: str = "1.0",
    min_sdk: int = 24,
    *,
    utf8: bool = False,
) -> bytes:
    """Binary AndroidManifest.xml: <manifest package versionCode versionName><uses-sdk
    minSdkVersion/></manifest>."""
    # attribute names that carry resource IDs come first, in resource-map order
    strings = [
        "versionCode",
        "versionName",
        "minSdkVersion",
        "android",
        ANDROID_NS,
        "manifest",
        "package",
        package,
        version_name,
        "uses-sdk",
    ]
    idx = {s: i for i, s in enumerate(strings)}
    none = 0xFFFFFFFF
    rmap = b"".join(struct.pack("<I", ATTR_IDS[n]) for n in strings[:3])
    chunks = [_pool(strings, utf8), struct.pack("<HHI", 0x0180, 8, 8 + len(rmap)) + rmap]
    chunks.append(struct.pack("<HHIIIII", 0x0100, 16, 24, 1, none, idx["android"], idx[ANDROID_NS]))

    def attr(ns: int, name: str, raw: int, dtype: int, data: int) -> bytes:
        return struct.pack("<IIIHBBI", ns, idx[name], raw, 8, 0, dtype, data)

    def start(name: str, attrs: list[bytes]) -> bytes:
        ext = struct.pack("<IIHHHHHH", none, idx[name], 20, 20, len(attrs), 0, 0, 0) + b"".join(
            attrs
        )
        return struct.pack("<HHIII", 0x0102, 16, 16 + len(ext), 1, none) + ext

    def end(name: str) -> bytes:
        return struct.pack("<HHIIIII", 0x0103, 16, 24, 1, none, none, idx[name])

    ns = idx[ANDROID_NS]
    chunks.append(
        start(
            "manifest",
            [
                attr(ns, "versionCode", none, TYPE_INT_DEC, version_code),
                attr(ns, "versionName", idx[version_name], TYPE_STRING, idx[version_name]),
                attr(none, "package", idx[package], TYPE_STRING, idx[package]),
            ],
        )
    )
    chunks.append(start("uses-sdk", [attr(ns, "minSdkVersion", none, TYPE_INT_DEC, min_sdk)]))
    chunks.append(end("uses-sdk"))
    chunks.append(end("manifest"))
    chunks.append(struct.pack("<HHIIIII", 0x0101, 16, 24, 1, none, idx["android"], idx[ANDROID_NS]))
    body = b"".join(chunks)
    return struct.pack("<HHI", 0x0003, 8, 8 + len(body)) + body


def build_apk(
    path: Path,
    package: str = "cn.example.app",
    version_code: int = 1,
    *,
    payload: int = 4096,
    seed: bytes = b"mstcrypt",
    utf8: bool = False,
) -> Path:
    """An unsigned APK: the binary manifest, classes.dex-like filler and an asset of
    ``payload`` pseudo-random (incompressible, stored) bytes."""
    import hashlib

    filler = bytearray()
    counter = 0
    while len(filler) < payload:
        filler += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest() * 32
        counter += 1
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "AndroidManifest.xml",
            manifest_axml(package, version_code, utf8=utf8),
            zipfile.ZIP_DEFLATED,
        )
        z.writestr("classes.dex", b"dex\n035\0" + bytes(120), zipfile.ZIP_DEFLATED)
        z.writestr("assets/data.bin", bytes(filler[:payload]), zipfile.ZIP_STORED)
    return path


def stock_key(directory: Path) -> tuple[Path, Path]:
    """An ECDSA P-256 key (PKCS#8 DER) and self-signed certificate for apksigner."""
    key_path, cert_path = directory / "stock.pk8", directory / "stock.pem"
    if key_path.exists():
        return key_path, cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mstcrypt test stock signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def apksign(unsigned: Path, out: Path, key_dir: Path) -> Path:
    """Sign with the stock apksigner (v2 + v3, no v4 side file)."""
    tool = apksigner_path()
    assert tool, "apksigner is not installed"
    key, cert = stock_key(key_dir)
    subprocess.run(
        [
            tool,
            "sign",
            "--key",
            str(key),
            "--cert",
            str(cert),
            "--v4-signing-enabled",
            "false",
            "--out",
            str(out),
            str(unsigned),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def apksigner_verify(path: Path) -> subprocess.CompletedProcess[str]:
    tool = apksigner_path()
    assert tool, "apksigner is not installed"
    return subprocess.run(
        [tool, "verify", "-v", str(path)], capture_output=True, text=True, timeout=120
    )


# --- the channel's PKI --------------------------------------------------------------------


@dataclass
class Party:
    """A key and its certificate."""

    key: SM2PrivateKey
    cert: Certificate

    def signer(self) -> Callable[[bytes], bytes]:
        return self.key.sign


@dataclass
class ChannelPki:
    """A distribution channel: its CA, its own App-signing identity, a developer it
    registered, and CRLs."""

    name: str
    ca: Issuer
    signer: Party
    developer: Party

    def developer_from_csr(self, cn: str, **kw: Any) -> Party:
        key = SM2PrivateKey.generate()
        csr = build_csr(pki_name(O=self.name, CN=cn), key.public_key(), key.sign)
        cert = self.ca.issue_from_csr(csr, profile=Profile.APP_DEVELOPER, **kw)
        return Party(key, cert)

    def crl(self, *revoked: Certificate, number: int = 1) -> CRL:
        now = datetime.datetime.now(datetime.UTC)
        entries = [RevokedEntry(c.serial, now - datetime.timedelta(minutes=1)) for c in revoked]
        return self.ca.crl(number=number, entries=entries)

    def policy(self, directory: Path, **extra: Any) -> Path:
        ca_file = directory / f"{self.name}-ca.pem"
        ca_file.write_bytes(self.ca.certificate.pem)
        doc = {
            "channels": [
                {
                    "name": self.name,
                    "ca_file": ca_file.name,
                    "signer_keys": [self.signer.cert.public_key.fingerprint().hex()],
                }
            ],
            **extra,
        }
        path = directory / f"{self.name}-policy.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        return path


def channel_pki(name: str = "gov-store") -> ChannelPki:
    ca_key = SM2PrivateKey.generate()
    ca = Issuer.self_signed(
        pki_name(O=name, CN=f"{name} channel CA"),
        ca_key.public_key(),
        ca_key.sign,
        profile=Profile.DISTRIBUTION_CHANNEL_CA,
    )
    tmp = ChannelPki(name, ca, None, None)  # type: ignore[arg-type]
    tmp.signer = tmp.developer_from_csr(f"{name} App signing")
    tmp.developer = tmp.developer_from_csr("Example Developer Ltd")
    return tmp

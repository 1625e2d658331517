"""A distribution channel kept in one directory: its CA, its App-signing identity, the
directory of registered developers, CRLs and the hash-chained review log.

The channel CA has the DISTRIBUTION_CHANNEL_CA profile (keyCertSign, cRLSign, path
length 0); it issues APP_DEVELOPER certificates (digitalSignature, codeSigning) to
developers from their CSRs, and one to the channel's own signing key, whose key
fingerprint the terminals' policies designate. Private keys are stored as encrypted
PKCS#8 (PBES2, SM4) under the channel password. Every registration, revocation, review
and countersignature appends one record to ``reviews.jsonl``, each carrying the SM3 of
the previous record, so the history cannot be rewritten without breaking the chain
(:meth:`ChannelStore.check_log`).

Layout::

    DIR/channel.json       name, CRL number, developers by serial (the directory)
    DIR/ca.pem, ca.key     channel CA certificate, encrypted key
    DIR/signer.pem, signer.key   the channel's App-signing certificate, encrypted key
    DIR/crl.pem            the newest CRL
    DIR/reviews.jsonl      the hash-chained log
    DIR/reviews.head       its record count and last record's SM3, signed by the channel CA
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mstcrypt.apps.appsign.format import ChannelLayer, sm3
from mstcrypt.apps.appsign.signer import Review, countersign, review
from mstcrypt.apps.appsign.verify import key_fingerprint
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import KeyStoreError, PolicyError, VerificationError
from mstcrypt.formats.keys import dump_private_key, load_private_key
from mstcrypt.pki import (
    CRL,
    REVOCATION_REASONS,
    Certificate,
    CertificationRequest,
    Issuer,
    Profile,
    RevokedEntry,
    name,
)

__all__ = ["ChannelStore"]

_GENESIS = "0" * 64


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ChannelStore:
    """The channel in directory ``root``, unlocked with ``password``."""

    def __init__(self, root: str | os.PathLike[str], password: str) -> None:
        self.root = Path(root)
        try:
            self._doc = json.loads((self.root / "channel.json").read_text(encoding="utf-8"))
            ca_cert = Certificate.from_pem((self.root / "ca.pem").read_bytes())
            ca_key = load_private_key((self.root / "ca.key").read_bytes(), password)
            self.signer_cert = Certificate.from_pem((self.root / "signer.pem").read_bytes())
            self._signer_key = load_private_key((self.root / "signer.key").read_bytes(), password)
        except FileNotFoundError as exc:
            raise KeyStoreError(
                f"not a channel directory (missing {Path(exc.filename).name})"
            ) from None
        except ValueError:
            raise KeyStoreError("channel.json is malformed") from None
        if ca_key.public_key() != ca_cert.public_key:
            raise KeyStoreError("ca.key does not match ca.pem")
        self.ca = Issuer(ca_cert, ca_key.sign)

    # --- creation ------------------------------------------------------------------------
    @classmethod
    def init(
        cls, root: str | os.PathLike[str], *, channel: str, password: str, organisation: str
    ) -> ChannelStore:
        """Create the channel CA and the channel's signing identity in ``root``."""
        d = Path(root)
        d.mkdir(parents=True, exist_ok=True)
        if (d / "channel.json").exists():
            raise PolicyError(f"{d} already holds a channel")
        if not password:
            raise PolicyError("a channel password is needed to wrap its keys")
        ca_key, signer_key = SM2PrivateKey.generate(), SM2PrivateKey.generate()
        ca = Issuer.self_signed(
            name(O=organisation, CN=f"{channel} App Channel CA"),
            ca_key.public_key(),
            ca_key.sign,
            profile=Profile.DISTRIBUTION_CHANNEL_CA,
        )
        signer = ca.issue(
            subject=name(O=organisation, CN=f"{channel} App Signing"),
            public_key=signer_key.public_key(),
            profile=Profile.APP_DEVELOPER,
        )
        _write(d / "ca.pem", ca.certificate.pem)
        _write(d / "ca.key", dump_private_key(ca_key, password=password), 0o600)
        _write(d / "signer.pem", signer.pem)
        _write(d / "signer.key", dump_private_key(signer_key, password=password), 0o600)
        doc = {"name": channel, "crl_number": 0, "developers": {}}
        _write(d / "channel.json", json.dumps(doc, indent=1).encode())
        store = cls(d, password)
        store._log("channel.init", channel=channel, signer_key=key_fingerprint(signer))
        store.publish_crl()
        return store

    @property
    def name(self) -> str:
        return str(self._doc["name"])

    def _save(self) -> None:
        _write(self.root / "channel.json", json.dumps(self._doc, indent=1, sort_keys=True).encode())

    # --- the hash-chained log ------------------------------------------------------------
    def _log(self, action: str, **details: Any) -> None:
        path = self.root / "reviews.jsonl"
        prev = _GENESIS
        if path.exists():
            lines = path.read_bytes().splitlines()
            if lines:
                prev = sm3(lines[-1]).hex()
        rec = {"at": datetime.now(UTC).isoformat(), "action": action, "prev": prev, **details}
        line = json.dumps(rec, sort_keys=True).encode()
        count = self._head()[0] if (self.root / "reviews.head").exists() else 0
        with open(path, "ab") as f:
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._sign_head(count + 1, sm3(line).hex())

    def _head_message(self, count: int, head: str) -> bytes:
        return f"mstcrypt-app-channel-log-v1|{self.name}|{count}|{head}".encode()

    def _sign_head(self, count: int, head: str) -> None:
        """The channel CA signs (count, SM3 of the last record): truncating the log or
        rewriting its last record is detected too, not only changes with successors."""
        sig = self.ca.signer(self._head_message(count, head))
        doc = {"count": count, "head": head, "signature": sig.hex()}
        _write(self.root / "reviews.head", json.dumps(doc).encode())

    def _head(self) -> tuple[int, str]:
        try:
            doc = json.loads((self.root / "reviews.head").read_text(encoding="utf-8"))
            count, head, sig = int(doc["count"]), str(doc["head"]), bytes.fromhex(doc["signature"])
        except (OSError, ValueError, KeyError, TypeError):
            raise KeyStoreError("review log head is missing or malformed") from None
        try:
            self.ca.certificate.public_key.verify(sig, self._head_message(count, head))
        except VerificationError:
            raise KeyStoreError("review log head signature does not verify") from None
        return count, head

    def check_log(self) -> int:
        """Verify the chain of the log and its signed head; return the number of records
        (KeyStoreError when a record was changed, removed, added or reordered)."""
        path = self.root / "reviews.jsonl"
        prev = _GENESIS
        lines = path.read_bytes().splitlines() if path.exists() else []
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                raise KeyStoreError(f"review log record {i} is malformed") from None
            if not isinstance(rec, dict) or rec.get("prev") != prev:
                raise KeyStoreError(f"review log broken at record {i}")
            prev = sm3(line).hex()
        count, head = self._head()
        if (count, head) != (len(lines), prev):
            raise KeyStoreError(
                f"review log does not end at its signed head ({len(lines)} records, "
                f"the head signs {count})"
            )
        return len(lines)

    def log(self) -> list[dict[str, Any]]:
        path = self.root / "reviews.jsonl"
        return [json.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []

    # --- developers ----------------------------------------------------------------------
    def register_developer(
        self, csr: CertificationRequest, *, email: str | None = None
    ) -> Certificate:
        """Issue an APP_DEVELOPER certificate for ``csr`` (its self-signature verified)."""
        cert = self.ca.issue_from_csr(
            csr, profile=Profile.APP_DEVELOPER, subject_alt_names=[email] if email else []
        )
        self._doc["developers"][f"{cert.serial:x}"] = {
            "subject": cert.subject_str,
            "key_fingerprint": key_fingerprint(cert),
            "not_after": cert.not_after.isoformat(),
            "status": "active",
        }
        self._save()
        self._log("developer.register", serial=f"{cert.serial:x}", subject=cert.subject_str)
        return cert

    def developers(self) -> dict[str, dict[str, Any]]:
        """The channel's directory: developer certificates by serial (hex)."""
        return dict(self._doc["developers"])

    def revoke(self, serial: str, *, reason: str = "key_compromise") -> CRL:
        """Revoke a developer certificate and publish a new CRL."""
        serial = serial.lower().lstrip("0") or "0"
        entry = self._doc["developers"].get(serial)
        if entry is None:
            raise PolicyError(f"no developer certificate with serial {serial}")
        if reason not in REVOCATION_REASONS:
            raise PolicyError(f"unknown revocation reason {reason!r}")
        if entry["status"] == "active":
            entry.update(status="revoked", revoked_at=datetime.now(UTC).isoformat(), reason=reason)
            self._save()
            self._log("developer.revoke", serial=serial, reason=reason)
        return self.publish_crl()

    def publish_crl(self, *, days: int = 7) -> CRL:
        entries = [
            RevokedEntry(int(s, 16), datetime.fromisoformat(d["revoked_at"]), d.get("reason"))
            for s, d in self._doc["developers"].items()
            if d["status"] == "revoked"
        ]
        self._doc["crl_number"] = int(self._doc["crl_number"]) + 1
        crl = self.ca.crl(number=self._doc["crl_number"], entries=entries, days=days)
        _write(self.root / "crl.pem", crl.pem)
        self._save()
        return crl

    def crl(self) -> CRL:
        return CRL.from_pem((self.root / "crl.pem").read_bytes())

    # --- reviews -------------------------------------------------------------------------
    def review(self, apk: str | os.PathLike[str]) -> Review:
        """Review a developer-signed package against this channel; the outcome (passed or
        the refusal's code) is logged."""
        try:
            rev = review(apk, channel_ca=self.ca.certificate, crls=[self.crl()])
        except Exception as exc:
            self._log("app.review", result="refused", code=getattr(exc, "code", type(exc).__name__))
            raise
        self._log("app.review", result="passed", **rev.summary())
        return rev

    def countersign(
        self, src: str | os.PathLike[str], dst: str | os.PathLike[str]
    ) -> tuple[Review, ChannelLayer]:
        """Review and countersign ``src`` into ``dst``; both logged."""
        try:
            rev, layer = countersign(
                src,
                dst,
                signer=self._signer_key.sign,
                certificates=[self.signer_cert],
                channel_name=self.name,
                channel_ca=self.ca.certificate,
                crls=[self.crl()],
            )
        except Exception as exc:
            self._log("app.review", result="refused", code=getattr(exc, "code", type(exc).__name__))
            raise
        self._log(
            "app.countersign", **rev.summary(), channel_signed_at=layer.signed.signed_at.isoformat()
        )
        return rev, layer

    def policy(
        self, *, min_versions: dict[str, int] | None = None, developers: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """A terminal policy designating this channel (``ca_file`` is ``ca.pem`` next to
        the policy file)."""
        doc: dict[str, Any] = {
            "channels": [
                {
                    "name": self.name,
                    "ca_file": "ca.pem",
                    "signer_keys": [key_fingerprint(self.signer_cert)],
                }
            ]
        }
        if min_versions:
            doc["min_versions"] = dict(min_versions)
        if developers is not None:
            doc["developers"] = list(developers)
        return doc

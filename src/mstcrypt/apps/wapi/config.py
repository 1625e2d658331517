"""Role configuration files (TOML) for ``mstcrypt wapi asu|ap|sta``.

Paths are relative to the file. Private keys are PEM PKCS#8 files, encrypted with the
password given by ``--pass`` / ``MSTCRYPT_KEY_PASS`` (unencrypted keys are refused unless
``allow_plain_key = true``). ``suite = "sm"`` (default): certificates from the platform
CA, CRL checked; ``suite = "standard"``: certificates on the WAPI 192-bit curve issued by
the ASU (``mstcrypt wapi issue``), ``ca`` is the issuer's certificate and ``revoked`` a
file of revoked serial numbers (hex, one per line; re-read like the CRL).

    [asu]                              [ap]                       [sta]
    listen = "10.88.0.1:3810"          interface = "wap0"         interface = "wsta0"
    cert = "asu.pem"                   cert = "ap.pem"            cert = "sta.pem"
    key = "asu.key"                    key = "ap.key"             key = "sta.key"
    ca = "root.pem"                    asu_cert = "asu.pem"       trusted_asu = ["asu.pem"]
    crl = "root.crl" | "http://…/crl/root.crl"                    timeout = 10
    crl_refresh = 5                    asu = "10.88.0.1:3810"
                                       usk_lifetime = 3600
                                       msk_lifetime = 86400
                                       receive_dir = "in"
"""

from __future__ import annotations

import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mstcrypt.apps.wapi.trust import PlatformValidator
from mstcrypt.errors import MstCryptError, PolicyError
from mstcrypt.formats._der import pem_decode
from mstcrypt.formats.keys import load_private_key
from mstcrypt.formats.wapi_keys import load_wapi_private_key
from mstcrypt.pki import CRL, Certificate, load_certificates
from mstcrypt.protocols.wai import SM, STANDARD
from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai.certs import Wapi192Validator
from mstcrypt.protocols.wai.roles import AccessPoint, Asu, Asue, Credential
from mstcrypt.protocols.wai.suites import SoftSigner, Suite, cert_info

__all__ = [
    "ConfigError",
    "CrlSource",
    "RevokedSerials",
    "RoleConfig",
    "asue_factory",
    "build_ap",
    "build_asu",
    "load",
]


class ConfigError(PolicyError):
    """A WAPI role configuration is missing a field or names an unreadable file."""


@dataclass
class RoleConfig:
    role: str
    values: dict[str, Any]
    base: Path
    password: str | None

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def need(self, key: str) -> Any:
        if key not in self.values:
            raise ConfigError(f"[{self.role}] needs {key!r}")
        return self.values[key]

    def path(self, key: str) -> Path:
        return self.base / str(self.need(key))

    def read(self, rel: str) -> bytes:
        p = self.base / rel
        try:
            return p.read_bytes()
        except OSError as e:
            raise ConfigError(f"[{self.role}] cannot read {rel}: {e.strerror}") from None

    @property
    def suite(self) -> Suite:
        return STANDARD if self.get("suite", "sm") == "standard" else SM

    def _cert_file(self, rel: str) -> list[bytes]:
        raw = self.read(rel)
        if self.suite is SM:
            return [c.der for c in load_certificates(raw)]
        try:
            der = pem_decode(raw, ("CERTIFICATE",))[1] if raw.lstrip().startswith(b"-----") else raw
            cert_info(der)
        except MstCryptError as e:
            raise ConfigError(f"[{self.role}] {rel}: {e}") from None
        return [der]

    def cert(self, key: str) -> bytes:
        certs = self._cert_file(str(self.need(key)))
        if len(certs) != 1:
            raise ConfigError(f"[{self.role}] {key} must hold exactly one certificate")
        return certs[0]

    def credential(self) -> Credential:
        if self.suite is STANDARD:
            if self.password is None:
                raise ConfigError(f"[{self.role}] the private key needs --pass / MSTCRYPT_KEY_PASS")
            wkey = load_wapi_private_key(self.read(str(self.need("key"))), self.password)
            cert = self.cert("cert")
            if cert_info(cert).public_point != wkey.public_key().to_bytes():
                raise ConfigError(f"[{self.role}] the key does not match the certificate")
            return Credential(cert, SoftSigner(wkey))
        raw = self.read(str(self.need("key")))
        if b"ENCRYPTED" not in raw and not self.get("allow_plain_key", False):
            raise ConfigError(f"[{self.role}] the private key file is not encrypted")
        if b"ENCRYPTED" in raw and self.password is None:
            raise ConfigError(f"[{self.role}] the private key needs --pass / MSTCRYPT_KEY_PASS")
        key = load_private_key(raw, self.password if b"ENCRYPTED" in raw else None)
        cert = self.cert("cert")
        if Certificate.from_der(cert).public_key.to_bytes() != key.public_key().to_bytes():
            raise ConfigError(f"[{self.role}] the key does not match the certificate")
        return Credential(cert, SoftSigner(key))

    def ie(self) -> m.WapiIE:
        return m.WapiIE(akm_suites=(self.suite.akm,))


def load(path: str | Path, role: str, password: str | None) -> RoleConfig:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read configuration {path}: {e}") from None
    section = data.get(role)
    if not isinstance(section, dict):
        raise ConfigError(f"{path} has no [{role}] section")
    suite = section.get("suite", "sm")
    if suite not in ("sm", "standard"):
        raise ConfigError(f"[{role}] suite must be sm or standard, not {suite!r}")
    return RoleConfig(role, section, p.resolve().parent, password)


class CrlSource:
    """The current CRL from a file or URL, re-read at most every ``refresh`` seconds."""

    def __init__(self, cfg: RoleConfig) -> None:
        self.where = str(cfg.need("crl"))
        self.base = cfg.base
        self.refresh = float(cfg.get("crl_refresh", 5))
        self._crl: CRL | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def _fetch(self) -> bytes:
        if self.where.startswith(("http://", "https://")):
            r = httpx.get(self.where, timeout=10)
            r.raise_for_status()
            return r.content
        return (self.base / self.where).read_bytes()

    def __call__(self) -> list[CRL]:
        with self._lock:
            now = time.monotonic()
            if self._crl is None or now - self._at >= self.refresh:
                try:
                    raw = self._fetch()
                    self._crl = (
                        CRL.from_der(raw)
                        if not raw.lstrip().startswith(b"-----")
                        else CRL.from_pem(raw)
                    )
                    self._at = now
                except (OSError, MstCryptError, httpx.HTTPError):
                    # keep the last good CRL; with none, verdicts say "revocation unknown"
                    pass
            return [self._crl] if self._crl is not None else []


class RevokedSerials:
    """Revoked serial numbers (hex, one per line, ``#`` comments) from a file, re-read at
    most every ``crl_refresh`` seconds; the last good list is kept on read errors."""

    def __init__(self, cfg: RoleConfig) -> None:
        self.path = cfg.base / str(cfg.need("revoked"))
        self.refresh = float(cfg.get("crl_refresh", 5))
        self._serials: set[int] | None = None
        self._at = 0.0

    def __call__(self) -> set[int]:
        now = time.monotonic()
        if self._serials is None or now - self._at >= self.refresh:
            try:
                lines = self.path.read_text(encoding="ascii").splitlines()
                self._serials = {
                    int(t, 16) for t in (ln.split("#", 1)[0].strip() for ln in lines) if t
                }
                self._at = now
            except (OSError, UnicodeDecodeError, ValueError):
                pass
        return set(self._serials or ())


def build_asu(cfg: RoleConfig) -> Asu:
    if cfg.suite is STANDARD:
        validator: Any = Wapi192Validator(cfg.cert("ca"), RevokedSerials(cfg))
        return Asu(cfg.credential(), validator, STANDARD)
    anchors = [Certificate.from_der(cfg.cert("ca"))]
    return Asu(cfg.credential(), PlatformValidator(anchors, CrlSource(cfg)), SM)


def build_ap(cfg: RoleConfig, mac: bytes) -> AccessPoint:
    return AccessPoint(
        cfg.credential(),
        asu_cert=cfg.cert("asu_cert"),
        mac=mac,
        ie=cfg.ie(),
        usk_lifetime=cfg.get("usk_lifetime"),
        msk_lifetime=cfg.get("msk_lifetime"),
    )


def asue_factory(cfg: RoleConfig, mac: bytes) -> Any:
    cred = cfg.credential()
    trusted = cfg.need("trusted_asu")
    if isinstance(trusted, str):
        trusted = [trusted]
    asus = []
    for t in trusted:
        asus += cfg._cert_file(str(t))
    ie = cfg.ie()

    def make(ae_mac: bytes) -> Asue:
        return Asue(cred, trusted_asus=asus, own_mac=mac, ae_mac=ae_mac, ie=ie, ae_ie=ie)

    return make

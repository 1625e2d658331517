"""A KMC platform in process with enrolled terminals (soft tokens holding the KMC-issued
SM2 encryption key), for the voice tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from mstcrypt.apps.voice import CallParty
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.service import Kmc
from mstcrypt.module import KeyUsage, SoftToken
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, Certificate, build_csr, name

PIN = "123456"


@dataclass
class Terminal:
    owner: str
    token: SoftToken
    enc_cert: Certificate
    sign_cert: Certificate


class Platform:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.kmc = Kmc(
            Database(f"sqlite:///{tmp / 'kmc.db'}"),
            SoftKeyStore(secrets.token_bytes(32)),
            crl_base_url="http://t",
        )
        self.kmc.create_schema()
        self.kmc.init_ca(actor="t")
        chain = self.kmc.chain()
        self.anchors, self.intermediates = chain[-1:], chain[:-1]

    def crls(self) -> list[CRL]:
        return [CRL.from_der(self.kmc.crl()), CRL.from_der(self.kmc.crl("root"))]

    def enroll(self, owner: str, *, cn: str | None = None) -> Terminal:
        token = SoftToken.init(self.tmp / f"{owner}-{secrets.token_hex(3)}.tok", PIN,
                               "admin-code-1", iterations=100_000)  # fmt: skip
        token.login(PIN)
        token.create_container("main")
        h = token.generate_key_pair("main", KeyUsage.SIGN)
        code, _ = self.kmc.create_enrollment_code(
            owner=owner, subject={"CN": cn or owner}, actor="op"
        )
        csr = build_csr(name(CN=cn or owner), h.public_key, lambda tbs: token.sign(h, tbs))
        e = self.kmc.enroll(code, csr.der)
        token.import_enveloped_key("main", e.enveloped_key)
        token.put_certificate("main", KeyUsage.ENCRYPT, e.encryption_certificate.der)
        return Terminal(owner, token, e.encryption_certificate, e.sign_certificate)

    def party(self, t: Terminal, **kw: object) -> CallParty:
        return CallParty(
            identity=t.owner,
            module=t.token,
            handle=t.token.key("main", KeyUsage.ENCRYPT),
            certificate=t.enc_cert,
            anchors=self.anchors,
            intermediates=self.intermediates,
            crls=self.crls(),
            **kw,  # type: ignore[arg-type]
        )

    def revoke(self, t: Terminal) -> None:
        self.kmc.revoke_certificate(f"{t.enc_cert.serial:x}", reason="key_compromise", actor="op")

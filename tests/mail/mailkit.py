"""Offline mail identities for the tests: a root CA, its CRL, and users with a signing
and an encryption certificate each naming their e-mail address."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from mstcrypt import pki
from mstcrypt.apps.mail.message import MailIdentity, trust_validator
from mstcrypt.crypto.sm2 import SM2PrivateKey

DOMAIN = "example.gov.cn"


@dataclass(frozen=True)
class User:
    identity: MailIdentity
    sign_key: SM2PrivateKey
    enc_key: SM2PrivateKey

    @property
    def address(self) -> str:
        return self.identity.address


def _user(root: pki.Issuer, cn: str, address: str | None = None) -> User:
    address = address or f"{cn}@{DOMAIN}"
    sk, ek = SM2PrivateKey.generate(), SM2PrivateKey.generate()
    subject = pki.name(C="CN", O="mstcrypt mail test", CN=cn)
    sc = root.issue(subject=subject, public_key=sk.public_key(),
                    profile=pki.Profile.DEVICE_SIGN, subject_alt_names=[address])  # fmt: skip
    ec = root.issue(subject=subject, public_key=ek.public_key(),
                    profile=pki.Profile.DEVICE_ENC, subject_alt_names=[address])  # fmt: skip
    return User(MailIdentity(address, sc, sk.sign_digest, ec, ek.decrypt), sk, ek)


@dataclass(frozen=True)
class MailKit:
    root: pki.Issuer
    alice: User
    bob: User
    carol: User
    dave: User  # not a recipient
    revoked: User  # signing certificate revoked in crl
    crl: pki.CRL

    def validator(self):  # type: ignore[no-untyped-def]
        return trust_validator([self.root.certificate], crls=[self.crl])


@cache
def mailkit() -> MailKit:
    from datetime import UTC, datetime

    rk = SM2PrivateKey.generate()
    root = pki.Issuer.self_signed(
        pki.name(C="CN", O="mstcrypt mail test", CN="Mail Test Root"), rk.public_key(), rk.sign
    )
    users = {n: _user(root, n) for n in ("alice", "bob", "carol", "dave", "revoked")}
    crl = root.crl(
        number=3,
        entries=[
            pki.RevokedEntry(users["revoked"].identity.sign_certificate.serial, datetime.now(UTC))
        ],
    )
    return MailKit(root, users["alice"], users["bob"], users["carol"], users["dave"],
                   users["revoked"], crl)  # fmt: skip

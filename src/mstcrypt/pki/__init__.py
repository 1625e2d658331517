"""PKI layer: X.509 certificates, PKCS#10 requests and CRLs with SM2/SM3 (GM/T 0015),
certificate profiles for the T/ZSA 37-2020 applications, and path validation.

Everything that signs goes through a :data:`Signer` — a callable that takes the DER to
be signed and returns a DER SM2Signature made with the default ID 1234567812345678 — so
CA keys can stay inside a cryptographic module::

    from mstcrypt.crypto.sm2 import SM2PrivateKey
    from mstcrypt import pki

    root_key, gw_key = SM2PrivateKey.generate(), SM2PrivateKey.generate()
    root = pki.Issuer.self_signed(
        pki.name(C="CN", O="Example Org", CN="Example Root CA"),
        root_key.public_key(), lambda tbs: root_key.sign(tbs))
    gw = root.issue(subject=pki.name(C="CN", O="Example Org", CN="gw.example.com"),
                    public_key=gw_key.public_key(), profile=pki.Profile.GATEWAY_SIGN,
                    subject_alt_names=["gw.example.com"])
    crl = root.crl(number=1)
    path = pki.validate_path(gw, anchors=[root.certificate], crls=[crl],
                             key_usage={"digital_signature"}, extended_key_usage="server_auth")
    assert pki.match_hostname(gw, "GW.example.com")    # RFC 6125: SANs, never the CN

:func:`build_certificate`, :func:`build_csr` and :func:`build_crl` are the underlying
builders (:mod:`mstcrypt.pki.crl_der` assembles large CRLs from cached entry DER);
:class:`Certificate`, :class:`CertificationRequest` and :class:`CRL` parse strictly
(DecodeError on malformed input); :class:`CrlIndex` scans a CRL for status lookups.
"""

from __future__ import annotations

from mstcrypt.pki._common import Signer, key_identifier
from mstcrypt.pki.ca import Issuer, random_serial
from mstcrypt.pki.cache import ValidationCache
from mstcrypt.pki.cert import Certificate, build_certificate, load_certificates
from mstcrypt.pki.crl import CRL, REVOCATION_REASONS, RevokedEntry, build_crl
from mstcrypt.pki.crl_scan import CrlIndex
from mstcrypt.pki.csr import CertificationRequest, build_csr
from mstcrypt.pki.errors import REASONS, CertificateError
from mstcrypt.pki.hostname import match_hostname
from mstcrypt.pki.names import name, name_to_str
from mstcrypt.pki.profiles import AltNames, Profile, ProfileSpec, check_alt_names, spec
from mstcrypt.pki.validate import validate_path

__all__ = [
    "CRL",
    "REASONS",
    "REVOCATION_REASONS",
    "AltNames",
    "Certificate",
    "CertificateError",
    "CertificationRequest",
    "CrlIndex",
    "Issuer",
    "Profile",
    "ProfileSpec",
    "RevokedEntry",
    "Signer",
    "ValidationCache",
    "build_certificate",
    "build_crl",
    "build_csr",
    "check_alt_names",
    "key_identifier",
    "load_certificates",
    "match_hostname",
    "name",
    "name_to_str",
    "random_serial",
    "spec",
    "validate_path",
]

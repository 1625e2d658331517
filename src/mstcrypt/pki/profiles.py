"""Certificate profiles (GM/T 0015 / GB/T 20518 and the T/ZSA 37-2020 applications).

Each :class:`Profile` names one kind of certificate the enterprise CA issues; :func:`spec`
gives its key usage, extended key usage, CA flag, path length and default lifetime.

Rules (FACTS.md §3, GmSSL x509_ext.c):

- signing / authentication certificates have digitalSignature (plus nonRepudiation for
  devices and users, and for the seal server, whose signatures are legally binding) and
  never keyCertSign or cRLSign;
- encryption certificates (the KMC-escrowed half of a dual-certificate pair) have
  keyEncipherment, dataEncipherment and keyAgreement;
- CA certificates have keyCertSign and cRLSign and a critical basicConstraints CA:TRUE;
  the root has no path length limit, a subordinate CA and the distribution-channel CA
  (which issues app-developer certificates) have pathLenConstraint 0;
- keyUsage is always critical; basicConstraints is critical for CAs and absent from
  end-entity certificates (CA:FALSE is the default, and GmSSL rejects the empty
  SEQUENCE that encodes it);
- EKU: gateways and servers (sign and enc) serverAuth; devices clientAuth and
  emailProtection (mail); app developers codeSigning; the OCSP signer OCSPSigning
  (a delegated responder: id-pkix-ocsp-nocheck, 30 days, rotated before expiry);
  WAPI access points and authentication service units serverAuth (they are the
  network side of the WAI exchange).

The App distribution channel (T/ZSA 37-2020 §6.2, "double verification") both issues
developer certificates and signs Apps itself. Its DISTRIBUTION_CHANNEL_CA certificate
only certifies (keyCertSign, cRLSign); its own App signatures need a separate signing
key with an APP_DEVELOPER certificate issued under it, so that a code-signing check
(digitalSignature + codeSigning) never has to accept a CA key.

subjectAltName (:class:`AltNames`, enforced by :class:`mstcrypt.pki.Issuer`): gateways,
IM servers and mail servers are reached by host name over TLCP/TLS, so their
certificates carry at least one dNSName or iPAddress and nothing else (GmSSL matches a
host name on the first dNSName only, never on the CN); login, seal, WAPI AP and ASU
certificates may carry host names; devices and app developers carry at most their
e-mail address (rfc822Name) and never a host name; CAs, the OCSP signer and the KMC
escrow certificate carry no subjectAltName.

Default lifetimes stay within GmSSL's limit of 3653 days (X509_VALIDITY_MAX_DAYS,
checked on every certificate of a chain): root 10 years, subordinate CAs 5 years, end
entities 1 to 3 years.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from mstcrypt.errors import PolicyError

__all__ = [
    "MAX_ALT_NAMES",
    "POLICY_KMC_ESCROW",
    "POLICY_LOGIN_SERVER",
    "AltNames",
    "Profile",
    "ProfileSpec",
    "check_alt_names",
    "spec",
]

#: Most subjectAltName entries one certificate may carry.
MAX_ALT_NAMES = 64

#: certificatePolicies marker of the login server's signing certificate (T/ZSA 37-2020
#: §7.3): a terminal accepts Cert-S only when it carries this policy, so no other
#: certificate of the platform (a user's device certificate, a gateway's) can stand in
#: for the information system. A UUID-derived OID (ITU-T X.667, arc 2.25): no
#: registration needed and no collision with anyone else's. A policy rather than an
#: EKU because GmSSL rejects certificates with EKU values it does not know.
POLICY_LOGIN_SERVER = "2.25.231913627963803899251756409685742611395"
#: certificatePolicies marker of the KMC's key-escrow (file-recovery) encryption
#: certificate: a terminal adds an escrow stanza only for a certificate carrying it (so no
#: user's encryption certificate can pose as the KMC's). Same arc and reasoning as above.
POLICY_KMC_ESCROW = "2.25.281197924319844938590899340921090882481"


class Profile(enum.StrEnum):
    ROOT_CA = "root_ca"
    SUB_CA = "sub_ca"
    DEVICE_SIGN = "device_sign"
    DEVICE_ENC = "device_enc"
    GATEWAY_SIGN = "gateway_sign"
    GATEWAY_ENC = "gateway_enc"
    IM_SERVER_SIGN = "im_server_sign"
    IM_SERVER_ENC = "im_server_enc"
    MAIL_SERVER_SIGN = "mail_server_sign"
    MAIL_SERVER_ENC = "mail_server_enc"
    LOGIN_SERVER_SIGN = "login_server_sign"
    LOGIN_SERVER_ENC = "login_server_enc"
    SEAL_SERVER_SIGN = "seal_server_sign"
    SEAL_SERVER_ENC = "seal_server_enc"
    APP_DEVELOPER = "app_developer"
    DISTRIBUTION_CHANNEL_CA = "distribution_channel_ca"
    WLAN_AP_SIGN = "wlan_ap_sign"
    WLAN_AP_ENC = "wlan_ap_enc"
    WLAN_ASU_SIGN = "wlan_asu_sign"
    WLAN_ASU_ENC = "wlan_asu_enc"
    OCSP_SIGNER = "ocsp_signer"
    KMC_ESCROW_ENC = "kmc_escrow_enc"


class AltNames(enum.StrEnum):
    """Which subjectAltName entries certificates of a profile carry."""

    #: at least one dNSName or iPAddress, and nothing else (TLCP/TLS servers)
    HOST = "host"
    #: dNSName / iPAddress entries allowed, none required
    HOST_OPTIONAL = "host_optional"
    #: at most rfc822Name entries (the holder's e-mail address); never a host name
    EMAIL = "email"
    #: no subjectAltName
    NONE = "none"


@dataclass(frozen=True)
class ProfileSpec:
    """What a certificate of one profile contains.

    ``key_usage`` uses asn1crypto's KeyUsage names (digital_signature, non_repudiation,
    key_encipherment, data_encipherment, key_agreement, key_cert_sign, crl_sign);
    ``extended_key_usage`` asn1crypto KeyPurposeId names or dotted OIDs, in the order
    they are written; ``path_len`` is the basicConstraints pathLenConstraint of a CA
    (None: no limit, or not a CA); ``default_days`` the usual lifetime; ``policies``
    the certificatePolicies identifiers written (dotted OIDs, non-critical);
    ``ocsp_nocheck`` writes id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1: relying parties
    do not check the status of this delegated OCSP responder's certificate);
    ``alt_names`` the subjectAltName policy (:class:`AltNames`).
    """

    key_usage: frozenset[str]
    extended_key_usage: tuple[str, ...]
    is_ca: bool
    path_len: int | None
    default_days: int
    policies: tuple[str, ...] = ()
    ocsp_nocheck: bool = False
    alt_names: AltNames = AltNames.NONE

    @property
    def is_encryption(self) -> bool:
        """True for the encryption half of a dual-certificate pair."""
        return "key_encipherment" in self.key_usage


_CA = frozenset({"key_cert_sign", "crl_sign"})
_SIGN = frozenset({"digital_signature"})
_SIGN_NR = frozenset({"digital_signature", "non_repudiation"})
_ENC = frozenset({"key_encipherment", "data_encipherment", "key_agreement"})
_SERVER = ("server_auth",)

_DEVICE = ("client_auth", "email_protection")

_H, _HO, _EM = AltNames.HOST, AltNames.HOST_OPTIONAL, AltNames.EMAIL

_SPECS: dict[Profile, ProfileSpec] = {
    Profile.ROOT_CA: ProfileSpec(_CA, (), True, None, 3650),
    Profile.SUB_CA: ProfileSpec(_CA, (), True, 0, 1825),
    Profile.DISTRIBUTION_CHANNEL_CA: ProfileSpec(_CA, (), True, 0, 1825),
    Profile.DEVICE_SIGN: ProfileSpec(_SIGN_NR, _DEVICE, False, None, 730, alt_names=_EM),
    Profile.DEVICE_ENC: ProfileSpec(_ENC, _DEVICE, False, None, 730, alt_names=_EM),
    Profile.GATEWAY_SIGN: ProfileSpec(_SIGN, _SERVER, False, None, 1095, alt_names=_H),
    Profile.GATEWAY_ENC: ProfileSpec(_ENC, _SERVER, False, None, 1095, alt_names=_H),
    Profile.IM_SERVER_SIGN: ProfileSpec(_SIGN, _SERVER, False, None, 1095, alt_names=_H),
    Profile.IM_SERVER_ENC: ProfileSpec(_ENC, _SERVER, False, None, 1095, alt_names=_H),
    Profile.MAIL_SERVER_SIGN: ProfileSpec(_SIGN, _SERVER, False, None, 1095, alt_names=_H),
    Profile.MAIL_SERVER_ENC: ProfileSpec(_ENC, _SERVER, False, None, 1095, alt_names=_H),
    Profile.LOGIN_SERVER_SIGN: ProfileSpec(
        _SIGN, _SERVER, False, None, 1095, policies=(POLICY_LOGIN_SERVER,), alt_names=_HO
    ),
    Profile.LOGIN_SERVER_ENC: ProfileSpec(_ENC, _SERVER, False, None, 1095, alt_names=_HO),
    Profile.SEAL_SERVER_SIGN: ProfileSpec(_SIGN_NR, _SERVER, False, None, 1095, alt_names=_HO),
    Profile.SEAL_SERVER_ENC: ProfileSpec(_ENC, _SERVER, False, None, 1095, alt_names=_HO),
    Profile.APP_DEVELOPER: ProfileSpec(_SIGN, ("code_signing",), False, None, 1095, alt_names=_EM),
    Profile.WLAN_AP_SIGN: ProfileSpec(_SIGN, _SERVER, False, None, 1095, alt_names=_HO),
    Profile.WLAN_AP_ENC: ProfileSpec(_ENC, _SERVER, False, None, 1095, alt_names=_HO),
    Profile.WLAN_ASU_SIGN: ProfileSpec(_SIGN, _SERVER, False, None, 1095, alt_names=_HO),
    Profile.WLAN_ASU_ENC: ProfileSpec(_ENC, _SERVER, False, None, 1095, alt_names=_HO),
    # a delegated OCSP responder: nocheck, so short-lived (rotated by kmc.ocsp)
    Profile.OCSP_SIGNER: ProfileSpec(_SIGN, ("ocsp_signing",), False, None, 30, ocsp_nocheck=True),
    Profile.KMC_ESCROW_ENC: ProfileSpec(
        _ENC,
        (),
        False,
        None,
        1825,
        policies=(POLICY_KMC_ESCROW,),
    ),
}


def spec(profile: Profile | str) -> ProfileSpec:
    """The :class:`ProfileSpec` of ``profile`` (a :class:`Profile` or its value)."""
    try:
        return _SPECS[Profile(profile)]
    except ValueError:
        raise PolicyError(
            f"unknown certificate profile {profile!r}; expected one of "
            + ", ".join(p.value for p in Profile)
        ) from None


def _kind(value: str) -> str:
    """The GeneralName a SAN string becomes (as in :func:`mstcrypt.pki.build_certificate`)."""
    if "://" in value:
        return "uri"
    if "@" in value:
        return "email"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "dns"
    return "ip"


def check_alt_names(profile: Profile | str, names: Sequence[str]) -> None:
    """Refuse (PolicyError) subjectAltName entries that ``profile`` does not allow, or
    the absence of a host name where it needs one; DNS names and IP addresses are
    checked as :mod:`mstcrypt.pki.hostname` does (one leftmost wildcard label at most)."""
    from mstcrypt.pki import hostname

    prof = Profile(profile)
    policy = spec(prof).alt_names
    if isinstance(names, str):
        raise PolicyError("subject_alt_names must be a sequence of strings")
    names = list(names)
    if len(names) > MAX_ALT_NAMES:
        raise PolicyError(f"at most {MAX_ALT_NAMES} subjectAltName entries")
    for value in names:
        if not isinstance(value, str) or not value:
            raise PolicyError("subject alternative names must be non-empty strings")
        kind = _kind(value)
        if kind == "dns":
            hostname.dns_name(value, allow_wildcard=True)
        elif kind == "ip":
            hostname.ip_address(value)
        allowed = {
            AltNames.HOST: ("dns", "ip"),
            AltNames.HOST_OPTIONAL: ("dns", "ip"),
            AltNames.EMAIL: ("email",),
            AltNames.NONE: (),
        }[policy]
        if kind not in allowed:
            what = {"dns": "DNS name", "ip": "IP address", "email": "e-mail address"}.get(
                kind, "URI"
            )
            raise PolicyError(
                f"a {prof.value} certificate cannot carry the {what} {value!r} "
                f"(subjectAltName policy {policy.value!r})"
            )
    if policy is AltNames.HOST and not names:
        raise PolicyError(
            f"a {prof.value} certificate needs at least one DNS name or IP address "
            "(peers match host names on subjectAltName only)"
        )

"""Peer profiles: the forms other TLCP implementations send and require, by name.

TLCP implementations differ in three places (docs/tlcp.md, "Variants between
implementations"): the ClientECDHEParams framing, the input of the CertificateVerify
signature and the client's certificate list with ECC suites. What we *accept* does not
depend on the peer — a server accepts every form by default. What we *send* must be
what the peer reads; a :class:`PeerProfile` names that choice:

- ``standard``: the standard's forms (vector ClientECDHEParams, CertificateVerify over
  SM3 of the handshake messages, dual client certificates). The default.
- ``gmssl`` (GmSSL 3.2 and later): CertificateVerify over the raw handshake messages;
  with ECC suites, the client's signing chain only (GmSSL's server validates the list
  as one ordinary chain and refuses the dual form).
- ``tongsuo`` (Tongsuo 8.x): the bare 69-byte ClientECDHEParams structure; a server
  follows the client's suite order, as Tongsuo's server does (Tongsuo's client lists
  ECC before ECDHE, so one without certificates gets an ECC suite).

``auto`` is not a profile but a connection policy (:func:`retry_for`): start with
``standard`` and, when the failed handshake shows which form the server needs, retry
once with that form. The retry happens only after the client sent its second flight,
which it does only once the server's certificates, its host name and its
ServerKeyExchange signature have been verified: a failure to authenticate the server is
never retried.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mstcrypt.errors import PolicyError
from mstcrypt.protocols.tlcp.client import TLCPClient
from mstcrypt.protocols.tlcp.constants import (
    AlertDescription,
    CertificateVerifyForm,
    ECDHEParamsEncoding,
)
from mstcrypt.protocols.tlcp.context import TLCPContext

__all__ = [
    "AUTO",
    "COMPAT_CHOICES",
    "GMSSL",
    "PROFILES",
    "STANDARD",
    "TONGSUO",
    "FormRetry",
    "PeerProfile",
    "retry_for",
]

AUTO = "auto"


@dataclass(frozen=True)
class PeerProfile:
    """The forms to send to one kind of peer (and the order in which a server tries the
    CertificateVerify forms; every profile accepts both)."""

    name: str
    certificate_verify_form: CertificateVerifyForm
    ecdhe_params_encoding: ECDHEParamsEncoding
    ecc_client_dual_certificates: bool
    certificate_verify_accept: tuple[CertificateVerifyForm, ...]
    honor_client_order: bool = False

    def fields(self) -> dict[str, Any]:
        """The :class:`TLCPContext` fields this profile sets."""
        return {
            "certificate_verify_form": self.certificate_verify_form,
            "ecdhe_params_encoding": self.ecdhe_params_encoding,
            "ecc_client_dual_certificates": self.ecc_client_dual_certificates,
            "certificate_verify_accept": self.certificate_verify_accept,
            "honor_client_order": self.honor_client_order,
        }

    def apply(self, ctx: TLCPContext) -> TLCPContext:
        """A copy of ``ctx`` with this profile's fields."""
        return dataclasses.replace(ctx, **self.fields())

    @classmethod
    def named(cls, profile: PeerProfile | str) -> PeerProfile:
        """The profile called ``profile`` (``standard``, ``gmssl``, ``tongsuo``)."""
        if isinstance(profile, PeerProfile):
            return profile
        found = PROFILES.get(str(profile).strip().lower()) if isinstance(profile, str) else None
        if found is None:
            hint = (
                " (auto is a connection policy: connect with the standard profile and retry=True)"
                if profile == AUTO
                else ""
            )
            raise PolicyError(
                f"unknown peer profile {profile!r}; expected one of: " + ", ".join(PROFILES) + hint
            )
        return found


_BOTH = (CertificateVerifyForm.SM3, CertificateVerifyForm.TRANSCRIPT)

STANDARD = PeerProfile(
    name="standard",
    certificate_verify_form=CertificateVerifyForm.SM3,
    ecdhe_params_encoding=ECDHEParamsEncoding.VECTOR,
    ecc_client_dual_certificates=True,
    certificate_verify_accept=_BOTH,
)
GMSSL = PeerProfile(
    name="gmssl",
    certificate_verify_form=CertificateVerifyForm.TRANSCRIPT,
    ecdhe_params_encoding=ECDHEParamsEncoding.VECTOR,
    ecc_client_dual_certificates=False,
    certificate_verify_accept=(CertificateVerifyForm.TRANSCRIPT, CertificateVerifyForm.SM3),
)
TONGSUO = PeerProfile(
    name="tongsuo",
    certificate_verify_form=CertificateVerifyForm.SM3,
    ecdhe_params_encoding=ECDHEParamsEncoding.STRUCT,
    ecc_client_dual_certificates=True,
    certificate_verify_accept=_BOTH,
    honor_client_order=True,
)
PROFILES: dict[str, PeerProfile] = {p.name: p for p in (STANDARD, GMSSL, TONGSUO)}
#: The values of the command line's ``--compat`` and the gateway's ``compat`` key.
COMPAT_CHOICES = (*PROFILES, AUTO)


@dataclass(frozen=True)
class FormRetry:
    """Why a failed client handshake is worth one more attempt, and with what."""

    reason: str
    changes: dict[str, str]
    context: TLCPContext

    def __str__(self) -> str:
        changed = ", ".join(f"{k}={v}" for k, v in self.changes.items())
        return f"{self.reason}; retrying once with {changed}"


def _other(value: Any, kind: Any) -> Any:
    return next(m for m in kind if m is not value)


def retry_for(client: TLCPClient, ctx: TLCPContext) -> FormRetry | None:
    """After ``client`` (made with ``ctx``) failed its handshake: the context to retry
    with once, when the failure shows that the server needs another form; else None.

    Retried only when the client sent its second flight and then the server refused it
    without the client having detected any failure itself:

    - ``decode_error`` after an ECDHE ClientKeyExchange: the other ClientECDHEParams
      framing (GmSSL requires the vector, Tongsuo the bare structure);
    - ``bad_certificate`` or ``decrypt_error`` after our certificates and
      CertificateVerify, or the connection closed without an alert there (GmSSL's
      server closes silently on a CertificateVerify it does not accept), or
      ``handshake_failure`` after an ECC signing chain without the encryption
      certificate (Tongsuo's server): the other CertificateVerify form, with the
      certificate list that goes with it (the transcript form with the signing chain
      only, as GmSSL; the SM3 form with dual certificates).

    Never after a failure to authenticate the server (its certificates, name,
    ServerKeyExchange signature or Finished): those happen before the flight is sent or
    are detected by the client.
    """
    flight = client.sent_flight
    if flight is None or client.handshake_complete or client.alert_sent is not None:
        return None
    alert = client.alert_received
    if flight.ecdhe_params_encoding is not None and alert == AlertDescription.DECODE_ERROR:
        new = _other(flight.ecdhe_params_encoding, ECDHEParamsEncoding)
        return FormRetry(
            reason=(
                "the server answered our ClientKeyExchange "
                f"({flight.ecdhe_params_encoding.value} ClientECDHEParams) with decode_error"
            ),
            changes={"ecdhe_params_encoding": new.value},
            context=dataclasses.replace(ctx, ecdhe_params_encoding=new),
        )
    refused = alert is None or alert in (
        AlertDescription.BAD_CERTIFICATE,
        AlertDescription.DECRYPT_ERROR,
    )
    if alert == AlertDescription.HANDSHAKE_FAILURE:
        # Tongsuo's server: "no certificates returned" for the signing chain alone.
        refused = not flight.cipher_suite.is_ecdhe and not flight.dual_certificates
    if flight.certificate_verify_form is not None and refused:
        form = _other(flight.certificate_verify_form, CertificateVerifyForm)
        dual = form is CertificateVerifyForm.SM3
        changes = {"certificate_verify_form": form.value}
        if not flight.cipher_suite.is_ecdhe:
            changes["ecc_client_dual_certificates"] = str(dual).lower()
        what = (
            "closed the connection without an alert"
            if alert is None
            else f"answered with {AlertDescription(alert).name.lower()}"
        )
        sent = f"{flight.certificates} certificate(s) and a {flight.certificate_verify_form.value}"
        return FormRetry(
            reason=f"the server {what} after our {sent} CertificateVerify",
            changes=changes,
            context=dataclasses.replace(
                ctx, certificate_verify_form=form, ecc_client_dual_certificates=dual
            ),
        )
    return None

"""Client SDK for the platform: enrollment with the soft token, certificates, CRLs,
directory lookups, and the operator API.

Trust never comes from the server it authenticates: the root CA is an *anchor* preset in
the terminal's MST-CC (``mstcrypt token init --anchor root.pem``) or given explicitly;
every certificate the client uses from the platform (its own after enrollment, the login
server's, a recipient's, the key-escrow certificate) is validated to that anchor with
the CRLs — or, with ``revocation="ocsp"``, with the platform's OCSP responder: one
signed answer about each certificate (nonce included) instead of the issuing CA's whole
CRL; the issuing CA itself is still checked against the root's (small) CRL. With an
``https://`` URL the HTTP API itself runs over TLCP, the server's certificate checked
against the same anchors.

CRLs are cached by number: a cached CRL is used for the ``max-age`` the server gives
(never past its nextUpdate), then revalidated with a conditional GET (``If-None-Match``
on the CRL's ETag — a 304 costs no download and no parse). For validation the client
keeps the complete CRL it has and fetches the small delta CRL (``/crl/<ca>-delta.crl``)
on top of it, downloading a complete CRL again only when the delta's base is newer than
the one held or it expires.

    from mstcrypt.client import Client
    c = Client("https://platform.example:8600", anchors=token.anchors())
    result = c.enroll(code, token)            # token: a logged-in SoftToken
    cert = c.recipient_certificate("bob")     # validated, for email / file encryption
    status = c.certificate_status(cert)       # OCSP: good / revoked / unknown, verified
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from mstcrypt.errors import DecodeError, MstCryptError, PolicyError, VerificationError
from mstcrypt.module import KeyUsage, SoftToken
from mstcrypt.pki import CRL, Certificate, CertificateError, build_csr, name, validate_path
from mstcrypt.pki.hostname import canonical_names
from mstcrypt.pki.ocsp import (
    CertId,
    OcspError,
    OcspResponse,
    SingleStatus,
    build_request,
    new_nonce,
    verify_response,
)
from mstcrypt.pki.profiles import POLICY_KMC_ESCROW

__all__ = ["Client", "CollectedKey", "EnrollResult", "ServiceError"]


class ServiceError(MstCryptError):
    """The platform refused a request; ``status`` is the HTTP status, ``error`` the
    server's error type."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error} ({status}): {detail}")
        self.status, self.error, self.detail = status, error, detail


@dataclass
class EnrollResult:
    owner: str
    container: str
    sign_certificate: Certificate
    encryption_certificate: Certificate
    chain: list[Certificate]
    key_id: str


@dataclass
class CollectedKey:
    """One rotated encryption key :meth:`Client.collect_keys` picked up: installed in
    ``container`` (``installed`` false: the token already held it, only acknowledged);
    the key it replaced went to ``previous_container`` (decrypt-only; None: none)."""

    key_id: str
    version: int
    container: str
    certificate: Certificate
    previous_container: str | None
    installed: bool


@dataclass
class _CachedCrl:
    crl: CRL
    etag: str | None
    fresh_until: float  # time.monotonic()


_MAX_AGE = re.compile(r"(?:^|[,\s])max-age=(\d{1,9})(?:$|[,\s])")


def _max_age(r: httpx.Response) -> float:
    m = _MAX_AGE.search(r.headers.get("cache-control", ""))
    return float(m.group(1)) if m else 0.0


def token_anchors(token: Any) -> list[Certificate]:
    """The trust anchors preset in a soft token (empty when it has none)."""
    getter = getattr(token, "anchors", None)
    return [Certificate.from_der(d) for d in getter()] if getter is not None else []


class Client:
    def __init__(
        self,
        base_url: str,
        *,
        anchors: Sequence[Certificate] = (),
        operator_token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        server_name: str | None = None,
        revocation: str = "crl",
    ) -> None:
        """``revocation``: how certificates from the platform are checked for revocation
        in :meth:`validate`, :meth:`recipient_certificates` and
        :meth:`escrow_certificate` — ``"crl"`` (download the CRLs) or ``"ocsp"`` (ask the
        platform's OCSP responder about each certificate, see :meth:`certificate_status`)."""
        if revocation not in ("crl", "ocsp"):
            raise PolicyError(f"revocation is 'crl' or 'ocsp', not {revocation!r}")
        self.revocation = revocation
        self.anchors = list(anchors)
        headers = {"Authorization": f"Bearer {operator_token}"} if operator_token else {}
        if transport is None and base_url.startswith("https://"):
            transport = _tlcp_transport(base_url, self.anchors, server_name)
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=headers, transport=transport
        )
        self._crls: dict[str, _CachedCrl] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ServiceError(0, "ConnectionError", f"{type(exc).__name__}: {exc}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                raise ServiceError(r.status_code, str(body.get("error")), str(body.get("detail")))
            except ValueError:
                raise ServiceError(r.status_code, "HTTPError", r.text[:200]) from None
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    # -- trust ---------------------------------------------------------------------------
    def _anchors(self, token: Any = None, anchor: Certificate | None = None) -> list[Certificate]:
        anchors = [anchor] if anchor is not None else self.anchors or token_anchors(token)
        if not anchors:
            raise PolicyError(
                "no trust anchor: initialise the token with the root CA "
                "(`mstcrypt token init --anchor root.pem`) or give one (--ca-file)"
            )
        return anchors

    def _server_chain(self) -> tuple[list[Certificate], list[CRL]]:
        """The server's intermediates and CRLs, not yet trusted: a path validated to the
        anchors through them checks them on the way."""
        return self.chain()[:-1], self.revocation_lists()

    def revocation_lists(self, cas: Sequence[str] = ("issuing", "root")) -> list[CRL]:
        """For validation: per CA the complete CRL held (cached) and, on top of it, the
        newest delta CRL; a complete CRL is downloaded again only when none is held, it
        has expired, or the delta is on a newer base. Where no delta CRL can be had, the
        complete CRL alone (revalidated after its max-age)."""
        out: list[CRL] = []
        for ca in cas:
            complete_path, delta_path = f"/crl/{ca}.crl", f"/crl/{ca}-delta.crl"
            try:
                delta = self._cached_crl(delta_path, revalidate=False)
            except ServiceError:  # no delta CRLs there (404) or none now: complete only
                out.append(self._cached_crl(complete_path, revalidate=False))
                continue
            base = delta.delta_base
            held = self._crls.get(complete_path)
            if (
                held is not None
                and held.crl.number is not None
                and base is not None
                and held.crl.number >= base
                and (held.crl.next_update is None or datetime.now(UTC) < held.crl.next_update)
            ):
                complete = held.crl  # still valid, and the delta applies to it
            else:
                complete = self._cached_crl(complete_path, revalidate=True)
            out.append(complete)
            if (
                base is not None
                and complete.number is not None
                and delta.number is not None
                and base <= complete.number < delta.number
            ):
                out.append(delta)
        return out

    def _cached_crl(self, path: str, *, revalidate: bool) -> CRL:
        """The CRL at ``path``: the cached one while fresh (unless ``revalidate``), else
        a conditional GET; a new CRL is parsed strictly once. A CRL older (by number)
        than the one held is not taken while the one held is still valid."""
        cached = self._crls.get(path)
        now = time.monotonic()
        if (
            cached is not None
            and not revalidate
            and now < cached.fresh_until
            and (cached.crl.next_update is None or datetime.now(UTC) < cached.crl.next_update)
        ):
            return cached.crl
        headers = {"If-None-Match": cached.etag} if cached is not None and cached.etag else {}
        r = self._request("GET", path, headers=headers)
        if r.status_code == 304 and cached is not None:
            cached.fresh_until = now + _max_age(r)
            return cached.crl
        crl = CRL.from_der(r.content)
        if (
            cached is not None
            and cached.crl.number is not None
            and (crl.number is None or crl.number < cached.crl.number)
            and (cached.crl.next_update is None or datetime.now(UTC) < cached.crl.next_update)
        ):
            return cached.crl  # e.g. an instance behind a lagging replica
        self._crls[path] = _CachedCrl(crl, r.headers.get("etag"), now + _max_age(r))
        return crl

    def trusted_chain(
        self, anchors: Sequence[Certificate] | None = None
    ) -> tuple[list[Certificate], list[CRL]]:
        """The server's CA chain and CRLs, accepted only when they validate to one of
        ``anchors`` (default: the client's): returns (intermediates, CRLs)."""
        anchors = list(anchors) if anchors is not None else self._anchors()
        intermediates, crls = self._server_chain()
        for ca in intermediates:
            validate_path(
                ca,
                anchors=anchors,
                intermediates=intermediates,
                crls=crls,
                at=datetime.now(UTC),
            )
        return intermediates, crls

    def validate(
        self,
        cert: Certificate,
        *,
        anchors: Sequence[Certificate] | None = None,
        key_usage: set[str] | None = None,
        extended_key_usage: str | None = None,
    ) -> Certificate:
        """``cert`` if it validates to the anchors with the server's (signed) CRLs."""
        return self._validate_all([cert], anchors, key_usage, extended_key_usage)[0]

    def _validate_all(
        self,
        certs: Sequence[Certificate],
        anchors: Sequence[Certificate] | None,
        key_usage: set[str] | None = None,
        extended_key_usage: str | None = None,
    ) -> list[Certificate]:
        """Validate each of ``certs`` with one fetch of the server's chain and CRLs (or,
        with OCSP, the chain, the root's CRL and one OCSP answer per certificate)."""
        anchors = list(anchors) if anchors is not None else self._anchors()
        if self.revocation == "ocsp":
            return self._validate_ocsp(certs, anchors, key_usage, extended_key_usage)
        intermediates, crls = self._server_chain()
        now = datetime.now(UTC)
        for cert in certs:
            validate_path(
                cert,
                anchors=anchors,
                intermediates=intermediates,
                crls=crls,
                at=now,
                key_usage=key_usage or (),
                extended_key_usage=extended_key_usage,
            )
        return list(certs)

    def _validate_ocsp(
        self,
        certs: Sequence[Certificate],
        anchors: list[Certificate],
        key_usage: set[str] | None,
        extended_key_usage: str | None,
    ) -> list[Certificate]:
        """Path validation without the issuing CA's CRL: the intermediates are checked
        against the root's CRL (required), then each certificate's own status comes from
        a verified OCSP answer of its issuer's responder."""
        intermediates = self.chain()[:-1]
        root_crl = [self.crl("root")]
        now = datetime.now(UTC)
        for ca in intermediates:
            validate_path(ca, anchors=anchors, intermediates=intermediates, crls=root_crl, at=now)
        for cert in certs:
            path = validate_path(
                cert,
                anchors=anchors,
                intermediates=intermediates,
                crls=root_crl,
                at=now,
                require_revocation_check=False,
                key_usage=key_usage or (),
                extended_key_usage=extended_key_usage,
            )
            if len(path) < 2 or path[1] not in intermediates:
                raise CertificateError(
                    "crl_missing",
                    "OCSP answers only for the issuing CA's certificates",
                    certificate=cert.subject_str,
                )
            status = self.certificate_status(cert, issuer=path[1], validated=True)
            if status.status == "revoked":
                assert status.revoked_at is not None
                why = f" ({status.reason})" if status.reason else ""
                raise CertificateError(
                    "revoked",
                    f"certificate revoked at {status.revoked_at.isoformat()}{why} (OCSP)",
                    certificate=cert.subject_str,
                )
            if status.status != "good":
                raise OcspError(
                    "unknown_status", "the OCSP responder does not know the certificate"
                )
        return list(certs)

    def ocsp(self, request_der: bytes) -> OcspResponse:
        """POST a DER OCSP request to the platform's responder; the parsed (not yet
        verified) response."""
        r = self._request(
            "POST",
            "/ocsp",
            content=request_der,
            headers={"Content-Type": "application/ocsp-request"},
        )
        return OcspResponse.from_der(r.content)

    def certificate_status(
        self,
        cert: Certificate,
        *,
        issuer: Certificate | None = None,
        anchors: Sequence[Certificate] | None = None,
        nonce: bool = True,
        hash_algorithm: str = "sm3",
        validated: bool = False,
    ) -> SingleStatus:
        """The revocation status of ``cert`` from the platform's OCSP responder, verified
        (:func:`mstcrypt.pki.ocsp.verify_response`): signed by a responder that the
        issuer certified, about this certificate, current, echoing our fresh nonce
        (``nonce``). ``issuer`` defaults to the platform's issuing CA, which is first
        validated to the anchors with the root's CRL (unless ``validated`` says the
        caller did that). Returns the :class:`~mstcrypt.pki.ocsp.SingleStatus` (good,
        revoked with time and reason, or unknown); raises OcspError when the answer
        cannot be relied on."""
        if issuer is None:
            chain = self.chain()
            issuer = chain[0]
            validated = False
        if not validated:
            validate_path(
                issuer,
                anchors=list(anchors) if anchors is not None else self._anchors(),
                intermediates=[issuer],
                crls=[self.crl("root")],
                at=datetime.now(UTC),
            )
        cid = CertId.for_certificate(cert, issuer, hash_algorithm)
        value = new_nonce() if nonce else None
        response = self.ocsp(build_request([cid], nonce=value))
        return verify_response(response, issuer=issuer, cert_id=cid, nonce=value)

    def recipient_certificates(
        self, owners: Sequence[str], *, anchors: Sequence[Certificate] | None = None
    ) -> list[Certificate]:
        """The owners' current encryption certificates, validated for key encipherment."""
        certs = [self.encryption_certificate(owner) for owner in owners]
        return self._validate_all(certs, anchors, {"key_encipherment"})

    def recipient_certificate(
        self, owner: str, *, anchors: Sequence[Certificate] | None = None
    ) -> Certificate:
        """The owner's current encryption certificate, validated for key encipherment."""
        return self.recipient_certificates([owner], anchors=anchors)[0]

    def escrow_certificate(self, *, anchors: Sequence[Certificate] | None = None) -> Certificate:
        """The KMC's key-escrow (file-recovery) certificate, validated: issued under the
        anchors, not revoked, key encipherment, the KMC escrow certificate policy."""
        cert = Certificate.from_pem(self._request("GET", "/ca/escrow.pem").content)
        if POLICY_KMC_ESCROW not in cert.policies:
            raise VerificationError(
                "the escrow certificate lacks the KMC escrow policy: not the KMC's escrow key"
            )
        return self.validate(cert, anchors=anchors, key_usage={"key_encipherment"})

    # -- public ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return dict(self._json("GET", "/health"))

    def chain(self) -> list[Certificate]:
        """[issuing CA, root CA] as published by the server."""
        pem = self._request("GET", "/ca/chain.pem").content
        return [Certificate.from_pem(b"-----BEGIN" + part) for part in pem.split(b"-----BEGIN")[1:]]

    def crl(self, ca: str = "issuing") -> CRL:
        """The newest complete CRL of ``ca`` (revalidated now: a conditional GET)."""
        return self._cached_crl(f"/crl/{ca}.crl", revalidate=True)

    def delta_crl(self, ca: str = "issuing") -> CRL:
        """The newest delta CRL of ``ca`` (revalidated now)."""
        return self._cached_crl(f"/crl/{ca}-delta.crl", revalidate=True)

    def certificate(self, serial: str) -> tuple[Certificate, str]:
        r = self._request("GET", f"/directory/certificates/{serial}")
        return Certificate.from_pem(r.content), r.headers.get("X-Certificate-Status", "")

    def encryption_certificate(self, owner: str) -> Certificate:
        return Certificate.from_pem(
            self._request("GET", f"/directory/encryption-certificate/{owner}").content
        )

    def find_certificates(
        self, *, subject: str | None = None, owner: str | None = None
    ) -> list[Certificate]:
        params = {k: v for k, v in (("subject", subject), ("owner", owner)) if v}
        return [
            Certificate.from_pem(i["pem"].encode())
            for i in self._json("GET", "/directory/certificates", params=params)
        ]

    # -- terminal side -------------------------------------------------------------------
    def enroll(
        self,
        code: str,
        token: SoftToken,
        *,
        container: str = "main",
        anchor: Certificate | None = None,
        replace: bool = False,
        subject_alt_names: Sequence[str] = (),
    ) -> EnrollResult:
        """Enroll the logged-in soft token: its signing key is generated inside the token,
        the KMC's encryption key arrives as an SM2EnvelopedKey and is imported without
        leaving the token in clear; both certificates are validated against the anchor
        (``anchor``, else the client's, else the token's preset root — never the root the
        server sends) and stored in the container. ``subject_alt_names``: ask for these
        host names only (a subset of those the code authorises; by default the
        certificates get all of them)."""
        anchors = self._anchors(token, anchor)
        existing = container in token.list_containers()
        if existing and not replace:
            raise MstCryptError(f"container {container!r} exists; pass replace=True to re-enroll")
        # Work in a scratch container: a refused enrollment leaves the token unchanged.
        scratch = f"{container}.pending"[:64]
        if scratch in token.list_containers():
            token.delete_container(scratch)
        token.create_container(scratch)
        try:
            h = token.generate_key_pair(scratch, KeyUsage.SIGN)
            csr = build_csr(
                name(CN=container),
                h.public_key,
                lambda tbs: token.sign(h, tbs),
                subject_alt_names=canonical_names(subject_alt_names, allow_wildcard=True),
            )
            body = self._json("POST", "/enroll", json={"code": code, "csr": csr.pem.decode()})
            sign_cert = Certificate.from_pem(body["sign_certificate"].encode())
            enc_cert = Certificate.from_pem(body["encryption_certificate"].encode())
            chain = [Certificate.from_pem(p.encode()) for p in body["chain"]]
            if sign_cert.public_key != h.public_key:
                raise VerificationError("the signing certificate is not for this token's key")
            crls = self.revocation_lists()
            now = datetime.now(UTC)
            for cert in (sign_cert, enc_cert):
                validate_path(cert, anchors=anchors, intermediates=chain[:-1], crls=crls, at=now)
            enc = token.import_enveloped_key(scratch, base64.b64decode(body["enveloped_key"]))
            if enc.public_key != enc_cert.public_key:
                raise VerificationError(
                    "the encryption certificate does not match the delivered key"
                )
            token.put_certificate(scratch, KeyUsage.SIGN, sign_cert.der)
            token.put_certificate(scratch, KeyUsage.ENCRYPT, enc_cert.der)
            token.rename_container(scratch, container, replace=True)
        except BaseException:
            if scratch in token.list_containers():
                token.delete_container(scratch)
            raise
        return EnrollResult(body["owner"], container, sign_cert, enc_cert, chain, body["key_id"])

    def pending_keys(self, session_token: str) -> list[dict[str, Any]]:
        """The session owner's rotated encryption keys waiting for pickup (not yet
        validated: :meth:`collect_keys` validates and installs them)."""
        body = self._json("GET", "/kmc/keys/pending", headers=_bearer(session_token))
        return list(body["keys"])

    def collect_keys(
        self,
        session_token: str,
        token: SoftToken,
        *,
        container: str = "main",
        anchor: Certificate | None = None,
    ) -> list[CollectedKey]:
        """Pick up the encryption keys an operator rotated for this terminal, oldest
        version first. Each new encryption certificate is validated to the anchor
        (``anchor``, else the client's, else the token's preset root — never the root the
        server sends) with the CRLs, for key encipherment; the key is unwrapped with the
        container's signing key and installed with
        :meth:`~mstcrypt.module.base.CryptoModule.install_rotated_key` (the previous key
        moves to a decrypt-only container ``<container>.enc-<serial>``); then the
        delivery is acknowledged. A key the token already holds (an earlier run stopped
        before its acknowledgement) is only acknowledged. Nothing pending: ``[]``."""
        anchors = self._anchors(token, anchor)
        pending = self.pending_keys(session_token)
        if not pending:
            return []
        sign_der = token.get_certificate(container, KeyUsage.SIGN)
        if sign_der is None:
            raise MstCryptError(f"container {container!r} has no signing certificate")
        intermediates, crls = self._server_chain()
        done: list[CollectedKey] = []
        for item in sorted(pending, key=lambda k: int(k["version"])):
            key_id = str(item["key_id"])
            cert = Certificate.from_pem(str(item["encryption_certificate"]).encode())
            validate_path(
                cert,
                anchors=anchors,
                intermediates=intermediates,
                crls=crls,
                at=datetime.now(UTC),
                key_usage={"key_encipherment"},
            )
            installed, previous = False, None
            current_der = token.get_certificate(container, KeyUsage.ENCRYPT)
            try:
                current_key = token.key(container, KeyUsage.ENCRYPT).public_key
            except MstCryptError:
                current_key = None
            if current_key != cert.public_key:
                previous = _previous_container(container, current_der, current_key)
                token.install_rotated_key(
                    container,
                    _b64(item["enveloped_key"]),
                    cert.der,
                    keep_previous_as=previous,
                )
                installed = True
                if current_key is None:
                    previous = None
            self._json(
                "POST",
                f"/kmc/keys/{quote(key_id, safe='')}/collected",
                headers=_bearer(session_token),
            )
            done.append(
                CollectedKey(key_id, int(item["version"]), container, cert, previous, installed)
            )
        return done

    def login(
        self,
        token: SoftToken,
        *,
        container: str = "main",
        server_name: str = "mstcrypt-login",
        anchor: Certificate | None = None,
        password: str | None = None,
    ) -> dict[str, Any]:
        """Certificate login (§7.3) with the token's signing key (the PIN already opened
        the token: that is the second factor). Returns the server's answer with the
        ``session_token``."""
        from mstcrypt.protocols.login import Challenge, LoginClient

        cert_der = token.get_certificate(container, KeyUsage.SIGN)
        if cert_der is None:
            raise MstCryptError(f"container {container!r} has no signing certificate; enroll first")
        cert = Certificate.from_der(cert_der)
        h = token.key(container, KeyUsage.SIGN)
        anchors = self._anchors(token, anchor)
        intermediates, crls = self._server_chain()  # LoginClient validates the path
        client = LoginClient(
            expected_server_name=server_name,
            certificate=cert,
            signer=lambda tbs: token.sign(h, tbs),
            chain=intermediates,
            anchors=anchors,
        )
        challenge = Challenge.from_json(self._json("POST", "/login/challenge"))
        response = client.respond(challenge, now=datetime.now(UTC), crls=crls)
        return dict(
            self._json(
                "POST",
                "/login/response",
                json={"response": response.to_json(), "password": password},
            )
        )

    def logout(self, session_token: str) -> None:
        self._json("POST", "/login/logout", headers={"Authorization": f"Bearer {session_token}"})

    def session(self, session_token: str) -> dict[str, Any]:
        return dict(
            self._json(
                "GET", "/login/session", headers={"Authorization": f"Bearer {session_token}"}
            )
        )

    # -- terminal: KDK and group keys (guide 7.5, Annex D) -------------------------------
    def kdk(self, session_token: str) -> dict[str, Any]:
        """The session owner's current KDK, SM2-encrypted to their encryption key."""
        return dict(self._json("GET", "/kmc/kdk", headers=_bearer(session_token)))

    def group_key(
        self, session_token: str, group: str, version: int | None = None
    ) -> dict[str, Any]:
        """A group key version (default: the current one) wrapped under the session
        owner's KDK; only a current member since that version gets it."""
        params = {} if version is None else {"version": version}
        return dict(
            self._json(
                "GET",
                f"/kmc/groups/{quote(group, safe='')}/key",
                params=params,
                headers=_bearer(session_token),
            )
        )

    def signing_certificate(
        self, owner: str, key_id: bytes, *, anchors: Sequence[Certificate] | None = None
    ) -> Certificate:
        """The owner's signing certificate whose key has SM3(04‖x‖y) = ``key_id``,
        validated for digital signature (how a reader finds a message sender's key:
        by the name the message claims, never from the message)."""
        from mstcrypt.crypto.sm3 import sm3

        for cert in self.find_certificates(owner=owner):
            if "digital_signature" in cert.key_usage and sm3(cert.public_key.to_bytes()) == key_id:
                return self.validate(cert, anchors=anchors, key_usage={"digital_signature"})
        raise VerificationError(f"{owner!r} has no signing certificate for this key")

    def boot_attest(
        self,
        session_token: str,
        token: Any,
        events: Sequence[Any],
        *,
        container: str = "main",
    ) -> dict[str, Any]:
        """Remote attestation of a measured boot (docs/trusted-boot.md §7): a nonce for
        this session, a quote of the PCR the event log replays to, signed by the token's
        signing key (the session's certificate), and the platform's verdict."""
        from mstcrypt.apps.boot.attest import Quote
        from mstcrypt.apps.boot.measure import replay

        auth = {"Authorization": f"Bearer {session_token}"}
        serial = str(self._json("GET", "/login/session", headers=auth)["serial"])
        nonce = bytes.fromhex(self._json("POST", "/boot/challenge", headers=auth)["nonce"])
        h = token.key(container, KeyUsage.SIGN)
        quote = Quote.create(nonce, replay(list(events)), serial, sign=lambda t: token.sign(h, t))
        body = {
            "quote": base64.b64encode(quote.raw).decode(),
            "events": [e.to_json() for e in events],
        }
        return dict(self._json("POST", "/boot/attest", json=body, headers=auth))

    def console_code(self, session_token: str) -> dict[str, Any]:
        """A one-time code that opens the web console for the operator whose §7.3 session
        token this is (``POST /console/code``): ``{"code", "expires", "login_path"}``."""
        return dict(
            self._json(
                "POST", "/console/code", headers={"Authorization": f"Bearer {session_token}"}
            )
        )

    # -- operator API ----------------------------------------------------------------------
    def create_enrollment_code(
        self,
        owner: str,
        subject: dict[str, str],
        *,
        profile: str = "device_sign",
        ttl_seconds: int = 86400,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> dict[str, Any]:
        """A one-time enrollment code (registration officer). A gateway or server
        profile needs the DNS names and/or IP addresses it is certified for; the answer
        lists them in canonical form (``names``)."""
        return dict(
            self._json(
                "POST",
                "/admin/enrollment-codes",
                json={
                    "owner": owner,
                    "subject": subject,
                    "profile": profile,
                    "ttl_seconds": ttl_seconds,
                    "dns_names": list(dns_names),
                    "ip_addresses": list(ip_addresses),
                },
            )
        )

    def create_group(self, group: str, members: Sequence[str]) -> dict[str, Any]:
        """A messaging group (registration officer): its first group key version."""
        return dict(
            self._json("POST", "/admin/groups", json={"id": group, "members": list(members)})
        )

    def change_group(
        self, group: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Add or remove members (registration officer): the group key rotates."""
        body = {"add": list(add), "remove": list(remove)}
        return dict(self._json("POST", f"/admin/groups/{quote(group, safe='')}/members", json=body))

    def boot_add_golden(self, model: str, stage: str, digest: bytes) -> None:
        """Approve a stage manifest's SM3 for a device model (administrator)."""
        self._json(
            "POST",
            "/admin/boot/golden",
            json={"model": model, "stage": stage, "digest": digest.hex()},
        )

    def boot_set_device_model(self, owner: str, model: str) -> None:
        """Record which device model ``owner``'s terminal is (registration officer)."""
        self._json("POST", "/admin/boot/devices", json={"owner": owner, "model": model})

    def boot_attestations(self, owner: str | None = None) -> list[dict[str, Any]]:
        """Recent attestation verdicts (auditor, administrator)."""
        params = {"owner": owner} if owner else None
        return list(self._json("GET", "/admin/boot/attestations", params=params)["attestations"])

    def expire_enrollment_code(self, enrollment_id: str) -> None:
        """End an unused terminal enrollment code now (registration officer)."""
        self._json("POST", f"/admin/enrollment-codes/{enrollment_id}/expire")

    def revoke_certificate(self, serial: str, reason: str = "unspecified") -> None:
        self._json("POST", f"/admin/certificates/{serial}/revoke", json={"reason": reason})

    def keys(self, owner: str) -> list[dict[str, Any]]:
        return list(self._json("GET", "/admin/keys", params={"owner": owner}))

    def rotate_key(
        self,
        owner: str,
        *,
        subject: dict[str, str] | None = None,
        terminal_public_key: bytes | None = None,
    ) -> dict[str, Any]:
        """Rotate ``owner``'s encryption key (registration officer). Without
        ``terminal_public_key`` the new key waits for the terminal to collect it
        (:meth:`collect_keys`) and the subject defaults to the current certificate's;
        with it, the answer carries the envelope (``enveloped_key``)."""
        body: dict[str, Any] = {"owner": owner}
        if subject is not None:
            body["subject"] = subject
        if terminal_public_key is not None:
            body["terminal_public_key"] = terminal_public_key.hex()
        return dict(self._json("POST", "/admin/keys/rotate", json=body))

    def key_operation(self, key_id: str, op: str, reason: str | None = None) -> None:
        """``archive`` / ``destroy`` (administrator) or ``revoke`` (registration officer)."""
        if op not in ("archive", "revoke", "destroy"):
            raise PolicyError(f"unknown key operation {op!r} (archive, revoke, destroy)")
        self._json(
            "POST", f"/admin/keys/{key_id}/{op}", json={"reason": reason} if reason else None
        )

    def request_recovery(self, key_id: str, recipient_public_key: bytes, reason: str) -> str:
        return str(
            self._json(
                "POST",
                "/admin/recovery",
                json={
                    "key_id": key_id,
                    "recipient_public_key": recipient_public_key.hex(),
                    "reason": reason,
                },
            )["request_id"]
        )

    def recovery(self, request_id: str) -> dict[str, Any]:
        """A recovery request as the second officer reviews it (requester, reason, owner,
        recipient fingerprint, approvals) and, once released, its result."""
        return dict(self._json("GET", f"/admin/recovery/{request_id}"))

    def approve_recovery(self, request_id: str, recipient_fingerprint: str) -> dict[str, Any]:
        """Approve a request filed by another officer (dual control), quoting the SM3
        fingerprint of the recipient key as obtained from the new device: the KMC refuses
        the approval if the request names another key."""
        return dict(
            self._json(
                "POST",
                f"/admin/recovery/{request_id}/approve",
                json={"recipient_fingerprint": recipient_fingerprint},
            )
        )

    def request_file_recovery(
        self, escrow_ciphertext: bytes, recipient_public_key: bytes, reason: str
    ) -> str:
        """Operator: ask for a file key (from the file's escrow stanza) to be released to a
        new terminal; two distinct operators must then approve."""
        return str(
            self._json(
                "POST",
                "/admin/file-recovery",
                json={
                    "escrow_stanza": base64.b64encode(escrow_ciphertext).decode(),
                    "recipient_public_key": recipient_public_key.hex(),
                    "reason": reason,
                },
            )["request_id"]
        )

    def verify_audit(self) -> dict[str, Any]:
        return dict(self._json("GET", "/admin/audit/verify"))

    # -- app signing (guide 6.2) -----------------------------------------------------------
    def app_developers(self) -> list[dict[str, Any]]:
        """The app channel's developer directory (public)."""
        return list(self._json("GET", "/appsign/developers"))

    def register_app_developer(self, owner: str, csr_pem: str) -> Certificate:
        """Register an app developer from their CSR (registration officer): the
        code-signing certificate the platform's CA issued."""
        body = self._json(
            "POST", "/admin/appsign/developers", json={"owner": owner, "csr": csr_pem}
        )
        return Certificate.from_pem(str(body["certificate"]).encode())


def _previous_container(container: str, cert_der: bytes | None, key: Any) -> str:
    """Where a replaced encryption key goes: ``<container>.enc-<serial of its
    certificate>`` (or of its key's SM3 when it has none), at most 64 characters."""
    from mstcrypt.crypto.sm3 import sm3

    tag = (
        f"{Certificate.from_der(cert_der).serial:x}"
        if cert_der is not None
        else sm3(key.to_bytes()).hex()[:24]
        if key is not None
        else "none"
    )
    return f"{container[: 63 - 5 - min(len(tag), 40)]}.enc-{tag[:40]}"


def _b64(value: object) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise DecodeError("the enveloped key is not base64") from None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tlcp_transport(
    base_url: str, anchors: Sequence[Certificate], server_name: str | None
) -> httpx.BaseTransport:
    """HTTP over TLCP to the platform, its certificate validated against ``anchors``."""
    from mstcrypt.protocols.tlcp.http_client import tlcp_transport

    if not anchors:
        raise PolicyError(
            "an https:// platform URL needs the root CA to authenticate the server: preset it "
            "in the token (`mstcrypt token init --anchor root.pem`) or pass --ca-file"
        )
    host = httpx.URL(base_url).host
    return tlcp_transport(anchors=[a.der for a in anchors], server_name=server_name or host)

"""Client SDK for the platform: enrollment with the soft token, certificates, CRLs,
directory lookups, and the operator API.

    from mstcrypt.client import Client
    c = Client("http://127.0.0.1:8600")
    result = c.enroll(code, token)            # token: a logged-in SoftToken
    cert = c.encryption_certificate("bob")    # for email / file encryption
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import MstCryptError, VerificationError
from mstcrypt.module import KeyUsage, SoftToken
from mstcrypt.pki import CRL, Certificate, build_csr, name, validate_path

__all__ = ["Client", "EnrollResult", "ServiceError"]


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


class Client:
    def __init__(
        self,
        base_url: str,
        *,
        operator_token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {operator_token}"} if operator_token else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=headers, transport=transport
        )

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

    # -- public ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return dict(self._json("GET", "/health"))

    def chain(self) -> list[Certificate]:
        """[issuing CA, root CA] as published by the server."""
        pem = self._request("GET", "/ca/chain.pem").content
        return [Certificate.from_pem(b"-----BEGIN" + part) for part in pem.split(b"-----BEGIN")[1:]]

    def crl(self, ca: str = "issuing") -> CRL:
        return CRL.from_der(self._request("GET", f"/crl/{ca}.crl").content)

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
    ) -> EnrollResult:
        """Enroll the logged-in soft token: its signing key is generated inside the token,
        the KMC's encryption key arrives as an SM2EnvelopedKey and is imported without
        leaving the token in clear; both certificates are validated (against ``anchor``
        when given, else the server's root) and stored in the container."""
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
            csr = build_csr(name(CN=container), h.public_key, lambda tbs: token.sign(h, tbs))
            body = self._json("POST", "/enroll", json={"code": code, "csr": csr.pem.decode()})
            sign_cert = Certificate.from_pem(body["sign_certificate"].encode())
            enc_cert = Certificate.from_pem(body["encryption_certificate"].encode())
            chain = [Certificate.from_pem(p.encode()) for p in body["chain"]]
            if sign_cert.public_key != h.public_key:
                raise VerificationError("the signing certificate is not for this token's key")
            root = anchor or chain[-1]
            crls = [self.crl("issuing"), self.crl("root")]
            now = datetime.now(UTC)
            for cert in (sign_cert, enc_cert):
                validate_path(cert, anchors=[root], intermediates=chain[:-1], crls=crls, at=now)
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
        chain = self.chain()
        client = LoginClient(
            expected_server_name=server_name,
            certificate=cert,
            signer=lambda tbs: token.sign(h, tbs),
            chain=chain[:-1],
            anchors=[anchor or chain[-1]],
        )
        challenge = Challenge.from_json(self._json("POST", "/login/challenge"))
        response = client.respond(
            challenge, now=datetime.now(UTC), crls=[self.crl("issuing"), self.crl("root")]
        )
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

    # -- operator API ----------------------------------------------------------------------
    def create_enrollment_code(
        self,
        owner: str,
        subject: dict[str, str],
        *,
        profile: str = "device_sign",
        ttl_seconds: int = 86400,
    ) -> dict[str, Any]:
        return dict(
            self._json(
                "POST",
                "/admin/enrollment-codes",
                json={
                    "owner": owner,
                    "subject": subject,
                    "profile": profile,
                    "ttl_seconds": ttl_seconds,
                },
            )
        )

    def revoke_certificate(self, serial: str, reason: str = "unspecified") -> None:
        self._json("POST", f"/admin/certificates/{serial}/revoke", json={"reason": reason})

    def keys(self, owner: str) -> list[dict[str, Any]]:
        return list(self._json("GET", "/admin/keys", params={"owner": owner}))

    def key_operation(self, key_id: str, op: str, reason: str | None = None) -> None:
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

    def file_recovery_public_key(self) -> SM2PublicKey:
        """The KMC's file-recovery (escrow) public key."""
        from mstcrypt.formats.keys import load_public_key

        return load_public_key(self._request("GET", "/kmc/file-recovery-key.pem").content)

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

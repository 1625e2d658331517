"""The terminal side of the seal application: a two-party seal key whose share stays in
the MST-CC (soft token), used with the seal server over HTTP behind the §7.3 session.

::

    t = SealTerminal(http, session_token, token)       # http: an httpx.Client on the platform
    key_id, public_key = t.create_key("seal")            # two-party key generation
    cert = t.certify("seal")                             # stamper certificate (co-signed CSR)
    seal = t.seal(es_id)                                 # a seal made for us by an administrator
    signature = t.stamp("seal", seal, data_hash, "doc.pdf")   # SES_Signature (GB/T 38540)
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import (
    AccessDeniedError,
    AuthenticationError,
    DecodeError,
    PolicyError,
    RateLimitError,
    TwoPartyProofError,
    TwoPartyStateError,
    TwoPartyVersionError,
    VerificationError,
)
from mstcrypt.formats import ses
from mstcrypt.module.base import CryptoModule, KeyUsage
from mstcrypt.pki import Certificate, build_csr
from mstcrypt.pki.names import name

__all__ = ["SealServerError", "SealTerminal"]


class SealServerError(PolicyError):
    """The seal server refused a request; ``error`` is its error type, ``status`` the
    HTTP status."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error} ({status}): {detail}")
        self.status, self.error, self.detail = status, error, detail


#: server error types mapped back to the typed errors the protocol code reacts to
_ERRORS: dict[str, type[Exception]] = {
    "TwoPartyVersionError": TwoPartyVersionError,
    "TwoPartyStateError": TwoPartyStateError,
    "TwoPartyProofError": TwoPartyProofError,
    "AuthenticationError": AuthenticationError,
    "TokenError": AuthenticationError,
    "RateLimitError": RateLimitError,
    "DecodeError": DecodeError,
    "InvalidKeyError": DecodeError,
}


class SealTerminal:
    def __init__(self, http: httpx.Client, session_token: str, token: CryptoModule) -> None:
        self._http = http
        self._headers = {"Authorization": f"Bearer {session_token}"}
        self.token = token

    # -- plumbing ------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self._http.request(method, path, json=body, headers=self._headers)
        if r.status_code >= 400:
            try:
                err = r.json()
                error, detail = str(err.get("error")), str(err.get("detail"))
            except ValueError:
                error, detail = "HTTPError", r.text[:200]
            cls = _ERRORS.get(error)
            if cls is not None:
                raise cls(detail)
            if r.status_code == 403 and error.endswith("VerificationError"):
                raise VerificationError(detail)
            if r.status_code == 403:
                raise AccessDeniedError(f"{error}: {detail}")
            raise SealServerError(r.status_code, error, detail)
        return r.json()

    def _transport(self, path: str) -> Callable[[bytes], bytes]:
        def send(message: bytes) -> bytes:
            out = self._call("POST", path, {"message": base64.b64encode(message).decode()})
            return base64.b64decode(out.get("message") or b"", validate=True)

        return send

    def key_id(self, container: str) -> str:
        """The server's id of this container's seal key (found by its public key)."""
        pub = self.token.twoparty_public_key(container).fingerprint().hex()
        for k in self._call("GET", "/seal/keys"):
            if k.get("public_key") == pub:
                return str(k["key_id"])
        raise PolicyError(f"the seal server has no key for container {container!r}")

    # -- keys ----------------------------------------------------------------------------
    def create_key(self, container: str) -> tuple[str, SM2PublicKey]:
        """Two-party key generation; the share goes into ``container`` of the token."""
        started: dict[str, str] = {}

        def send(message: bytes) -> bytes:
            b64 = base64.b64encode(message).decode()
            if not started:
                out = self._call("POST", "/seal/keys", {"message": b64})
                started["key_id"] = out["key_id"]
            else:
                out = self._call("POST", f"/seal/keys/{started['key_id']}/keygen", {"message": b64})
            return base64.b64decode(out["message"], validate=True)

        public_key = self.token.twoparty_generate(container, send)
        return started["key_id"], public_key

    def sign(self, container: str, message: bytes, key_id: str | None = None) -> bytes:
        """A DER SM2 signature made with the seal server (verified before it returns)."""
        kid = key_id or self.key_id(container)
        return self.token.twoparty_sign(
            container, message, self._transport(f"/seal/keys/{kid}/sign")
        )

    def decrypt(self, container: str, ciphertext: bytes) -> bytes:
        kid = self.key_id(container)
        return self.token.twoparty_decrypt(
            container, ciphertext, self._transport(f"/seal/keys/{kid}/decrypt")
        )

    def refresh(self, container: str) -> int:
        kid = self.key_id(container)
        return self.token.twoparty_refresh(container, self._transport(f"/seal/keys/{kid}/refresh"))

    def certify(self, container: str, common_name: str) -> Certificate:
        """Ask for the stamper certificate: a PKCS#10 request for the joint key, signed
        by both parties; the certificate is stored in the token next to the share."""
        kid = self.key_id(container)
        public_key = self.token.twoparty_public_key(container)
        csr = build_csr(
            name(CN=common_name), public_key, lambda m: self.sign(container, m, key_id=kid)
        )
        out = self._call(
            "POST", f"/seal/keys/{kid}/certificate", {"csr": base64.b64encode(csr.der).decode()}
        )
        cert = Certificate.load(out["certificate"])
        if cert.public_key != public_key:
            raise VerificationError("the certificate is not for this seal key")
        self.token.put_certificate(container, KeyUsage.SIGN, cert.der)
        return cert

    # -- seals ---------------------------------------------------------------------------
    def seals(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/seal/seals"))

    def seal(self, es_id: str) -> ses.Seal:
        out = self._call("GET", f"/seal/seals/{es_id}")
        return ses.parse_seal(base64.b64decode(out["seal"], validate=True))

    def stamp(
        self, container: str, seal: ses.Seal, data_hash: bytes, property_info: str
    ) -> ses.SealSignature:
        """SES_Signature over ``data_hash`` with ``seal``, co-signed with the server."""
        cert = self.token.get_certificate(container, KeyUsage.SIGN)
        if cert is None:
            raise PolicyError(f"container {container!r} has no stamper certificate")
        tbs = ses.build_tbs(seal, data_hash, property_info)
        signature = self.sign(container, tbs)
        return ses.assemble_signature(tbs, cert, signature)

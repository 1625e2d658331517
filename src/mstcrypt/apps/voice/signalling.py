"""The terminal side of call signalling: HTTP to the platform's ``/voice`` routes (over
TLCP for an ``https://`` URL, the server authenticated with the terminal's preset root),
authenticated with the §7.3 session token; plus the directory and CRL downloads the key
agreement needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from mstcrypt.apps.voice.errors import CallPolicyError
from mstcrypt.pki import CRL, Certificate

__all__ = ["SignallingClient", "SignallingError"]


class SignallingError(CallPolicyError):
    """The call server refused a request; ``status`` and ``error`` are its answer."""

    code = "server"

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"call server: {status} {error}: {detail}")
        self.status, self.error = status, error


class SignallingClient:
    def __init__(
        self,
        base_url: str,
        session_token: str,
        *,
        anchors: Sequence[Certificate] = (),
        server_name: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 40.0,
    ) -> None:
        if transport is None and base_url.startswith("https://"):
            from mstcrypt.protocols.tlcp.http_client import tlcp_transport

            if not anchors:
                raise CallPolicyError("an https:// call server needs the root CA (anchors)")
            transport = tlcp_transport(
                anchors=[a.der for a in anchors],
                server_name=server_name or httpx.URL(base_url).host,
            )
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {session_token}"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SignallingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SignallingClient {self._http.base_url}>"

    def _req(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise SignallingError(0, "ConnectionError", type(exc).__name__) from None
        if r.status_code >= 400:
            try:
                body = r.json()
                err, detail = str(body.get("error")), str(body.get("detail"))
            except ValueError:
                err, detail = "HTTPError", r.text[:200]
            raise SignallingError(r.status_code, err, detail)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        return self._req(method, path, **kw).json()  # type: ignore[no-any-return]

    # -- directory and revocation -----------------------------------------------------
    def encryption_certificate(self, user: str) -> bytes:
        """The user's current encryption certificate (DER) from the directory; the key
        agreement validates it — the server is not trusted for it."""
        return Certificate.from_pem(
            self._req("GET", f"/directory/encryption-certificate/{user}").content
        ).der

    def crls(self) -> list[CRL]:
        return [CRL.from_der(self._req("GET", f"/crl/{ca}.crl").content)
                for ca in ("issuing", "root")]  # fmt: skip

    # -- signalling --------------------------------------------------------------------
    def register(self, media: str | None = None) -> dict[str, Any]:
        return self._json("POST", "/voice/register", json={"media": media})

    def unregister(self) -> None:
        self._json("POST", "/voice/unregister", json={})

    def invite(self, offer: dict[str, Any], media: str | None) -> dict[str, Any]:
        return self._json("POST", "/voice/calls", json={"offer": offer, "media": media})

    def answer(self, call_id: str, answer: dict[str, Any], media: str | None) -> dict[str, Any]:
        return self._json(
            "POST", f"/voice/calls/{call_id}/answer", json={"answer": answer, "media": media}
        )

    def confirm(self, call_id: str, confirm: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", f"/voice/calls/{call_id}/confirm", json={"confirm": confirm})

    def bye(self, call_id: str, reason: str = "hangup") -> dict[str, Any]:
        return self._json("POST", f"/voice/calls/{call_id}/bye", json={"reason": reason})

    def events(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        return self._json("GET", "/voice/events", params={"timeout": timeout})["events"]  # type: ignore[no-any-return]

"""FastAPI dependencies shared by the routers: the services, the caller's address, and
the three kinds of caller (a terminal's session, an operator with a role, nobody).

Each router declares its caller once (``dependencies=[...]`` or a typed parameter), so
which audience reaches which route is visible in ``server/routers/`` and tested as a
table in ``tests/test_access.py``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from mstcrypt.apps.login.tokens import TokenError
from mstcrypt.errors import AccessDeniedError, AuthenticationError, VerificationError
from mstcrypt.kmc.operators import OperatorIdentity
from mstcrypt.kmc.service import Kmc
from mstcrypt.server.caworkers import CaWorkers, InProcessCa
from mstcrypt.server.config import Settings

__all__ = [
    "CaDep",
    "KmcDep",
    "Session",
    "SettingsDep",
    "Source",
    "bearer",
    "client_source",
    "require_role",
]


def get_kmc(request: Request) -> Kmc:
    return request.app.state.kmc  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_ca(request: Request) -> InProcessCa | CaWorkers:
    return request.app.state.ca  # type: ignore[no-any-return]


def get_login(request: Request) -> Any:
    return request.app.state.login()


KmcDep = Annotated[Kmc, Depends(get_kmc)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
LoginDep = Annotated[Any, Depends(get_login)]
#: enrollments and revocations: in this process or in the CA workers
CaDep = Annotated[InProcessCa | CaWorkers, Depends(get_ca)]


def client_source(request: Request) -> str:
    """The caller's address for rate limits and audit records. ``X-Forwarded-For`` is
    believed only from the proxies listed in the settings (``MSTCRYPT_TRUSTED_PROXIES``):
    the address is the right-most one that is not a trusted proxy."""
    peer = request.client.host if request.client else "-"
    trusted = request.app.state.trusted_proxies
    if not trusted or not _in(peer, trusted):
        return peer
    hops = [h.strip() for v in request.headers.getlist("x-forwarded-for") for h in v.split(",")]
    for hop in reversed([h for h in hops if h]):
        if not _in(hop, trusted):
            return hop[:64]
    return peer


def _in(address: str, networks: list[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


Source = Annotated[str, Depends(client_source)]


def bearer(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise AuthenticationError("credential required (Authorization: Bearer …)")
    token = authorization[7:].strip()
    if not token or len(token) > 8192:
        raise AuthenticationError("malformed credential")
    return token


Bearer = Annotated[str, Depends(bearer)]


def session(token: Bearer, login: LoginDep) -> dict[str, Any]:
    """The claims of a valid §7.3 session token (not logged out, certificate not revoked)."""
    if not token.startswith("MST1."):
        raise AuthenticationError("a session token from certificate login is required")
    try:
        return dict(login.verify_session(token))
    except TokenError:
        raise
    except VerificationError as exc:
        raise AuthenticationError(f"session token refused: {exc}") from None


Session = Annotated[dict[str, Any], Depends(session)]


def operator(request: Request, token: Bearer, kmc: KmcDep) -> OperatorIdentity:
    """An operator: a session token whose certificate is bound to a registered, active
    operator; or, only where enabled, a static credential."""
    if token.startswith("MST1."):
        try:
            claims = request.app.state.login().verify_session(token)
        except VerificationError as exc:
            raise AuthenticationError(f"session token refused: {exc}") from None
        return kmc.operators.from_session(claims)
    if not request.app.state.settings.static_operators:
        raise AuthenticationError(
            "operators log in with their certificate (static credentials are disabled)"
        )
    return kmc.operators.from_static(token)


Operator = Annotated[OperatorIdentity, Depends(operator)]


def require_role(*roles: str) -> Callable[..., OperatorIdentity]:
    """A dependency admitting an operator holding any of ``roles``."""

    def check(who: Operator) -> OperatorIdentity:
        if not who.roles.intersection(roles):
            raise AccessDeniedError(
                f"operator {who.name!r} lacks the role for this operation "
                f"(needs {' or '.join(roles)})"
            )
        return who

    check.roles = roles  # type: ignore[attr-defined]
    return check

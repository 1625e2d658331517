"""HTTP status of each error type; errors answer JSON ``{"error", "detail"}``."""

from __future__ import annotations

from mstcrypt.apps.login.tokens import TokenError
from mstcrypt.errors import (
    AccessDeniedError,
    AuthenticationError,
    DecodeError,
    KeyStoreError,
    MstCryptError,
    PolicyError,
    RateLimitError,
    UnsupportedError,
    VerificationError,
)
from mstcrypt.kmc.context import NotFoundError
from mstcrypt.server.caworkers import CaWorkerError

RateLimited = RateLimitError

STATUS: list[tuple[type[Exception], int]] = [
    (TokenError, 401),
    (AuthenticationError, 401),
    (AccessDeniedError, 403),
    (NotFoundError, 404),
    (RateLimited, 429),
    (VerificationError, 403),
    (DecodeError, 400),
    (UnsupportedError, 400),
    (PolicyError, 409),
    (KeyStoreError, 500),
    (CaWorkerError, 503),
    (MstCryptError, 400),
]


def status_of(exc: MstCryptError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))

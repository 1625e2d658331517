"""Typed errors of the operations console (all in the :mod:`mstcrypt.errors` hierarchy,
so the API and the console map them to the same HTTP statuses)."""

from __future__ import annotations

from mstcrypt.errors import AccessDeniedError, AuthenticationError, PolicyError

__all__ = ["ConsoleAuthError", "ConsoleLoginRequired", "ConsolePolicyError", "CsrfError"]


class ConsoleAuthError(AuthenticationError):
    """A console code or console session was refused (forged, expired, used, logged out,
    for another audience, or its operator or certificate is no longer active)."""


class ConsoleLoginRequired(ConsoleAuthError):
    """A console page was asked for without a valid console session: the browser is sent
    to the login page."""


class CsrfError(AccessDeniedError):
    """A state-changing console request without this session's CSRF token, or from
    another site (Origin / Sec-Fetch-Site)."""


class ConsolePolicyError(PolicyError):
    """A console session setting out of its bounds (code lifetime, idle expiry, maximum
    age: :class:`~mstcrypt.apps.console.sessions.ConsolePolicy`)."""

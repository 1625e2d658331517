"""Randomness. Every random byte in mstcrypt comes from the OS CSPRNG."""

from __future__ import annotations

import secrets

from mstcrypt.crypto.curve import N

__all__ = ["random_bytes", "random_scalar"]


def random_bytes(n: int) -> bytes:
    """n bytes from the operating system's CSPRNG."""
    if not isinstance(n, int) or n < 0:
        from mstcrypt.errors import PolicyError

        raise PolicyError("random_bytes: n must be a non-negative int")
    return secrets.token_bytes(n)


def random_scalar(upper: int = N - 1) -> int:
    """A uniform integer in [1, upper] (default [1, n-1])."""
    return 1 + secrets.randbelow(upper)

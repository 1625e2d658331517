"""Encrypted voice calls (guide T/ZSA 37-2020 §7.1): per-call SM2 key agreement between
two enrolled terminals (:mod:`.keyagree`) and SRTP media protection with the SM4/ZUC
profiles of :mod:`mstcrypt.protocols.srtp`. Specification: docs/voice.md.

    a = CallerHandshake(alice_party, "bob", bob_enc_cert_der)
    b = CalleeHandshake(bob_party, a.offer())          # validates alice's certificate
    confirm = a.receive_answer(b.accept())             # checks S_B
    keys_b = b.receive_confirm(confirm)                # checks S_A and the transcript MAC
    tx, rx = a.keys.contexts()                         # SRTP contexts per direction
"""

from __future__ import annotations

from mstcrypt.apps.voice.errors import (
    CallAuthError,
    CallError,
    CallFormatError,
    CallPolicyError,
    CallReplayError,
)
from mstcrypt.apps.voice.keyagree import (
    DEFAULT_PROFILES,
    Answer,
    CalleeHandshake,
    CallerHandshake,
    CallKeys,
    CallParty,
    Confirm,
    Offer,
    OfferGuard,
    parse_message,
)

__all__ = [
    "DEFAULT_PROFILES",
    "Answer",
    "CallAuthError",
    "CallError",
    "CallFormatError",
    "CallKeys",
    "CallParty",
    "CallPolicyError",
    "CallReplayError",
    "CalleeHandshake",
    "CallerHandshake",
    "Confirm",
    "Offer",
    "OfferGuard",
    "parse_message",
]

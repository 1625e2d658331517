"""Terminals (Phone) against the running platform: a terminal whose certificate was
revoked is refused by the call server itself (its session dies with the certificate);
a caller presenting another user's certificate is refused by the callee, who says why
in its bye and keeps waiting; the next, valid caller gets through, audio both ways."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mstcrypt.apps.voice import CallPolicyError
from mstcrypt.cli import voice_cmd
from mstcrypt.cli.platform import running_platform
from mstcrypt.client import Client
from mstcrypt.module import KeyUsage, SoftToken
from mstcrypt.pki import Certificate
from mstcrypt.server.config import Settings

from .test_voice_media import best_correlation, speechlike

np = pytest.importorskip("numpy")
PIN = "phone-pin-1357"


def test_revoked_caller_refused_then_valid_call_both_ways(tmp_path: Path) -> None:
    data = tmp_path / "platform"
    data.mkdir()
    settings = Settings.from_env(data)
    with running_platform(data, settings, tls=False) as url:
        kmc = settings.kmc()
        root = kmc.chain()[-1]
        ca = tmp_path / "root.pem"
        ca.write_bytes(root.pem)
        public = Client(url, anchors=[root])
        for who in ("alice", "bob", "mallory", "eve"):
            tok = SoftToken.init(tmp_path / f"{who}.tok", PIN, "admin-unlock-code",
                                 iterations=100_000, anchors=[root.der])  # fmt: skip
            tok.login(PIN)
            code, _ = kmc.create_enrollment_code(owner=who, subject={"CN": who}, actor="op")
            public.enroll(code, tok, container="main")
        mallory_tok = SoftToken.open(tmp_path / "mallory.tok")
        mallory_tok.login(PIN)
        enc = Certificate.from_der(mallory_tok.get_certificate("main", KeyUsage.ENCRYPT))
        # mallory's phone starts while her certificate is still good...
        mallory = phone(url, tmp_path / "mallory.tok", ca)
        kmc.revoke_certificate(f"{enc.serial:x}", reason="key_compromise", actor="op")
        kmc.publish_crls(force=True)
        # ...bob's phone has the CRL that revokes it
        bob, alice = phone(url, tmp_path / "bob.tok", ca), phone(url, tmp_path / "alice.tok", ca)
        eve = phone(url, tmp_path / "eve.tok", ca)
        eve.party.certificate = alice.party.certificate  # eve shows alice's certificate
        x_ab, x_ba = speechlike(1.0, seed=2), speechlike(1.0, seed=3)

        async def run() -> tuple[Any, Any, list[Exception]]:
            answering = asyncio.create_task(bob.answer(x_ba.tobytes(), pace=0.3, timeout=30))
            await asyncio.sleep(0.3)
            refused: list[Exception] = []
            for caller in (mallory, eve):
                try:
                    await caller.call("bob", x_ab.tobytes(), answer_timeout=20)
                except CallPolicyError as exc:
                    refused.append(exc)
                else:
                    raise AssertionError("a bad caller got through")
            r_a = await alice.call("bob", x_ab.tobytes(), pace=0.3, drain=1.0)
            return r_a, await answering, refused

        try:
            r_alice, r_bob, refused = asyncio.run(run())
        finally:
            for p in (alice, bob, mallory, eve):
                p.sig.close()
    assert "401" in str(refused[0]) and "revoked" in str(refused[0])
    assert "refused: authentication" in str(refused[1])
    assert r_alice.profile == r_bob.profile == "MST_SM4_CM_128_HMAC_SM3_80"
    assert best_correlation(x_ab, np.frombuffer(r_bob.received_pcm, "<i2"), 5) > 0.99
    assert best_correlation(x_ba, np.frombuffer(r_alice.received_pcm, "<i2"), 5) > 0.99


def phone(url: str, token: Path, ca: Path) -> Any:
    return voice_cmd._phone(url, str(token), PIN, "main", str(ca), "127.0.0.1", 0, None, None)

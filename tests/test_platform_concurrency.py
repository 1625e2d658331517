"""Concurrent requests against the platform server (in-process, ``running_platform``), on
SQLite and PostgreSQL: parallel enrollments, one code raced by many terminals, and
concurrent key rotations, over the platform's TLCP endpoint (clients authenticate it
with the platform's root). The store is checked afterwards with
:class:`platform_helpers.InvariantChecker`.

The rate-limit race needs requests from several source addresses (127.0.0.2-5), which
the TLCP transport does not bind: that test runs against the plain-HTTP endpoint
(``running_platform(..., tls=False)``, the reverse-proxy set-up).

Enrollment is rate-limited per source address (MSTCRYPT_ENROLL_RATE); the tests raise
the limit, and the tests that are not about the rate limiter pre-create its counter rows
(:func:`platform_helpers.seed_rate_limit`) so that a first-request race in the limiter
(test_rate_limit_first_request_race) cannot mask what they check.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mstcrypt.cli.platform import running_platform
from mstcrypt.client import Client
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.service import Kmc
from mstcrypt.pki import Certificate
from platform_helpers import (
    MASTER_KEY_HEX,
    InvariantChecker,
    add_operators,
    kmc_for,
    seed_rate_limit,
    terminal,
    tlcp_client,
)

THREADS = 32
ENROLLMENTS = 200
LOCAL = "127.0.0.1"


@dataclass
class Platform:
    url: str
    backend: str
    tokens: dict[str, str]
    kmc: Kmc
    checker: InvariantChecker
    root: Certificate

    def admin(self, who: str = "alice") -> Client:
        return Client(self.url, anchors=[self.root], operator_token=self.tokens[who])

    def code(self, owner: str) -> str:
        with self.admin() as c:
            return str(c.create_enrollment_code(owner, {"CN": owner, "O": "concurrency"})["code"])

    def http(self, source: str = LOCAL) -> httpx.Client:
        """An httpx client of the endpoint (TLCP, or plain HTTP bound to ``source``)."""
        if self.url.startswith("https://"):
            assert source == LOCAL, "the TLCP transport does not bind a source address"
            return tlcp_client(self.url, [self.root], timeout=120)
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(base_url=self.url, timeout=120, transport=transport)

    def enroll(self, code: str, csr: str, *, source: str = LOCAL) -> httpx.Response:
        with self.http(source) as http:
            return http.post("/enroll", json={"code": code, "csr": csr})


def _platform(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, tls: bool
) -> Iterator[Platform]:
    data_dir = tmp_path / "data"
    for var, value in {
        "MSTCRYPT_DATABASE_URL": database_url,
        "MSTCRYPT_MASTER_KEY": MASTER_KEY_HEX,
        "MSTCRYPT_ENROLL_RATE": "1000000",
        "MSTCRYPT_STATIC_OPERATORS": "1",
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("MSTCRYPT_MASTER_KEY_FILE", raising=False)
    kmc = kmc_for(database_url)
    backend = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    try:
        kmc.create_schema()
        tokens = add_operators(kmc)
        with running_platform(data_dir, tls=tls) as url:
            root = kmc.chain()[-1]
            yield Platform(url, backend, tokens, kmc, InvariantChecker(kmc), root)
    finally:
        kmc.db.dispose()


@pytest.fixture
def platform(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Platform]:
    """The platform over TLCP."""
    yield from _platform(database_url, tmp_path, monkeypatch, tls=True)


@pytest.fixture
def plain_platform(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Platform]:
    """The platform over plain HTTP (behind a TLS-terminating proxy in production)."""
    yield from _platform(database_url, tmp_path, monkeypatch, tls=False)


def xfail_on(request: pytest.FixtureRequest, p: Platform, backends: set[str], why: str) -> None:
    if p.backend in backends:
        request.applymarker(pytest.mark.xfail(strict=True, reason=why))


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released together; returns results (or exceptions)."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


# ------------------------------------------------------------------ enrollment ---------
def test_parallel_enrollments_distinct_codes(platform: Platform) -> None:
    p = platform
    seed_rate_limit(p.kmc, f"enroll:{LOCAL}")
    owners = [f"dev{i:03d}" for i in range(ENROLLMENTS)]
    with ThreadPoolExecutor(THREADS) as pool:
        codes = list(pool.map(p.code, owners))
        terminals = list(pool.map(terminal, owners))
    assert len(set(codes)) == ENROLLMENTS

    def enroll(i: int) -> httpx.Response:
        return p.enroll(codes[i], terminals[i][1])

    with ThreadPoolExecutor(THREADS) as pool:
        replies = list(pool.map(enroll, range(ENROLLMENTS)))
    assert statuses(replies) == {200: ENROLLMENTS}, [r.text for r in replies if r.is_error][:5]
    for i, r in enumerate(replies):
        body = r.json()
        assert body["owner"] == owners[i]
        sign = Certificate.from_pem(body["sign_certificate"].encode())
        assert sign.public_key == terminals[i][0].public_key()

    snap = p.checker.check()
    mine = set(owners)
    certs = [c for c in snap.certs.values() if c.owner in mine]
    keys = [k for k in snap.keys.values() if k.owner in mine]
    assert len(certs) == 2 * ENROLLMENTS
    assert Counter(c.usage for c in certs) == {"sign": ENROLLMENTS, "enc": ENROLLMENTS}
    assert len(keys) == ENROLLMENTS and {k.owner for k in keys} == mine
    assert all(k.state == "active" and k.version == 1 for k in keys)
    assert {r.json()["key_id"] for r in replies} == {k.id for k in keys}
    assert all(c.used_at is not None for c in snap.codes.values() if c.owner in mine)
    assert snap.audit_actions["enroll"] == ENROLLMENTS
    assert snap.audit_actions["enroll.code"] == ENROLLMENTS
    with p.admin() as c:
        assert c.verify_audit()["ok"]


def test_same_code_raced_by_ten_terminals(platform: Platform) -> None:
    p = platform
    seed_rate_limit(p.kmc, f"enroll:{LOCAL}")
    for round_ in range(3):
        owner = f"raced{round_}"
        code = p.code(owner)
        csrs = [terminal(f"{owner}-{i}") for i in range(10)]
        replies = race(10, lambda i, code=code, csrs=csrs: p.enroll(code, csrs[i][1]))
        assert all(isinstance(r, httpx.Response) for r in replies), replies
        assert statuses(replies) == {200: 1, 403: 9}, [r.text for r in replies]
        for r in replies:
            if r.status_code == 403:
                assert "already used" in r.json()["detail"], r.text
        winner = next(i for i, r in enumerate(replies) if r.status_code == 200)
        sign = Certificate.from_pem(replies[winner].json()["sign_certificate"].encode())
        assert sign.public_key == csrs[winner][0].public_key()
        snap = p.checker.check()
        row = snap.code(code)
        assert row is not None and row.used_at is not None
        assert len(snap.enroll_audit[row.id]) == 1
        assert sum(c.owner == owner for c in snap.certs.values()) == 2
        assert sum(k.owner == owner for k in snap.keys.values()) == 1
    assert snap.audit_actions["enroll"] == 3


# ------------------------------------------------------------------ rotation -----------
def _enrolled(p: Platform, owner: str) -> dict[str, str]:
    """Enroll a new terminal of ``owner``: the serials of its two certificates."""
    _, csr = terminal(owner)
    r = p.enroll(p.code(owner), csr)
    assert r.status_code == 200, r.text
    body = r.json()
    return {
        f"{usage}_serial": f"{Certificate.from_pem(body[field].encode()).serial:x}"
        for usage, field in (("sign", "sign_certificate"), ("enc", "encryption_certificate"))
    }


def _rotate(p: Platform, owner: str, who: str) -> httpx.Response:
    pub = SM2PrivateKey.generate().public_key().to_bytes().hex()
    with p.http() as http:
        return http.post(
            "/admin/keys/rotate",
            json={"owner": owner, "terminal_public_key": pub, "subject": {"CN": owner}},
            headers={"Authorization": f"Bearer {p.tokens[who]}"},
        )


def test_concurrent_rotations_one_owner(platform: Platform) -> None:
    """Racing rotations for one owner: each succeeds or is refused (409); the owner ends
    with exactly one active key, the newest successful rotation's."""
    p = platform
    seed_rate_limit(p.kmc, f"enroll:{LOCAL}")
    _enrolled(p, "rot")
    ok = 0
    for _ in range(3):
        replies = race(8, lambda i: _rotate(p, "rot", ("alice", "bob")[i % 2]))
        assert all(isinstance(r, httpx.Response) for r in replies), replies
        assert set(statuses(replies)) <= {200, 409}, [r.text for r in replies if r.is_error]
        assert 200 in statuses(replies)
        ok += statuses(replies)[200]
        snap = p.checker.check()  # includes: at most one active key per owner
        keys = sorted((k for k in snap.keys.values() if k.owner == "rot"), key=lambda k: k.version)
        assert [k.state for k in keys].count("active") == 1
        assert keys[-1].state == "active"
        assert len(keys) == 1 + ok
        assert {k.version for k in keys} == set(range(1, len(keys) + 1))
        assert all(k.state == "decrypt_only" for k in keys[:-1])
        for r in replies:
            if r.status_code == 200:
                assert r.json()["key_id"] in snap.keys
    assert snap.audit_actions["key.rotate"] == ok
    # the current encryption certificate is the active key's
    with p.admin() as c:
        current = c.encryption_certificate("rot")
    assert current.public_key.to_bytes() == keys[-1].public_key


def test_concurrent_rotations_distinct_owners(
    platform: Platform, request: pytest.FixtureRequest
) -> None:
    """Rotations of different owners do not conflict: all succeed."""
    p = platform
    seed_rate_limit(p.kmc, f"enroll:{LOCAL}")
    owners = [f"multi{i}" for i in range(8)]
    for o in owners:
        _enrolled(p, o)
    replies = race(8, lambda i: _rotate(p, owners[i], "alice"))
    assert all(isinstance(r, httpx.Response) for r in replies), replies
    assert statuses(replies) == {200: 8}, [r.text for r in replies if r.is_error]
    p.checker.check()


# ------------------------------------------------------------------ known races --------
def test_rate_limit_first_request_race(plain_platform: Platform) -> None:
    """The first requests of a fresh rate-limit window, concurrently: each is counted and
    answered (here 403, unknown code), none fails. Regression test: Kmc.allow at HEAD
    e35196e did SELECT ... FOR UPDATE of the missing (bucket, window) row, which locks
    nothing on PostgreSQL, so concurrent first requests all INSERTed it -> 500."""
    p = plain_platform
    _, csr = terminal("nobody")
    for n in range(2, 6):  # a fresh bucket (source address) per round
        source = f"127.0.0.{n}"
        replies = race(16, lambda i, source=source: p.enroll("ABCDE-FGHJK", csr, source=source))
        assert all(isinstance(r, httpx.Response) for r in replies), replies
        assert statuses(replies) == {403: 16}, [r.text for r in replies if r.status_code != 403]


def test_reenrollment_keeps_one_active_key(
    platform: Platform, request: pytest.FixtureRequest
) -> None:
    """A second code for the same owner (a new terminal): the new key becomes the active
    one and the previous active key is demoted, as rotate/distribute do."""
    p = platform
    seed_rate_limit(p.kmc, f"enroll:{LOCAL}")
    first = _enrolled(p, "twice")
    second = _enrolled(p, "twice")
    snap = p.checker.check()
    keys = sorted((k for k in snap.keys.values() if k.owner == "twice"), key=lambda k: k.version)
    assert [k.state for k in keys] == ["decrypt_only", "active"]
    # the new terminal's certificates supersede the old terminal's
    for sn in (first["sign_serial"], first["enc_serial"]):
        assert (snap.certs[sn].status, snap.certs[sn].revocation_reason) == (
            "revoked",
            "superseded",
        )
    for sn in (second["sign_serial"], second["enc_serial"]):
        assert snap.certs[sn].status == "active"


def test_concurrent_enrollments_one_owner(
    platform: Platform, request: pytest.FixtureRequest
) -> None:
    """Several codes of one owner redeemed at once: all succeed, one key stays active."""
    p = platform
    seed_rate_limit(p.kmc, f"enroll:{LOCAL}")
    codes = [p.code("crowd") for _ in range(6)]
    csrs = [terminal(f"crowd-{i}")[1] for i in range(6)]
    replies = race(6, lambda i: p.enroll(codes[i], csrs[i]))
    assert all(isinstance(r, httpx.Response) for r in replies), replies
    assert statuses(replies) == {200: 6}, [r.text for r in replies if r.is_error]
    snap = p.checker.check()  # each enrollment superseded the one committed before it
    mine = [c for c in snap.certs.values() if c.owner == "crowd"]
    assert len(mine) == 12 and sum(c.status == "active" for c in mine) == 2
    assert sum(c.revocation_reason == "superseded" for c in mine) == 10


# ------------------------------------------------------------------ the checker --------
def test_invariant_checker_sees_broken_rules(database_url: str) -> None:
    """The checker the tests above rely on reports each rule broken in the store: a
    re-enrollment that left the old certificate active, a recovery the requester approved
    or released with too few approvers, an operator bound to another's certificate."""
    from sqlalchemy import update

    from mstcrypt.kmc.models import IssuedCertificate, Operator, RecoveryRequest

    kmc = kmc_for(database_url)
    try:
        kmc.create_schema()
        kmc.init_ca(actor="test")
        add_operators(kmc)
        checker = InvariantChecker(kmc)
        serials = []
        for _ in range(2):  # a terminal, then its replacement
            _, csr = terminal("eve")
            code, _exp = kmc.create_enrollment_code(owner="eve", subject={"CN": "eve"}, actor="op")
            e = kmc.enroll(code, csr.encode())
            serials.append(f"{e.sign_certificate.serial:x}")
        recipient = SM2PrivateKey.generate().public_key()
        rid = kmc.request_recovery(e.key_id, recipient, reason="lost", actor="officer-alice")
        kmc.approve_recovery(rid, actor="officer-bob")
        snap = checker.check()
        assert snap.certs[serials[0]].revocation_reason == "superseded"
        assert snap.recoveries[rid].status == "released"

        def broken(change: Any, expected: str) -> None:
            with kmc.db.tx() as s:
                undo = change(s)
            with pytest.raises(AssertionError, match=expected):
                checker.check()
            with kmc.db.tx() as s:
                undo(s)
            checker.check()

        def reactivate(s: Any) -> Any:
            s.execute(
                update(IssuedCertificate)
                .where(IssuedCertificate.serial == serials[0])
                .values(status="active")
            )
            return lambda s: s.execute(
                update(IssuedCertificate)
                .where(IssuedCertificate.serial == serials[0])
                .values(status="revoked")
            )

        def approvals(value: list[str]) -> Any:
            def change(s: Any) -> Any:
                q = update(RecoveryRequest).where(RecoveryRequest.id == rid)
                s.execute(q.values(approvals=value))
                return lambda s: s.execute(q.values(approvals=["officer-bob"]))

            return change

        def bind_to_eve(s: Any) -> Any:
            q = update(Operator).where(Operator.name == "officer-alice")
            s.execute(q.values(cert_serial=serials[1]))
            return lambda s: s.execute(q.values(cert_serial=None))

        broken(reactivate, "re-enrollment left .* active")
        broken(approvals(["officer-bob", "officer-alice"]), "the requester officer-alice approved")
        broken(approvals([]), "released with approvals")
        broken(bind_to_eve, "bound to .*, not theirs")
    finally:
        kmc.db.dispose()

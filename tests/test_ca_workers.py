"""Enrollments and revocations in CA worker processes (``serve --ca-workers``,
:mod:`mstcrypt.server.caworkers`): the same HTTP answers and errors as in the API
process, the work really done elsewhere, the CRL published by the API process, a dead
worker replaced, a worker that cannot open the platform refused at start-up."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from http_helpers import Platform, assert_error, csr_pem, make_kmc, platform
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import KeyStoreError, PolicyError
from mstcrypt.kmc.models import AuditRecord
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL
from mstcrypt.server import caworkers
from mstcrypt.server.caworkers import CaWorkerError, CaWorkers, InProcessCa
from mstcrypt.server.config import Settings
from platform_helpers import (
    MASTER_KEY_HEX,
    ca_workers_of,
    free_port,
    master_key,
    server_env,
    wait_gone,
    wait_health,
)


@pytest.fixture
def p(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    # the workers open the SS-CC and the database from the environment and settings,
    # as `mstcrypt serve` does
    monkeypatch.setenv("MSTCRYPT_MASTER_KEY", MASTER_KEY_HEX)
    kmc = make_kmc(database_url)
    try:
        yield from platform(
            kmc,
            tmp_path / "data",
            database_url=database_url,
            public_url="http://testserver",
            ca_workers=1,
            crl_interval=0.2,
        )
    finally:
        kmc.db.dispose()


def _refuse_here(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("ran in the API process")


def _revoked_on_crl(p: Platform, serial: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crl = CRL.from_der(p.c.get("/crl/issuing.crl").content)
        if crl.is_revoked(serial):
            return True
        time.sleep(0.1)
    return False


def test_enroll_and_revoke_run_in_the_worker(p: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(p.c.app.state.ca, CaWorkers)
    # in this process they would fail: the answers below come from the worker
    monkeypatch.setattr(Kmc, "enroll", _refuse_here)
    monkeypatch.setattr(Kmc, "revoke_certificate", _refuse_here)
    t = p.terminal("alice")  # enrolled by the worker, logged in here
    assert t.sign_cert.public_key == t.key.public_key()
    assert p.kmc.certificate_status(f"{t.sign_cert.serial:x}") == "active"
    serial = f"{t.sign_cert.serial:x}"
    r = p.c.post(
        f"/admin/certificates/{serial}/revoke", json={"reason": "key_compromise"}, headers=p.auth()
    )
    assert r.status_code == 200, r.text
    assert set(r.json()["revoked"]) == {serial, f"{t.enc_cert.serial:x}"}
    assert p.kmc.certificate_status(serial) == "revoked"
    # published by this process's publisher, woken after the job
    assert _revoked_on_crl(p, t.sign_cert.serial)
    r = p.login(t.key, t.sign_cert)
    assert r.status_code in (401, 403), r.text
    # the records of both processes form one chain
    with p.kmc.db.read() as s:
        actions = set(s.scalars(select(AuditRecord.action)))
    assert {"enroll", "cert.revoke"} <= actions
    assert p.kmc.verify_audit().ok


def test_errors_keep_their_type(p: Platform) -> None:
    code = p.code("bob")
    key = SM2PrivateKey.generate()
    assert p.c.post("/enroll", json={"code": code, "csr": csr_pem(key)}).status_code == 200
    again = p.c.post("/enroll", json={"code": code, "csr": csr_pem(key)})
    assert_error(again, 403, "VerificationError")
    not_a_csr = "this is not a certification request at all"
    bad = p.c.post("/enroll", json={"code": p.code("carol"), "csr": not_a_csr})
    assert bad.status_code == 400 and bad.json()["error"] == "DecodeError", bad.text
    missing = p.c.post(
        "/admin/certificates/abcdef12/revoke", json={"reason": "unspecified"}, headers=p.auth()
    )
    assert_error(missing, 404, "NotFoundError")


def test_a_dead_worker_is_replaced(p: Platform) -> None:
    workers: CaWorkers = p.c.app.state.ca
    pid = workers._get().submit(os.getpid).result()
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    # the next request runs on a new pool, or (if the death was not yet noticed when it
    # was submitted) fails with 503 and the one after runs
    r = p.c.post("/enroll", json={"code": p.code("dave"), "csr": csr_pem(SM2PrivateKey.generate())})
    if r.status_code != 200:
        assert_error(r, 503, "CaWorkerError")
        r = p.c.post(
            "/enroll", json={"code": p.code("dave"), "csr": csr_pem(SM2PrivateKey.generate())}
        )
    assert r.status_code == 200, r.text
    assert workers._get().submit(os.getpid).result() not in (pid, os.getpid())


def test_a_worker_that_cannot_open_the_platform_fails_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSTCRYPT_MASTER_KEY", "not hex")
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'k.db'}")
    with pytest.raises(KeyStoreError):
        settings.keystore()  # what the worker meets
    workers = CaWorkers(settings.kmc, 1)
    with pytest.raises(CaWorkerError, match="could not open the platform"):
        workers.start()
    with pytest.raises(CaWorkerError, match="stopped"):
        workers.enroll("code", b"csr", source="-")


def test_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(data_dir=tmp_path).ca_workers == 0  # embedded: in this process
    monkeypatch.delenv("MSTCRYPT_CA_WORKERS", raising=False)
    auto = 1 if (os.cpu_count() or 1) >= 2 else 0  # serve: one when a CPU is spare
    assert Settings.from_env(tmp_path).ca_workers == auto
    monkeypatch.setenv("MSTCRYPT_CA_WORKERS", "auto")
    assert Settings.from_env(tmp_path).ca_workers == auto
    monkeypatch.setenv("MSTCRYPT_CA_WORKERS", "0")
    assert Settings.from_env(tmp_path).ca_workers == 0
    monkeypatch.setenv("MSTCRYPT_CA_WORKERS", "2")
    assert Settings.from_env(tmp_path).ca_workers == 2
    for bad in ("lots", "-1", "65"):
        monkeypatch.setenv("MSTCRYPT_CA_WORKERS", bad)
        with pytest.raises(PolicyError, match=r"MSTCRYPT_CA_WORKERS|CA workers"):
            Settings.from_env(tmp_path)
    monkeypatch.delenv("MSTCRYPT_CA_WORKERS")
    with pytest.raises(PolicyError):
        Settings(data_dir=tmp_path, ca_workers=-1)
    kmc = make_kmc(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        s = Settings(data_dir=tmp_path, keystore_override=kmc.ctx.keys)
        assert isinstance(s.ca_operations(kmc), InProcessCa)
        s.ca_workers = 1
        with pytest.raises(PolicyError, match="key store given as an object"):
            s.ca_operations(kmc)
    finally:
        kmc.db.dispose()
    from mstcrypt.cli import app

    r = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "d"), "--ca-workers", "99"])
    assert r.exit_code == 2 and "between 0 and 64" in r.output, r.output


def test_in_process_and_worker_answers_have_the_same_shape(p: Platform, tmp_path: Path) -> None:
    key = SM2PrivateKey.generate()
    via_worker = p.c.post("/enroll", json={"code": p.code("erin"), "csr": csr_pem(key)}).json()
    here = InProcessCa(p.kmc).enroll(
        p.code("frank"), csr_pem(SM2PrivateKey.generate()).encode(), source="test"
    )
    assert set(via_worker) == set(here)
    assert via_worker["chain"] == here["chain"]


def test_serve_with_workers_over_http_and_killed(tmp_path: Path) -> None:
    """The real `mstcrypt serve --ca-workers 1` (SQLite in its data directory): an
    enrollment over HTTP runs in its worker; killed with SIGKILL, the server takes the
    worker with it (no orphan holding the database)."""
    data = tmp_path / "data"
    port = free_port()
    env = server_env(f"sqlite:///{data / 'mstcrypt.db'}")
    del env["MSTCRYPT_DATABASE_URL"]  # the data directory's own database
    cmd = [sys.executable, "-m", "mstcrypt", "serve", "--init", "--tls", "none"]
    cmd += ["--port", str(port), "--data-dir", str(data), "--ca-workers", "1"]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_health(f"http://127.0.0.1:{port}", proc, timeout=60)
        kmc = Kmc(Settings(data_dir=data).database(), SoftKeyStore(master_key()))
        try:
            code, _ = kmc.create_enrollment_code(owner="gina", subject={"CN": "gina"}, actor="test")
        finally:
            kmc.db.dispose()
        r = httpx.post(
            f"http://127.0.0.1:{port}/enroll",
            json={"code": code, "csr": csr_pem(SM2PrivateKey.generate(), "gina")},
            timeout=30,
        )
        assert r.status_code == 200, (r.text, log.read_text()[-2000:])
        children = ca_workers_of(proc.pid)
        assert len(children) == 1, children
        proc.kill()
        proc.wait(10)
        wait_gone(children)  # asserts: the CA worker does not outlive its server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wal_autocheckpoint() -> int:
    """In a worker: the WAL auto-checkpoint threshold of its connections."""
    from mstcrypt.server import caworkers

    kmc = caworkers._worker_kmc
    assert kmc is not None
    with kmc.db.engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar())


def test_workers_leave_wal_checkpoints_to_the_api_process(p: Platform) -> None:
    """SQLite: a worker's commits never checkpoint inline; the API process's background
    checkpointer does, so a worker's write holds do not include copying pages."""
    if not p.kmc.db.is_sqlite:
        pytest.skip("WAL checkpoints are SQLite's")
    workers: CaWorkers = p.c.app.state.ca
    assert workers._get().submit(_wal_autocheckpoint).result() == 0
    assert p.kmc.db._checkpointer is not None  # ... because the API process checkpoints


def _heap_frozen() -> int:
    import gc

    return gc.get_freeze_count()


def test_workers_freeze_their_start_up_heap(p: Platform) -> None:
    """A worker's full garbage collections skip its start-up heap (a full pass over it
    takes tens of ms, and could land inside a write transaction)."""
    workers: CaWorkers = p.c.app.state.ca
    assert workers._get().submit(_heap_frozen).result() > 10_000


def _gc_threshold() -> tuple[int, int, int]:
    import gc

    return gc.get_threshold()


def test_workers_run_full_collections_between_jobs_only(p: Platform) -> None:
    """A worker's automatic full collections are off (a full pass over its memo of
    parsed certificates takes 65–75 ms at 100k terminals, and would hold the write lock
    that long inside a transaction); young collections stay automatic."""
    workers: CaWorkers = p.c.app.state.ca
    young, middle, full = workers._get().submit(_gc_threshold).result()
    assert full >= 1 << 30 and (young, middle) == gc.get_threshold()[:2]


def test_a_full_collection_runs_between_jobs_when_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a job, a full collection runs once CPython's rule would have run one (10
    young-generation passes), at most once per FULL_GC_SECONDS."""
    monkeypatch.setattr(caworkers, "_last_full_gc", 0.0)
    gc.collect()  # count of young passes since the last full one: 0
    assert not caworkers._collect_between_jobs(now=1000.0)  # not due: no young passes
    for _ in range(10):
        gc.collect(1)
    assert gc.get_count()[2] >= 10
    assert caworkers._collect_between_jobs(now=1000.0)
    assert gc.get_count()[2] == 0  # a full pass resets it
    for _ in range(10):
        gc.collect(1)
    # due by CPython's rule, but one ran less than FULL_GC_SECONDS ago
    assert not caworkers._collect_between_jobs(now=1000.0 + caworkers.FULL_GC_SECONDS / 2)
    assert caworkers._collect_between_jobs(now=1000.0 + caworkers.FULL_GC_SECONDS)

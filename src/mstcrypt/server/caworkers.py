"""Enrollments and revocations in worker processes (``mstcrypt serve --ca-workers N``).

An enrollment costs 15–19 ms of CPU (a key pair generated and wrapped in the SS-CC, two
certificates built and signed, the key enveloped to the terminal, the records written),
a revocation 3–7 ms. Run in the API process, that work competes for the interpreter
lock with the terminals' requests: a login gives the lock up at each of its database
round trips and waits to get it back behind whatever CPU-bound work holds it, so its
tail latency grows with the enrollments beside it, not with its own cost.

With ``ca_workers`` > 0 the API process hands enrollments and revocations to that many
worker processes (spawned, not forked: no thread, lock or connection of the API process
is copied). Each worker opens its own :class:`~mstcrypt.kmc.service.Kmc` from the same
settings — its own database connections and its own SS-CC session, exactly as another
``mstcrypt serve`` instance would (docs/deployment.md), so no key and no PIN crosses a
pipe — and runs the same service methods. What the workers change is in the database
the API process reads: a certificate's status (login, OCSP) is read there on every
request, and CRLs are published by the API process's publisher, which is woken after
each job (on PostgreSQL the revoking transaction also notifies every instance). On
SQLite the workers leave WAL checkpoints to the API process's background checkpointer
(``Database.start_checkpointer``, started by serve's lifespan), so no worker commit
copies pages into the database file while it holds the write lock. For the same
reason a worker freezes its start-up heap and runs its full garbage collections
between jobs (:func:`_collect_between_jobs`), never inside one.

Errors keep their type: an :class:`~mstcrypt.errors.MstCryptError` raised in a worker is
raised again in the API process as the same class with the same message (messages carry
no secrets by design), so the HTTP status is the one the in-process call would give.
Any other failure is logged in the worker by its type and reported as
:class:`CaWorkerError` (HTTP 503). A worker that dies is replaced: a request submitted
after it died runs on a new pool; the request it was running fails with
:class:`CaWorkerError` (it may or may not have committed; a retried enrollment then
finds its code used).

:class:`InProcessCa` has the same two methods and runs them in the API process
(``ca_workers`` = 0: an app embedded with ``create_app``, or ``serve`` on one CPU).
``mstcrypt serve`` starts one worker by default on a machine with two or more CPUs.
"""

from __future__ import annotations

import base64
import gc
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from mstcrypt.errors import MstCryptError
from mstcrypt.server.tuning import freeze_startup_heap

if TYPE_CHECKING:
    from mstcrypt.kmc.enrollment import Enrollment
    from mstcrypt.kmc.service import Kmc

__all__ = ["CaWorkerError", "CaWorkers", "InProcessCa", "enrollment_body"]

log = logging.getLogger("mstcrypt.server.caworkers")


class CaWorkerError(MstCryptError):
    """A worker process failed or stopped while running a request; the request may or
    may not have been completed."""


def enrollment_body(e: Enrollment) -> dict[str, Any]:
    """The JSON answer of ``POST /enroll``."""
    return {
        "owner": e.owner,
        "key_id": e.key_id,
        "sign_certificate": e.sign_certificate.pem.decode(),
        "encryption_certificate": e.encryption_certificate.pem.decode(),
        "enveloped_key": base64.b64encode(e.enveloped_key).decode(),
        "chain": [c.pem.decode() for c in e.chain],
    }


def _enroll(kmc: Kmc, code: str, csr: bytes, source: str) -> dict[str, Any]:
    return enrollment_body(kmc.enroll(code, csr, source=source))


def _revoke(kmc: Kmc, serial: str, reason: str, actor: str) -> list[str]:
    return kmc.revoke_certificate(serial, reason=reason, actor=actor)


class InProcessCa:
    """Enrollments and revocations in this process."""

    def __init__(self, kmc: Kmc) -> None:
        self.kmc = kmc

    def enroll(self, code: str, csr: bytes, *, source: str) -> dict[str, Any]:
        return _enroll(self.kmc, code, csr, source)

    def revoke(self, serial: str, *, reason: str, actor: str) -> list[str]:
        return _revoke(self.kmc, serial, reason, actor)

    def close(self) -> None:
        return None


# -- the worker's side ------------------------------------------------------------------
_OPS: dict[str, Callable[..., Any]] = {"enroll": _enroll, "revoke": _revoke}
_worker_kmc: Kmc | None = None

#: a worker's full garbage collections run between jobs, never inside one (so never
#: inside a write transaction): at most one per this many seconds, once CPython's own
#: rule would have run one (its default of 10 young-generation passes)
FULL_GC_SECONDS = 30.0
_FULL_GC_AFTER = 10
_NEVER = 1 << 30
_last_full_gc = 0.0


def _collect_between_jobs(now: float | None = None) -> bool:
    """In a worker, after a job: the full collection CPython would have run inside a
    job, if one is due (see :data:`FULL_GC_SECONDS`). Returns whether it ran.

    The worker's memo of parsed certificates (up to 2,048 with their ASN.1 trees, a
    hundred thousand objects) is walked by every full pass: 65–75 ms on this machine
    at 100k terminals, which would hold the write lock that long when it lands
    inside a transaction. Young collections stay automatic (they walk only what the
    last few thousand allocations left); cyclic garbage that reached the old
    generation waits at most that long."""
    global _last_full_gc
    now = time.monotonic() if now is None else now
    if gc.get_count()[2] < _FULL_GC_AFTER or now - _last_full_gc < FULL_GC_SECONDS:
        return False
    gc.collect()
    _last_full_gc = now
    return True


def _start_worker(factory: Callable[[], Kmc]) -> None:
    global _worker_kmc
    # Ctrl-C reaches the whole process group: the API process stops its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # and if it is killed outright, the worker goes too (an open transaction is rolled
    # back by the database when the connection drops)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with, args=(parent.sentinel,), name="ca-worker-parent", daemon=True
        ).start()
    kmc = factory()
    # the API process checkpoints the WAL in the background (serve's lifespan); a
    # worker's commit must not do it inline, holding SQLite's write lock meanwhile
    kmc.db.leave_checkpoints_to_another_process()
    # as serve does in the API process: a full collection over the start-up heap takes
    # 30-55 ms here and would otherwise land inside a transaction now and then
    freeze_startup_heap()
    # and full collections over what the jobs leave alive run between jobs only
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)
    _worker_kmc = kmc


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _ping() -> bool:
    return _worker_kmc is not None


def _run(op: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """In a worker: ("ok", result), ("error", module, class, message, attributes) for a
    typed error, or ("failed", type name) for anything else."""
    assert _worker_kmc is not None, "the worker was not started"
    try:
        return _run_op(_worker_kmc, op, args)
    finally:
        _collect_between_jobs()


def _run_op(kmc: Kmc, op: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    try:
        return ("ok", _OPS[op](kmc, *args))
    except MstCryptError as exc:
        cls = type(exc)
        attrs = {k: v for k, v in vars(exc).items() if isinstance(v, int | str | bool | None)}
        return ("error", cls.__module__, cls.__qualname__, str(exc), attrs)
    except Exception as exc:
        log.error("CA worker: %s failed: %s", op, type(exc).__name__)
        return ("failed", type(exc).__name__)


def _typed_error(module: str, qualname: str, message: str, attrs: dict[str, Any]) -> Exception:
    """The error a worker raised, as the same class here (only mstcrypt's own)."""
    cls: Any = None
    if module == "mstcrypt" or module.startswith("mstcrypt."):
        try:
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, MstCryptError)):
        return CaWorkerError(f"a CA worker refused the request: {message}")
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    for k, v in attrs.items():
        setattr(exc, k, v)
    return exc


# -- the API process's side ---------------------------------------------------------------
class CaWorkers:
    """``workers`` processes, each with the :class:`Kmc` that ``factory()`` opens (a
    picklable callable: ``Settings.kmc`` for ``mstcrypt serve``). ``after_job`` runs in
    this process after each job, whatever its outcome (wake the CRL publisher: a
    revocation, or an enrollment that superseded certificates, asks for a CRL)."""

    def __init__(
        self,
        factory: Callable[[], Kmc],
        workers: int,
        *,
        after_job: Callable[[], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("CaWorkers needs at least one worker (0: use InProcessCa)")
        self.factory = factory
        self.workers = workers
        self.after_job = after_job
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.factory,),
        )

    def start(self) -> CaWorkers:
        """Start every worker now and wait until each has opened its Kmc (a failure to
        open it — a locked SS-CC, an unreachable database — is raised here, at start-up,
        not at the first enrollment)."""
        pool = self._get()
        try:
            pending = [pool.submit(_ping) for _ in range(self.workers)]
            for f in pending:
                f.result()
        except BrokenProcessPool:
            self.close()
            raise CaWorkerError(
                "the CA workers could not open the platform (see their log)"
            ) from None
        return self

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise CaWorkerError("the CA workers are stopped")
            if self._pool is None:
                self._pool = self._new_pool()
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Drop a pool whose worker died (once, whoever notices first)."""
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)
        log.error("a CA worker stopped; the pool is replaced")

    def _call(self, op: str, *args: Any) -> Any:
        pool = self._get()
        try:
            try:
                future = pool.submit(_run, op, args)
            except BrokenProcessPool:  # it broke before this request: nothing ran yet
                self._replace(pool)
                pool = self._get()
                future = pool.submit(_run, op, args)
            try:
                out = future.result()
            except BrokenProcessPool:
                self._replace(pool)
                raise CaWorkerError(
                    "a CA worker stopped while handling the request; it may or may not "
                    "have been completed"
                ) from None
        finally:
            if self.after_job is not None:
                self.after_job()
        if out[0] == "ok":
            return out[1]
        if out[0] == "error":
            raise _typed_error(*out[1:])
        raise CaWorkerError(f"a CA worker failed ({out[1]})")

    def enroll(self, code: str, csr: bytes, *, source: str) -> dict[str, Any]:
        return self._call("enroll", code, csr, source)  # type: ignore[no-any-return]

    def revoke(self, serial: str, *, reason: str, actor: str) -> list[str]:
        return self._call("revoke", serial, reason, actor)  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

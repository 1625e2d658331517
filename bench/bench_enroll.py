"""Enrollments per second over the platform's TLCP endpoint (or plain HTTP), and
in-process for comparison.

    PYTHONPATH=src python bench/bench_enroll.py [--clients 8] [--count 200] [--tls none]
        [--database-url postgresql+psycopg://user:pw@host/db]

The platform is started in this process (``running_platform``) on a fresh SQLite data
directory, or on a throwaway database created on the PostgreSQL server of
``--database-url`` (the role needs CREATEDB; the database is dropped at the end). By
default it serves TLCP with its own certificates, as ``mstcrypt serve`` does; each client
thread keeps one TLCP connection alive, authenticating the server with the platform's
root. ``--tls none`` measures plain HTTP (the reverse-proxy set-up).

One enrollment = POST /admin/enrollment-codes (a static registration-officer credential,
the server started with static operators enabled) + POST /enroll with a fresh terminal
key's CSR. The CSRs are built before the clock starts: that is
terminal work (1 key generation + 1 signature + build_csr's self-check each), not the
platform's. Latency is reported for the whole enrollment and for POST /enroll alone.

The in-process figure runs the same pair (Kmc.create_enrollment_code + Kmc.enroll) with
the same number of threads and again with one thread, without HTTP.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

warnings.simplefilter("ignore")  # starlette's httpx deprecation notice

from mstcrypt.cli.platform import running_platform  # noqa: E402
from mstcrypt.crypto import sm2  # noqa: E402
from mstcrypt.crypto.sm2 import SM2PrivateKey  # noqa: E402
from mstcrypt.kmc.service import Kmc  # noqa: E402
from mstcrypt.pki import build_csr, name  # noqa: E402
from mstcrypt.protocols.tlcp.http_client import tlcp_transport  # noqa: E402
from mstcrypt.server.config import Settings  # noqa: E402

SUBJECT = {"C": "CN", "O": "Bench Unit", "CN": "terminal"}

# SM2 operations the platform performs for one enrollment, read from the code:
SM2_OPS = [
    ("CSR self-signature verify (CertificationRequest.verify)", 1),
    ("encryption key pair generation (SM2PrivateKey.generate: d*G)", 1),
    ("SM2 encryption of the envelope's SM4 key to the terminal (build_enveloped_key)", 1),
    ("signing certificate: CA signature (build_certificate)", 1),
    ("signing certificate: self-check verify of that signature (pki._common.sign)", 1),
    ("encryption certificate: CA signature", 1),
    ("encryption certificate: self-check verify", 1),
    ("audit record (SM3 hash chain only); checkpoint: none per enrollment", 0),
]
# the private-key operations run in the SS-CC (the soft key store by default);
# not per enrollment: the issuing CA key is unwrapped once and cached by the SS-CC;
# the static operator credential is PBKDF2-checked once and cached; the enrollment code
# is SM3-hashed; the rate limiter is a counter row.


def csrs(n: int) -> list[str]:
    out = []
    for _ in range(n):
        k = SM2PrivateKey.generate()
        out.append(build_csr(name(CN="terminal"), k.public_key(), k.sign).pem.decode())
    return out


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str | None]:
    """None (SQLite in the data directory) or a throwaway PostgreSQL database."""
    if not url or url.startswith("sqlite"):
        yield url
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(url)
    db = f"mst_bench_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    try:
        yield base.set(database=db).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def run_threads(clients: int, count: int, one: Callable[[int], tuple[float, float]]) -> dict:
    """Run ``one(i)`` for i in range(count) on ``clients`` threads; returns the stats."""
    lock = threading.Lock()
    next_i = [0]
    total: list[float] = []
    enroll_only: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= count:
                return
            try:
                t_all, t_enroll = one(i)
            except Exception as exc:  # report, keep going
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                total.append(t_all)
                enroll_only.append(t_enroll)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"wall": wall, "total": total, "enroll": enroll_only, "errors": errors}


def report(title: str, r: dict, clients: int) -> None:
    ok = len(r["total"])
    print(f"\n{title}")
    print(f"  {ok} enrollments with {clients} client thread(s) in {r['wall']:.2f} s")
    print(f"  throughput          {ok / r['wall']:8.1f} enrollments/s")
    if ok:
        ms = [x * 1000 for x in r["total"]]
        ems = [x * 1000 for x in r["enroll"]]
        print(f"  latency code+enroll p50 {pct(ms, 50):7.1f} ms   p95 {pct(ms, 95):7.1f} ms")
        print(f"  latency enroll only p50 {pct(ems, 50):7.1f} ms   p95 {pct(ems, 95):7.1f} ms")
    if r["errors"]:
        print(f"  ERRORS: {len(r['errors'])}, e.g. {r['errors'][0]}")


@contextlib.contextmanager
def counting_sm2() -> Iterator[dict[str, int]]:
    """Count SM2 primitive calls (cross-check of the SM2_OPS reasoning)."""
    counts = {"sign": 0, "verify": 0, "encrypt": 0, "decrypt": 0, "d*G": 0}
    originals: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attr: str, key: str) -> None:
        orig = getattr(owner, attr)
        originals.append((owner, attr, orig))

        def counted(*a: Any, **kw: Any) -> Any:
            counts[key] += 1
            return orig(*a, **kw)

        setattr(owner, attr, counted)

    wrap(sm2.SM2PrivateKey, "sign_digest", "sign")
    wrap(sm2.SM2PublicKey, "verify_digest", "verify")
    wrap(sm2.SM2PublicKey, "encrypt", "encrypt")
    wrap(sm2.SM2PrivateKey, "decrypt", "decrypt")
    wrap(sm2, "mul_base", "d*G")
    try:
        yield counts
    finally:
        for owner, attr, orig in reversed(originals):
            setattr(owner, attr, orig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    ap.add_argument("--count", type=int, default=200, help="enrollments (default 200)")
    ap.add_argument("--database-url", default=None, help="PostgreSQL server (default: SQLite)")
    ap.add_argument(
        "--tls", choices=("tlcp", "none"), default="tlcp", help="endpoint (default tlcp)"
    )
    args = ap.parse_args(argv)
    tls = args.tls == "tlcp"
    clients, count = max(1, args.clients), max(1, args.count)

    with (
        tempfile.TemporaryDirectory(prefix="mstcrypt-bench-") as tmp,
        database(args.database_url) as db_url,
    ):
        data_dir = Path(tmp)
        backend = "PostgreSQL" if db_url else "SQLite (WAL, synchronous=FULL)"
        settings = Settings(
            data_dir=data_dir,
            database_url=db_url,
            enroll_rate=10**9,  # the benchmark is one source address
            checkpoint_seconds=3600,
            static_operators=True,
        )
        print(f"mstcrypt enrollment benchmark — {backend}")
        print(f"preparing {count} terminal CSRs (terminal-side work, not timed) ...")
        requests = csrs(count)
        with running_platform(data_dir, settings, tls=tls) as url:
            admin = settings.kmc()
            op = admin.operators.add_static("bench", ["registration_officer"], actor="bench")
            root = admin.chain()[-1]
            admin.db.dispose()
            local = threading.local()

            def http(i: int) -> tuple[float, float]:
                c = getattr(local, "c", None)
                if c is None:
                    transport = tlcp_transport(anchors=[root.der]) if tls else None
                    c = local.c = httpx.Client(
                        base_url=url,
                        timeout=120,
                        headers={"Authorization": f"Bearer {op}"},
                        transport=transport,
                    )
                t0 = time.perf_counter()
                r = c.post(
                    "/admin/enrollment-codes",
                    json={"owner": f"http-{i}", "subject": {**SUBJECT, "CN": f"http-{i}"}},
                )
                r.raise_for_status()
                t1 = time.perf_counter()
                r = c.post("/enroll", json={"code": r.json()["code"], "csr": requests[i]})
                r.raise_for_status()
                t2 = time.perf_counter()
                return t2 - t0, t2 - t1

            http(0)  # warm-up: CA key unwrap, operator check, connection
            requests[0] = csrs(1)[0]
            report(
                "over TLCP (the platform's endpoint in-process, keep-alive clients)"
                if tls
                else "over plain HTTP (uvicorn in-process, httpx keep-alive clients)",
                run_threads(clients, count, http),
                clients,
            )

        kmc = Kmc(settings.database(), settings.keystore(), crl_base_url="http://bench")
        kmc.create_schema()
        local_csrs = [r.encode() for r in csrs(count)]

        def direct(i: int) -> tuple[float, float]:
            t0 = time.perf_counter()
            code, _ = kmc.create_enrollment_code(
                owner=f"direct-{i}", subject={**SUBJECT, "CN": f"direct-{i}"}, actor="bench"
            )
            t1 = time.perf_counter()
            kmc.enroll(code, local_csrs[i])
            t2 = time.perf_counter()
            return t2 - t0, t2 - t1

        warm = csrs(1)[0].encode()
        code, _ = kmc.create_enrollment_code(owner="warm", subject=SUBJECT, actor="bench")
        kmc.enroll(code, warm)
        report("in-process (Kmc.enroll, no HTTP)", run_threads(clients, count, direct), clients)
        local_csrs = [r.encode() for r in csrs(count)]
        report("in-process, one thread", run_threads(1, count, direct), 1)

        # cross-check the count of SM2 operations with one instrumented enrollment
        code, _ = kmc.create_enrollment_code(owner="counted", subject=SUBJECT, actor="bench")
        csr = csrs(1)[0].encode()
        with counting_sm2() as counted:
            kmc.enroll(code, csr)
        kmc.db.dispose()

    total_ops = sum(n for _, n in SM2_OPS)
    print(f"\nSM2 operations per enrollment on the platform: {total_ops}")
    for what, n in SM2_OPS:
        print(f"  {n}  {what}")
    measured = ", ".join(f"{k} {v}" for k, v in counted.items())
    print(f"  measured on one instrumented Kmc.enroll: {measured} (= {sum(counted.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Audit verification at scale, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_audit.py [--sizes 1000,100000,1000000]
        [--backends sqlite,postgresql] [--pg-url postgresql+psycopg://user:pw@host/db]
        [--no-reference] [--backup]

For each size the log is populated fast (the hash chain computed here with
``audit.record_hash``, rows bulk-inserted with ``executemany`` on SQLite and ``COPY`` on
PostgreSQL, a checkpoint signed by the audit key every 10,000 records as the
housekeeping does by default), then measured:

* full verification (``Kmc.verify_audit()``) in a fresh process: CPU time of that
  process (as ``openssl speed`` counts), wall time, and the growth of its peak RSS
  (``ru_maxrss``) over the process before verifying;
* the reference, measured in the same run: the verification before streaming (ORM walk
  keeping every hash in a dict, inside ``BEGIN IMMEDIATE`` on SQLite);
* incremental verification after one new record, and a checkpoint (verify + sign);
* write latency (one audit append per transaction, as every KMC operation does) while
  each full verification runs in the other process, against the same writes on an idle
  log.

PostgreSQL's own CPU (it serves the rows) is not in the CPU column; wall time shows it.
``--backup`` also streams an encrypted backup of the whole store to a file in a fresh
process (peak RSS growth, CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from mstcrypt.kmc import audit
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import AuditCheckpoint, AuditHead, AuditRecord
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore

CHECKPOINT_EVERY = 10_000
KEY_ENV = "MSTCRYPT_BENCH_MASTER_KEY"
ROWS_PER_INSERT = 20_000


# -- the reference: the verification before streaming (kept here to measure against) ---
def _legacy_record_hash(
    prev: str, seq: int, ts: str, actor: str, action: str, target: str, details: Any
) -> str:
    body = json.dumps(
        {"seq": seq, "ts": ts, "actor": actor, "action": action, "target": target,
         "details": details},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    ).encode("utf-8")  # fmt: skip
    return audit.sm3(bytes.fromhex(prev) + body).hex()


def legacy_verify(session: Session, pub: Any) -> tuple[bool, int]:
    """The former ``verify_chain``: ORM rows, every hash kept for the checkpoint pass."""
    prev, expected, count = audit.GENESIS, 1, 0
    hashes: dict[int, str] = {}
    stmt = select(AuditRecord).order_by(AuditRecord.seq).execution_options(yield_per=1000)
    for rec in session.execute(stmt).scalars():
        if rec.seq != expected or rec.prev_hash != prev:
            return False, count
        h = _legacy_record_hash(
            prev, rec.seq, rec.ts, rec.actor, rec.action, rec.target, dict(rec.details or {})
        )
        if h != rec.hash:
            return False, count
        prev, hashes[rec.seq] = rec.hash, rec.hash
        expected += 1
        count += 1
    head = session.get(AuditHead, 1)
    if head is None or head.seq != expected - 1:
        return False, count
    for cp in session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)).scalars():
        pub.verify(cp.signature, audit.checkpoint_message(cp.seq, cp.hash))
        if hashes.get(cp.seq) != cp.hash:
            return False, count
    return True, count


# -- child process: one measured operation ---------------------------------------------
def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(url: str, what: str) -> None:
    kmc = Kmc(Database(url), SoftKeyStore(bytes.fromhex(os.environ[KEY_ENV])))
    pub = kmc.audit.trusted_public_key()  # warm: imports, engine, SS-CC
    with kmc.db.snapshot() as conn:
        conn.execute(select(AuditHead.seq)).all()
    base = _maxrss_kib()
    print("ready", flush=True)  # the parent's writers start now
    c0, w0 = time.process_time(), time.perf_counter()
    if what == "full":
        r = kmc.verify_audit()
        ok, records = r.ok, r.records
    elif what == "legacy":
        with kmc.db.tx() as s:  # BEGIN IMMEDIATE on SQLite, as ctx.read() did
            ok, records = legacy_verify(s, pub)
    elif what == "backup":
        with open(os.devnull, "wb") as out:
            records = kmc.backup_to(out, "bench passphrase 0123", actor="bench")
        ok = True
    else:
        raise SystemExit(f"unknown child task {what}")
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    print(
        json.dumps(
            {
                "ok": ok,
                "records": records,
                "cpu": cpu,
                "wall": wall,
                "rss_growth_mib": (_maxrss_kib() - base) / 1024,
                "rss_peak_mib": _maxrss_kib() / 1024,
            }
        )
    )
    kmc.db.dispose()


def run_child(url: str, what: str, key: bytes) -> subprocess.Popen[str]:
    """Start one measured operation in a fresh process; returns once it is about to
    begin (after its imports and warm-up)."""
    env = dict(os.environ, **{KEY_ENV: key.hex()})
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", what, "--url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"child failed:\n{proc.communicate()[1][-3000:]}")
    return proc


def collect(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{err[-3000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


# -- population --------------------------------------------------------------------------
def populate(kmc: Kmc, n: int) -> float:
    """Append ``n`` records (bulk, correct chain) with a checkpoint every 10,000 and at
    the end; returns the CPU seconds spent."""
    c0 = time.process_time()
    key = kmc.audit._key()
    with kmc.db.tx() as s:
        seq, prev = s.execute(select(AuditHead.seq, AuditHead.hash)).one()
    seq = int(seq)
    ts = audit.now_iso()
    rows: list[tuple[Any, ...]] = []
    marks: list[tuple[int, str]] = []
    done = 0
    while done < n:
        seq += 1
        done += 1
        details = {"owner": f"user{seq % 100_000}", "serial": f"{seq:032x}", "profile": "DEVICE"}
        h = audit.record_hash(prev, seq, ts, "op-1", "cert.issue", f"cert:{seq:x}", details)
        rows.append((seq, ts, "op-1", "cert.issue", f"cert:{seq:x}", json.dumps(details), prev, h))
        prev = h
        if done % CHECKPOINT_EVERY == 0 or done == n:
            marks.append((seq, h))
        if len(rows) >= ROWS_PER_INSERT or done == n:
            _insert(kmc.db, rows)
            rows = []
    with kmc.db.tx() as s:
        s.execute(AuditHead.__table__.update().values(seq=seq, hash=prev))
        for m_seq, m_hash in marks:
            audit.store_checkpoint(s, m_seq, m_hash, key.sign, now=kmc.clock())
    return time.process_time() - c0


def _insert(db: Database, rows: list[tuple[Any, ...]]) -> None:
    cols = "seq, ts, actor, action, target, details, prev_hash, hash"
    raw = db.engine.raw_connection()
    try:
        drv: Any = raw.driver_connection
        if db.is_sqlite:
            drv.execute("BEGIN IMMEDIATE")
            insert = f"INSERT INTO audit_log ({cols}) VALUES (?,?,?,?,?,?,?,?)"  # noqa: S608
            drv.executemany(insert, rows)
            drv.execute("COMMIT")
        else:
            with drv.cursor() as cur, cur.copy(f"COPY audit_log ({cols}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
            drv.commit()
    finally:
        raw.close()


def append_one(kmc: Kmc, i: int) -> float:
    t = time.perf_counter()
    with kmc.db.tx() as s:
        audit.append(s, actor="op-2", action="bench.write", target=f"w:{i}", details={"i": i})
    return time.perf_counter() - t


def writes_while(kmc: Kmc, proc: subprocess.Popen[str] | None, count: int = 0) -> list[float]:
    """Append one record per transaction every 5 ms while ``proc`` runs (or ``count``
    times); returns the latencies in seconds (a failed write counts as infinity)."""
    lat: list[float] = []
    i = 0
    while (proc is not None and proc.poll() is None) or (proc is None and i < count):
        try:
            lat.append(append_one(kmc, i))
        except Exception:  # a write that failed (lock timeout) is the finding
            lat.append(float("inf"))
        i += 1
        time.sleep(0.005)
    return lat


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt_ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"{pct(values, 0.5) * 1e3:.1f}/{pct(values, 0.99) * 1e3:.1f}/"
        f"{max(values) * 1e3:.0f} ({len(values)})"
    )


# -- one database ------------------------------------------------------------------------
class Store:
    def __init__(self, backend: str, pg_url: str | None) -> None:
        self.backend = backend
        self.drop = lambda: None
        if backend == "sqlite":
            self.tmp = tempfile.TemporaryDirectory()
            self.url = f"sqlite:///{Path(self.tmp.name) / 'audit.db'}"
            return
        if not pg_url:
            raise SystemExit("PostgreSQL needs --pg-url or MSTCRYPT_TEST_DATABASE_URL")
        u = make_url(pg_url)
        name = f"mst_bench_{secrets.token_hex(4)}"
        admin = create_engine(u, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))

        def drop() -> None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

        self.drop = drop
        self.url = u.set(database=name).render_as_string(hide_password=False)


def bench_one(backend: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    store = Store(backend, args.pg_url)
    key = secrets.token_bytes(32)
    kmc = Kmc(Database(store.url), SoftKeyStore(key))
    try:
        kmc.create_schema()
        kmc.init_ca(actor="bench")
        w0 = time.perf_counter()
        pop_cpu = populate(kmc, n)
        pop_wall = time.perf_counter() - w0
        row: dict[str, Any] = {"backend": backend, "n": n, "pop_cpu": pop_cpu, "pop_wall": pop_wall}
        row["idle_writes"] = writes_while(kmc, None, count=50)
        proc = run_child(store.url, "full", key)
        row["full_writes"] = writes_while(kmc, proc)
        row["full"] = collect(proc)
        if not args.no_reference:
            proc = run_child(store.url, "legacy", key)
            row["legacy_writes"] = writes_while(kmc, proc)
            row["legacy"] = collect(proc)
        # one checkpoint over what the writers appended, then one new record
        kmc.checkpoint()
        append_one(kmc, -1)
        c0 = time.process_time()
        r = kmc.verify_audit(incremental=True)
        row["incr_ms"] = (time.process_time() - c0) * 1e3
        row["incr_records"] = r.records
        assert r.ok and r.records == 1, r
        c0 = time.process_time()
        assert kmc.checkpoint() is not None
        row["checkpoint_ms"] = (time.process_time() - c0) * 1e3
        if args.backup:
            row["backup"] = collect(run_child(store.url, "backup", key))
        assert row["full"]["ok"], row["full"]
        return row
    finally:
        kmc.db.dispose()
        store.drop()


def _measure(m: dict[str, Any]) -> str:
    return f"{m['cpu']:.2f} / {m['wall']:.2f} / {m['rss_growth_mib']:.1f} [{m['rss_peak_mib']:.0f}]"


def report(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        "full verification (fresh process): CPU s / wall s / peak RSS growth MiB over the "
        "warmed-up process (its peak RSS in brackets)"
    )
    head = f"{'backend':<11}{'records':>10}  {'populate CPU s':>14}  {'streaming (now)':>30}"
    head += f"  {'reference (before)':>30}  {'CPU ratio':>9}"
    print(head)
    for r in rows:
        f = r["full"]
        now = _measure(f)
        ref, ratio = "-", "-"
        if "legacy" in r:
            g = r["legacy"]
            ref = _measure(g)
            ratio = f"{g['cpu'] / f['cpu']:.2f}x" if f["cpu"] else "-"
        print(
            f"{r['backend']:<11}{r['n']:>10}  {r['pop_cpu']:>14.2f}  {now:>30}  {ref:>30}  "
            f"{ratio:>9}"
        )
    print()
    print("bounded work after one new record (CPU ms)")
    print(f"{'backend':<11}{'records':>10}  {'incremental verify':>18}  {'checkpoint':>10}")
    for r in rows:
        print(f"{r['backend']:<11}{r['n']:>10}  {r['incr_ms']:>18.1f}  {r['checkpoint_ms']:>10.1f}")
    print()
    print("write latency, one audit append per transaction: p50 / p99 / max ms (writes)")
    print(
        f"{'backend':<11}{'records':>10}  {'idle':>22}  {'during streaming':>22}  "
        f"{'during reference':>22}"
    )
    for r in rows:
        print(
            f"{r['backend']:<11}{r['n']:>10}  {fmt_ms(r['idle_writes']):>22}  "
            f"{fmt_ms(r['full_writes']):>22}  {fmt_ms(r.get('legacy_writes', [])):>22}"
        )
    if any("backup" in r for r in rows):
        print()
        print("streamed backup of the whole store (fresh process)")
        print(
            f"{'backend':<11}{'records':>10}  {'bytes':>12}  {'CPU s':>7}  {'RSS growth MiB':>15}"
        )
        for r in rows:
            if "backup" in r:
                b = r["backup"]
                print(
                    f"{r['backend']:<11}{r['n']:>10}  {b['records']:>12}  {b['cpu']:>7.2f}  "
                    f"{b['rss_growth_mib']:>15.1f}"
                )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--pg-url", default=os.environ.get("MSTCRYPT_TEST_DATABASE_URL"))
    ap.add_argument("--no-reference", action="store_true", help="skip the former verification")
    ap.add_argument("--backup", action="store_true", help="also measure a streamed backup")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.url, args.child)
        return 0
    rows = []
    for backend in args.backends.split(","):
        for n in (int(x) for x in args.sizes.split(",")):
            print(f"{backend} {n} records ...", file=sys.stderr, flush=True)
            rows.append(bench_one(backend, n, args))
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

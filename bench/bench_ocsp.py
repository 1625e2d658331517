"""OCSP responses per second (server side, one thread, in process), on CPU time.

    .venv/bin/python bench/bench_ocsp.py [--sizes 1000,100000] [--count 2000]
                                         [--database-url URL]

For each store size the issuing CA's ``certificates`` table is filled to that many rows
(bulk SQL inserts of status rows — the responder reads only the status columns by
primary key, so the rows need no distinct DER; a few real certificates are issued
through the CA as well), 2 % of them revoked. Then ``OcspResponder.respond`` is timed on
DER requests for random serials of the store:

* **pre-signed**: one CertID, no nonce (RFC 5019 / what HTTP caches see): one
  primary-key read, the stored response returned;
* **miss**: the same, the first time (sign + verify the signature + store);
* **nonce**: a fresh nonce each time, signed for the occasion.

The reference is ``openssl speed sm2`` (sign/s and verify/s; a nonce response costs one
SM2 signature plus our own check of it) measured in the same run. Rows show responses/s
on CPU time (``time.process_time``, as ``openssl speed``) and, in brackets, wall time.
Growth from the smallest to the largest store should be flat (O(1) lookups).
"""

from __future__ import annotations

import argparse
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import IssuedCertificate
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import Profile
from mstcrypt.pki.ocsp import CertId, build_request, new_nonce


def openssl_sm2() -> tuple[float, float] | None:
    exe = shutil.which("openssl")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "speed", "-seconds", "2", "sm2"], capture_output=True, text=True, check=False
    ).stdout
    m = re.search(r"SM2 \(CurveSM2\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", out)
    return (float(m.group(1)), float(m.group(2))) if m else None


def populate(kmc: Kmc, n: int) -> list[int]:
    """n certificate rows of the issuing CA (2 % revoked); returns their serials."""
    with kmc.db.tx() as s:
        ca_id = kmc.ca._ca_row(s).id
    now = kmc.clock()
    key = SM2PrivateKey.generate()
    real = []
    with kmc.ctx.unit("bench") as u:
        for i in range(10):
            cert = kmc.ca.issue(
                u,
                public_key=key.public_key(),
                subject={"CN": f"real{i}"},
                profile=Profile.DEVICE_SIGN,
                owner=f"real{i}",
                usage="sign",
                key_id=None,
            )
            real.append(cert.serial)
        u.audit("bench.populate", "bench")
    template = kmc.chain()[0].der
    serials = list(real)
    table = IssuedCertificate.__table__
    batch = []
    for i in range(n - len(real)):
        serial = int.from_bytes(secrets.token_bytes(16), "big") >> 1
        serials.append(serial)
        revoked = i % 50 == 0
        batch.append(
            {
                "serial": f"{serial:x}",
                "ca_id": ca_id,
                "subject": f"CN=u{i}",
                "owner": f"u{i}",
                "profile": "device_sign",
                "usage": "sign",
                "key_id": None,
                "der": template,
                "fingerprint": secrets.token_hex(32),
                "not_before": now - timedelta(days=1),
                "not_after": now + timedelta(days=365),
                "status": "revoked" if revoked else "active",
                "revoked_at": now if revoked else None,
                "revocation_reason": "key_compromise" if revoked else None,
                "issued_at": now,
                "pair_serial": None,
            }
        )
        if len(batch) == 5000:
            with kmc.db.tx() as s:
                s.execute(table.insert(), batch)
            batch = []
    if batch:
        with kmc.db.tx() as s:
            s.execute(table.insert(), batch)
    return serials


def timed(fn: Callable[[bytes], object], requests: list[bytes]) -> tuple[float, float]:
    """(responses/s on CPU time, responses/s on wall time)."""
    c0, w0 = time.process_time(), time.perf_counter()
    for req in requests:
        fn(req)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return len(requests) / max(cpu, 1e-9), len(requests) / max(wall, 1e-9)


def run(size: int, count: int, url: str | None) -> dict[str, tuple[float, float]]:
    url = url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    kmc = Kmc(Database(url), SoftKeyStore(secrets.token_bytes(32)), crl_base_url="http://b")
    kmc.create_schema()
    kmc.init_ca(actor="bench")
    serials = populate(kmc, size)
    issuing = kmc.chain()[0]
    rng = random.Random(size)
    picked = rng.sample(serials, min(count, len(serials)))
    plain = [build_request([CertId.for_certificate(s, issuing)]) for s in picked]
    out = {}
    answers = [kmc.ocsp.respond(r) for r in plain[:3]]
    assert all(a.status == "successful" for a in answers), answers
    out["miss (sign + store)"] = timed(kmc.ocsp.respond, plain[3:])
    out["pre-signed"] = timed(kmc.ocsp.respond, plain)
    assert kmc.ocsp.respond(plain[-1]).cached
    nonce_reqs = [
        build_request([CertId.for_certificate(s, issuing)], nonce=new_nonce())
        for s in picked[: max(count // 4, 50)]
    ]
    out["nonce"] = timed(kmc.ocsp.respond, nonce_reqs)
    kmc.ocsp.dispose()
    kmc.db.dispose()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--database-url", help="an empty database (default: a SQLite file)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    ref = openssl_sm2()
    results = {n: run(n, args.count, args.database_url) for n in sizes}
    print(f"OCSP responses/s, CPU time [wall], {args.count} requests per row")
    header = "".join(f"{n:>22,}" for n in sizes)
    print(f"{'certificates':<22}{header}   growth")
    for row in ("pre-signed", "miss (sign + store)", "nonce"):
        cells = "".join(
            f"{results[n][row][0]:>12,.0f} [{results[n][row][1]:>6,.0f}]" for n in sizes
        )
        growth = results[sizes[-1]][row][0] / results[sizes[0]][row][0]
        print(f"{row:<22}{cells}   {growth:.2f}x")
    if ref is not None:
        sign, verify = ref
        both = 1 / (1 / sign + 1 / verify)
        nonce = results[sizes[-1]]["nonce"][0]
        print(
            f"reference openssl speed sm2: {sign:,.0f} sign/s, {verify:,.0f} verify/s "
            f"(sign + verify {both:,.0f}/s); nonce responses / (sign + verify) = "
            f"{nonce / both:.2f}"
        )
    else:
        print("reference: openssl not found")
    return 0


if __name__ == "__main__":
    sys.exit(main())

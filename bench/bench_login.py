"""Certificate logins per second on one core (server side), in process.

    .venv/bin/python bench/bench_login.py [--count 1000] [--database-url URL]

The terminal's half (checking Cert-S and Token-S, signing Token-M) runs on terminals, so
it is prepared outside the timed region; the timed part is what the login server does:
issue the challenge (1 SM2 signature + 1 transaction) and verify the response (Token-M
verification, the user's certificate path — memoised for 60 s per certificate and CRL
pair — the single-use challenge update, the audit record, and the session token
signature). Target (issue 5): >= 500 logins/s on one core.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime

from mstcrypt.apps.login.service import LoginService
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, build_csr, name
from mstcrypt.protocols.login import LoginClient

SERVER_SM2_OPS = (
    "3 SM2 operations per login (sign Token-S, verify Token-M, sign the session "
    "token) + 4 verifications per new certificate/CRL pair (memoised 60 s)"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    kmc = Kmc(Database(url), SoftKeyStore(secrets.token_bytes(32)), crl_base_url="http://b")
    kmc.create_schema()
    kmc.init_ca(actor="bench")
    svc = LoginService(kmc, server_name="login.bench")
    chain = kmc.chain()
    users = []
    for i in range(args.users):
        key = SM2PrivateKey.generate()
        code, _ = kmc.create_enrollment_code(owner=f"u{i}", subject={"CN": f"u{i}"}, actor="b")
        e = kmc.enroll(code, build_csr(name(CN=f"u{i}"), key.public_key(), key.sign).der)
        users.append(
            LoginClient(
                expected_server_name="login.bench",
                certificate=e.sign_certificate,
                signer=key.sign,
                chain=chain[:-1],
                anchors=chain[-1:],
            )
        )
    crls = [CRL.from_der(kmc.crl()), CRL.from_der(kmc.crl("root"))]
    # warm up (path memo, statement caches)
    for u in users:
        ch = svc.challenge(source="warm")
        svc.respond(u.respond(ch, now=datetime.now(UTC), crls=crls).to_json(), source="warm")
    t0 = time.process_time()
    w0 = time.perf_counter()
    challenges = [svc.challenge(source=f"10.0.{i % 250}.{i % 7}") for i in range(args.count)]
    t_ch, w_ch = time.process_time() - t0, time.perf_counter() - w0
    now = datetime.now(UTC)
    responses = [
        users[i % len(users)].respond(c, now=now, crls=crls).to_json()
        for i, c in enumerate(challenges)
    ]
    t0 = time.process_time()
    w0 = time.perf_counter()
    for i, r in enumerate(responses):
        svc.respond(r, source=f"10.0.{i % 250}.{i % 7}")
    t_resp, w_resp = time.process_time() - t0, time.perf_counter() - w0
    cpu = t_ch + t_resp
    wall = w_ch + w_resp
    print(f"database: {url.split(':')[0]}")
    print(
        f"server logins/s on one core (CPU time): {args.count / cpu:,.0f}   "
        f"(wall clock: {args.count / wall:,.0f})   target >= 500 "
        f"{'ok' if args.count / cpu >= 500 else 'BELOW'}"
    )
    print(
        f"  challenge: {t_ch / args.count * 1e3:.2f} ms CPU, response: "
        f"{t_resp / args.count * 1e3:.2f} ms CPU"
    )
    print(f"  {SERVER_SM2_OPS}")
    kmc.db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

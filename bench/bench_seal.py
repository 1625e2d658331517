"""Two-party SM2 seal signatures: the raw protocol against one ordinary SM2 signature,
and stampings end to end over HTTP on loopback.

    .venv/bin/python bench/bench_seal.py [--count 200] [--http-count 100] [--tls]

1. **Raw protocol** (in process, no I/O): client start + server respond + client finish
   (which verifies the result) + server confirm, per signature, on CPU time; the
   reference is ``SM2PrivateKey.sign`` of the same message in the same run, so the ratio
   says what the two-party protocol costs over a plain signature.
2. **End to end**: a platform server (uvicorn, plain HTTP on 127.0.0.1 unless ``--tls``)
   in a child process; the terminal stamps GB/T 38540 TBS_Sign messages with its share
   in a soft token through ``SealTerminal`` (SG1, SG2, SG3 over HTTP, the server's policy
   checks, the stamping log and the audit record per signature). Reported as signatures
   per wall-clock second and the client's CPU seconds per signature.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _cpu() -> float:
    return time.process_time()


def raw(count: int) -> tuple[float, float]:
    from mstcrypt.crypto import twoparty as tp
    from mstcrypt.crypto.sm2 import SM2PrivateKey

    c, s = tp.ClientKeyGen(), tp.ServerKeyGen()
    kg4, ss = s.receive_opening(c.receive_server_share(s.receive_commitment(c.start())))
    cs = c.finish(kg4)
    message = secrets.token_bytes(1024)
    key = SM2PrivateKey.generate()
    key.sign(message)
    t0 = _cpu()
    for _ in range(count):
        key.sign(message)
    plain = (_cpu() - t0) / count
    t0 = _cpu()
    for _ in range(count):
        signer = tp.ClientSigner(cs, message)
        server = tp.ServerSigner(ss)
        signer.finish(server.respond(signer.start()))
        server.confirm(signer.confirmation())
    two = (_cpu() - t0) / count
    return plain, two


def end_to_end(count: int, tls: bool) -> tuple[float, float]:
    import base64

    from mstcrypt.apps.seal.terminal import SealTerminal
    from mstcrypt.client import Client
    from mstcrypt.crypto.sm3 import sm3
    from mstcrypt.formats import ses
    from mstcrypt.module import SoftToken
    from mstcrypt.server.config import Settings
    from platform_helpers import free_port

    data = Path(tempfile.mkdtemp()) / "data"
    port = free_port()
    env = {
        **os.environ,
        "MSTCRYPT_DATA_DIR": str(data),
        "MSTCRYPT_STATIC_OPERATORS": "1",
        "PYTHONPATH": str(ROOT / "src"),
    }
    kmc = Settings.from_env(data, static_operators=True).kmc()
    kmc.create_schema()
    kmc.ensure_initialised(actor="bench")
    ra = kmc.operators.add_static("bench-ra", ["registration_officer", "administrator"])
    root = kmc.chain()[-1]
    kmc.db.dispose()
    args = [sys.executable, "-m", "mstcrypt", "serve", "--port", str(port)]
    if not tls:
        args += ["--tls", "none"]
    server = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(url, anchors=[root]) as c:
                    c.health()
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.3)
        tok = SoftToken.init(Path(tempfile.mkdtemp()) / "t.tok", "123456", "admin-code-1")
        with Client(url, anchors=[root], operator_token=ra) as c:
            c.enroll(c.create_enrollment_code("bench", {"CN": "bench"})["code"], tok)
            session = c.login(tok)["session_token"]
            t = SealTerminal(c._http, session, tok)
            t.create_key("seal")
            t.certify("seal", "bench")
            now = datetime.now(UTC)
            png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(64)).decode()
            body = {
                "name": "bench seal",
                "picture": png,
                "picture_type": "png",
                "width": 40,
                "height": 40,
                "valid_start": (now - timedelta(minutes=5)).isoformat(),
                "valid_end": (now + timedelta(days=1)).isoformat(),
                "stampers": ["bench"],
            }
            es_id = c._request("POST", "/admin/seal/seals", json=body).json()["es_id"]
            seal = t.seal(es_id)
            key_id = t.key_id("seal")
            tbs = [
                ses.build_tbs(seal, sm3(i.to_bytes(4, "big")), "bench.pdf") for i in range(count)
            ]
            t.sign("seal", tbs[0], key_id=key_id)  # warm up
            w0, c0 = time.perf_counter(), _cpu()
            for m in tbs:
                t.sign("seal", m, key_id=key_id)
            wall, cpu = time.perf_counter() - w0, _cpu() - c0
        return count / wall, cpu / count
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--http-count", type=int, default=100)
    ap.add_argument("--tls", action="store_true", help="over TLCP instead of plain HTTP")
    a = ap.parse_args()
    plain, two = raw(a.count)
    print(f"ordinary SM2 signature (1 KiB message): {plain * 1e6:8.1f} us CPU ({1 / plain:,.0f}/s)")
    print(
        f"two-party signature, both sides, no I/O: {two * 1e6:8.1f} us CPU ({1 / two:,.0f}/s)"
        f" = {two / plain:.1f}x one ordinary signature"
    )
    rate, cpu = end_to_end(a.http_count, a.tls)
    print(
        f"end to end over {'TLCP' if a.tls else 'HTTP'} on loopback (seal server policy, "
        f"stamping log, audit): {rate:,.1f} signatures/s wall, client {cpu * 1e3:.1f} ms CPU each"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SM2 signatures per second through the SS-CC key store, next to a bare SM2PrivateKey.

    .venv/bin/python bench/bench_sscc.py [--count 2000]

Measured in one run, CPU time of this process (SoftHSM2 runs inside it; the wall clock
is printed too, which is what counts with a network HSM):

* reference: ``SM2PrivateKey.sign`` on a key in memory;
* soft backend, cached (the key is unwrapped once, then reused) and uncached
  (``cache_size=0``: every signature unwraps the SM4-GCM blob first);
* pkcs11 backend on a throw-away SoftHSM2 token (or the token named by
  ``MSTCRYPT_PKCS11_MODULE`` / ``MSTCRYPT_PKCS11_TOKEN`` / ``MSTCRYPT_PKCS11_PIN``), cached
  and uncached (every signature asks the token to open the blob with AES-GCM).

Ratios are against the reference; the cached paths should stay close to 1.0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.module.sscc import Pkcs11KeyStore, ServerKeyStore, SoftKeyStore, find_softhsm2_module

MSG = b"login challenge " * 4


def _rate(fn: Callable[[], object], count: int) -> tuple[float, float]:
    fn()  # warm up (contexts, Z value, cache)
    t0, w0 = time.process_time(), time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.process_time() - t0), count / (time.perf_counter() - w0)


def _pkcs11_token() -> tuple[str, str, str, Path | None] | None:
    """(module, token label, PIN, temporary directory to remove) or None."""
    env = os.environ
    if env.get("MSTCRYPT_PKCS11_MODULE"):
        return (
            env["MSTCRYPT_PKCS11_MODULE"],
            env["MSTCRYPT_PKCS11_TOKEN"],
            env["MSTCRYPT_PKCS11_PIN"],
            None,
        )
    module, util = find_softhsm2_module(), shutil.which("softhsm2-util")
    if module is None or util is None:
        return None
    root = Path(tempfile.mkdtemp(prefix="bench-softhsm-"))
    (root / "tokens").mkdir()
    (root / "softhsm2.conf").write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env["SOFTHSM2_CONF"] = str(root / "softhsm2.conf")
    subprocess.run(
        [util, "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "123456"],
        check=True,
        capture_output=True,
    )
    return module, "bench", "1234", root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=2000)
    args = ap.parse_args()
    n = args.count

    key = SM2PrivateKey.generate()
    ref_cpu, ref_wall = _rate(lambda: key.sign(MSG), n)
    rows: list[tuple[str, float, float]] = [("SM2PrivateKey.sign (reference)", ref_cpu, ref_wall)]

    master = os.urandom(32)
    stores: list[tuple[str, ServerKeyStore]] = [
        ("soft, cached", SoftKeyStore(master)),
        ("soft, uncached", SoftKeyStore(master, cache_size=0)),
    ]
    token = _pkcs11_token()
    if token is None:
        print("pkcs11: skipped (SoftHSM2 not installed, no MSTCRYPT_PKCS11_MODULE)")
    else:
        module, label, pin, _ = token
        print(f"pkcs11: {module}, token {label!r}")
        stores += [
            ("pkcs11, cached", Pkcs11KeyStore(module, label, pin)),
            ("pkcs11, uncached", Pkcs11KeyStore(module, label, pin, cache_size=0)),
        ]
    for name, store in stores:
        blob = store.import_sm2(key, b"bench:login")
        cpu, wall = _rate(lambda s=store, b=blob: s.sign(b, b"bench:login", MSG), n)
        rows.append((name, cpu, wall))
    for _, store in stores:
        store.close()
    if token is not None and token[3] is not None:
        shutil.rmtree(token[3], ignore_errors=True)

    print(f"SM2 sign, {n} signatures each, one core (CPU time of this process)")
    print(f"{'path':34} {'sign/s CPU':>11} {'ratio':>6} {'sign/s wall':>12}")
    for label, cpu, wall in rows:
        print(f"{label:34} {cpu:11,.0f} {cpu / ref_cpu:6.2f} {wall:12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

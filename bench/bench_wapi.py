"""WAPI: associations per second and WPI frames per second (1,500-byte frames), next to
SM4 raw throughput from ``openssl speed`` measured in the same run.

    .venv/bin/python bench/bench_wapi.py [--associations 50] [--frames 20000] [--seconds 3]

* associations/s: the whole WAI flow in process (ASUE + AE + ASU: activation, access
  authentication, certificate verdicts against the CA and CRL, unicast and multicast key
  negotiation), for the SM suite (platform certificates) and the standard suite
  (ECDSA-192), per CPU second of this process (all three roles together);
* WPI: protect (SM4-CBC-MAC + SM4-OFB) and unprotect (+ PN check) of 1,500-byte data
  frames, frames/s and MB/s per CPU second; the reference is ``openssl speed -evp
  sm4-ofb`` and ``sm4-cbc`` on 1,500-byte buffers (WPI makes two SM4 passes per byte, so
  half the OFB figure is the ceiling).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

# the test kit builds the CA, ASU, AP and terminal credentials
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "wapi"))

import wapi_env as env

from mstcrypt.protocols.wai import wpi
from mstcrypt.protocols.wai.roles import State

FRAME = 1500


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def openssl_speed(cipher: str, seconds: float, nbytes: int) -> float | None:
    """MB/s (10^6 bytes) of ``openssl speed -evp cipher`` on ``nbytes`` buffers."""
    try:
        out = subprocess.run(
            [
                "openssl",
                "speed",
                "-mr",
                "-seconds",
                str(max(1, round(seconds))),
                "-bytes",
                str(nbytes),
                "-evp",
                cipher,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^\+F:\d+:[^:]+:([\d.]+)", out, re.M)
    return float(m.group(1)) / 1e6 if m else None


def associations(kind: str, n: int) -> float:
    if kind == "sm":
        plat = env.SmPlatform()
        make = lambda: env.pump(plat)[0]  # noqa: E731
    else:
        std = env.StdPlatform()
        make = lambda: env.std_pump(std)  # noqa: E731
    make().run()  # warm up (group tables, contexts)
    t0 = _cpu()
    for _ in range(n):
        p = make()
        p.run()
        assert p.asue.state is State.ESTABLISHED
    return n / (_cpu() - t0)


def wpi_rates(n: int) -> tuple[float, float]:
    ek, ck = os.urandom(16), os.urandom(16)
    hdr = wpi.Dot11Header(b"\x08\x41", env.AE_MAC, env.STA_MAC, env.AE_MAC)
    tx = wpi.WpiSender(ek, ck, 0, unicast=True, from_ae=False)
    rx = wpi.WpiReceiver(ek, ck, 0, unicast=True, from_ae=False)
    data = os.urandom(FRAME)
    t0 = _cpu()
    bodies = [tx.protect_body(hdr, data) for _ in range(n)]
    t1 = _cpu()
    for b in bodies:
        rx.unprotect_body(hdr, b)
    t2 = _cpu()
    return n / (t1 - t0), n / (t2 - t1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--associations", type=int, default=50)
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    print("measuring openssl speed -evp sm4-ofb / sm4-cbc on 1500-byte buffers…", file=sys.stderr)
    ofb = openssl_speed("sm4-ofb", args.seconds, FRAME)
    cbc = openssl_speed("sm4-cbc", args.seconds, FRAME)
    sm = associations("sm", args.associations)
    std = associations("standard", args.associations)
    enc, dec = wpi_rates(args.frames)
    mb = FRAME / 1e6
    print(
        "associations/s (ASUE+AE+ASU in one process, per CPU second): "
        f"SM suite {sm:.1f}, standard suite {std:.1f}"
    )
    print(f"WPI protect   {enc:10.0f} frames/s  {enc * mb:7.1f} MB/s")
    print(f"WPI unprotect {dec:10.0f} frames/s  {dec * mb:7.1f} MB/s")
    if ofb and cbc:
        print(f"openssl speed sm4-ofb {ofb:7.1f} MB/s, sm4-cbc {cbc:7.1f} MB/s (1500-byte buffers)")
        ceiling = 1 / (1 / ofb + 1 / cbc)
        print(
            f"WPI ceiling (one OFB + one CBC pass): {ceiling:.1f} MB/s; "
            f"protect at {enc * mb / ceiling:.0%}, unprotect at {dec * mb / ceiling:.0%} of it"
        )
    else:
        print("openssl speed unavailable: no reference figure")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

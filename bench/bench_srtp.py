"""SRTP protect+unprotect throughput per profile at voice-sized packets, beside libsrtp's
AES_CM_128_HMAC_SHA1_80 measured in the same run (through pylibsrtp), on process CPU
time (as `openssl speed` measures), as ratios.

    .venv/bin/python bench/bench_srtp.py [--seconds 1] [--payload 160] [--json out.json]

One "op" is a round trip: protect an RTP packet (12-byte header + payload) and unprotect
it on a second context. The last column is the CPU share of one core that one call costs
(50 packets/s per direction, both directions protected and unprotected on each terminal:
2 × 50 round trips/s). Target (issue 15): a call costs at most 5% of a core on every
profile; the ZUC figure says whether its path needs more native code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from mstcrypt.crypto import zuc
from mstcrypt.protocols import srtp

CALL_OPS_PER_SECOND = 2 * 50  # both directions, 50 packets/s (20 ms G.711/Opus frames)
TARGET_CALL_SHARE = 0.05


def _packets(n: int, payload: int, ssrc: int = 0x0BADCAFE) -> list[bytes]:
    body = os.urandom(payload)
    return [
        bytes([0x80, 0]) + (i & 0xFFFF).to_bytes(2, "big") + (i * 160).to_bytes(4, "big")
        + ssrc.to_bytes(4, "big") + body
        for i in range(n)
    ]  # fmt: skip


def _measure(protect, unprotect, packets: list[bytes], seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Round trips per CPU second."""
    done = 0
    t0 = time.process_time()
    deadline = t0 + seconds
    i = 0
    while True:
        for _ in range(200):
            unprotect(protect(packets[i]))
            i += 1
        done += 200
        now = time.process_time()
        if now >= deadline or i + 200 > len(packets):
            return done / (now - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--payload", type=int, default=160)
    ap.add_argument("--json", help="also write the figures as JSON")
    args = ap.parse_args()
    n = 65000  # unique sequence numbers: neither side ever sees a repeat
    packets = _packets(n, args.payload)

    rows: list[dict[str, object]] = []
    reference = None
    try:
        import pylibsrtp

        key = os.urandom(30)
        tx = pylibsrtp.Session(pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))  # fmt: skip
        rx = pylibsrtp.Session(pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))  # fmt: skip
        print("  measuring libsrtp AES_CM_128_HMAC_SHA1_80…", file=sys.stderr)
        reference = _measure(tx.protect, rx.unprotect, packets, args.seconds)
    except ImportError:
        print("pylibsrtp not installed: no reference column", file=sys.stderr)

    for p in srtp.PROFILES.values():
        mk, ms = os.urandom(p.key_len), os.urandom(p.salt_len)
        tx_c, rx_c = srtp.SrtpContext(p, mk, ms), srtp.SrtpContext(p, mk, ms)
        print(f"  measuring {p.name}…", file=sys.stderr)
        ops = _measure(tx_c.protect, rx_c.unprotect, packets, args.seconds)
        share = CALL_OPS_PER_SECOND / ops
        rows.append({
            "profile": p.name, "ops_per_cpu_s": ops,
            "ratio_to_libsrtp_aes": (ops / reference) if reference else None,
            "call_core_share": share, "target_ok": share <= TARGET_CALL_SHARE,
        })  # fmt: skip

    print(f"payload {args.payload} bytes; CPU time; ZUC backend: {zuc.backend_info()}")
    if reference:
        print(f"reference: libsrtp AES_CM_128_HMAC_SHA1_80 {reference:,.0f} round trips/CPU s")
    print(f"{'profile':30} {'round trips/s':>14} {'vs libsrtp':>10} {'1 call':>8}  target")
    below = 0
    for r in rows:
        ratio = f"{r['ratio_to_libsrtp_aes']:.2f}x" if r["ratio_to_libsrtp_aes"] else "-"
        ok = bool(r["target_ok"])
        below += not ok
        print(
            f"{r['profile']:30} {r['ops_per_cpu_s']:>14,.0f} {ratio:>10} "
            f"{r['call_core_share']:>7.2%}  <= {TARGET_CALL_SHARE:.0%} {'ok' if ok else 'ABOVE'}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"payload": args.payload, "reference": reference, "rows": rows}, f, indent=1)
    return 1 if below else 0


if __name__ == "__main__":
    raise SystemExit(main())

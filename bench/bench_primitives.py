"""Primitive throughput next to `openssl speed` from the same run, as ratios.

    .venv/bin/python bench/bench_primitives.py [--seconds 2] [--json out.json]

Targets (issue 2): SM2 sign and verify >= 0.8x `openssl speed sm2`; SM4-CTR and SM4-GCM
>= 0.8x `openssl speed -evp sm4-ctr`.
"""

from __future__ import annotations

import argparse
import json
import sys

from mstcrypt.perf import measure

TARGETS = {"SM2 sign": 0.8, "SM2 verify": 0.8, "SM4-CTR": 0.8, "SM4-GCM": 0.8}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", help="also write the figures as JSON")
    args = ap.parse_args()
    rows = measure(args.seconds, lambda name: print(f"  measuring {name}…", file=sys.stderr))
    print(f"{'algorithm':28} {'mstcrypt':>16} {'reference':>16} {'ratio':>7}  target")
    for r in rows:
        ref = f"{r.reference:,.1f}" if r.reference else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        target = TARGETS.get(r.name)
        verdict = (
            ""
            if target is None or r.ratio is None
            else (f">= {target}x {'ok' if r.ratio >= target else 'BELOW'}")
        )
        print(
            f"{r.name:28} {r.ours:>12,.1f} {r.unit:>5} {ref:>12} {r.unit if r.reference else '':>5}"
            f" {ratio:>7}  {verdict}  {r.reference_name}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ | {"ratio": r.ratio} for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

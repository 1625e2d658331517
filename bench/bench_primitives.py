"""Primitive throughput next to `openssl speed` (Tongsuo's for SM4-GCM and ZUC) from the same
run, on CPU time as `openssl speed` measures, as ratios.

    .venv/bin/python bench/bench_primitives.py [--seconds 2] [--sizes 16,1024,16384]
                                               [--json out.json]

Targets: SM2 sign and verify >= 0.8x `openssl speed sm2` (issue 2); SM4-CTR and SM4-GCM
>= 0.8x their reference on 16 KiB messages (issue 2); ZUC-128 EEA3 >= 1.0x Tongsuo's
`speed -evp ZUC-128-EEA3` on 16 KiB messages (issue 11, native backend). Small-message
rows have no target: they show the per-call overhead of the Python API.
bench/check_speed.py checks these ratios against an independent measurement.
"""

from __future__ import annotations

import argparse
import json
import sys

from mstcrypt.perf import SIZES, measure_report

# (row name, message size or None) -> minimum ratio
TARGETS = {
    ("SM2 sign", None): 0.8,
    ("SM2 verify", None): 0.8,
    ("SM4-CTR", 16384): 0.8,
    ("SM4-GCM", 16384): 0.8,
    ("ZUC-128 EEA3", 16384): 1.0,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--json", help="also write the figures as JSON")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    report = measure_report(
        args.seconds, lambda name: print(f"  measuring {name}…", file=sys.stderr), sizes=sizes
    )
    print(f"basis: {report.basis}")
    print(f"ZUC backend: {report.zuc_backend}")
    if report.cpu_share is not None:
        print(f"CPU share while measuring: {report.cpu_share:.0%} of wall time")
    print(f"{'algorithm':20} {'size':>6} {'mstcrypt':>16} {'reference':>12} {'ratio':>7}  target")
    below = 0
    for r in report.rows:
        ref = f"{r.reference:,.1f}" if r.reference else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        target = TARGETS.get((r.name, r.size))
        verdict = ""
        if target is not None and r.ratio is not None:
            ok = r.ratio >= target
            below += not ok
            verdict = f">= {target}x {'ok' if ok else 'BELOW'}"
        print(
            f"{r.name:20} {r.size or '':>6} {r.ours:>10,.1f} {r.unit:>5} {ref:>12} {ratio:>7}"
            f"  {verdict:16} {r.reference_name}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.as_dict(), f, indent=2)
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())

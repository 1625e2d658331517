"""App signing throughput on a large package, next to apksigner on the same file in the
same run (CPU time, as `openssl speed`; wall time beside it).

    PYTHONPATH=src python bench/bench_appsign.py [--size-mb 50] [--dir /tmp] [--json out.json]

A package of --size-mb MB (a binary manifest and a stored, incompressible asset) is built,
then timed:

* apksigner sign (v2+v3) and apksigner verify of that package (child-process CPU time:
  the JVM's threads included, start-up included as a user pays it);
* our developer signature (`sign_developer`: chunked SM3 digest, SM2 signature, copy),
  the channel's countersignature (`countersign`: review = digest + verification +
  certificate path, then signature and copy) and the terminal's verification
  (`verify_package`: digest, both signatures, both certificate paths, policy), in this
  process.

Target: our verification at least as fast as apksigner's verification of the same file.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "appsign"))  # the test kit builds real APKs

import appsign_kit  # noqa: E402

from mstcrypt.apps import appsign  # noqa: E402


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed_child(cmd: list[str]) -> tuple[float, float]:
    c0, w0 = _child_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return _child_cpu() - c0, time.perf_counter() - w0


def _timed(fn: Any) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--json")
    args = ap.parse_args()
    tool = appsign_kit.apksigner_path()
    if tool is None:
        print("apksigner not installed (Debian package apksigner): no reference", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        unsigned = appsign_kit.build_apk(
            d / "big-unsigned.apk", "cn.bench.app", 1, payload=args.size_mb * 1_000_000
        )
        key, cert = appsign_kit.stock_key(d)
        signed = d / "big.apk"
        size = unsigned.stat().st_size
        rows: dict[str, tuple[float, float]] = {}
        rows["apksigner sign"] = _timed_child(
            [
                tool,
                "sign",
                "--key",
                str(key),
                "--cert",
                str(cert),
                "--v4-signing-enabled",
                "false",
                "--out",
                str(signed),
                str(unsigned),
            ]
        )
        rows["apksigner verify"] = _timed_child([tool, "verify", str(signed)])
        store = appsign_kit.channel_pki("bench-store")
        crl = store.crl()
        dev, pub = d / "dev.apk", d / "pub.apk"
        rows["mstcrypt developer sign"] = _timed(
            lambda: appsign.sign_developer(
                signed, dev, signer=store.developer.signer(), certificates=[store.developer.cert]
            )
        )
        rows["mstcrypt channel review+countersign"] = _timed(
            lambda: appsign.countersign(
                dev,
                pub,
                signer=store.signer.signer(),
                certificates=[store.signer.cert],
                channel_name=store.name,
                channel_ca=store.ca.certificate,
                crls=[crl],
            )
        )
        policy = appsign.Policy.from_file(store.policy(d))
        rows["mstcrypt terminal verify"] = _timed(
            lambda: appsign.verify_package(pub, policy, crls=[crl])
        )
        check = subprocess.run([tool, "verify", str(pub)], capture_output=True, text=True)
    mb = size / 1e6
    print(
        f"package: {mb:.1f} MB; apksigner verify after both layers: "
        f"{'passes' if check.returncode == 0 else 'FAILS'}"
    )
    print(f"{'operation':40} {'CPU s':>8} {'MB/s CPU':>9} {'wall s':>8} {'MB/s wall':>10}")
    for name, (cpu, wall) in rows.items():
        print(f"{name:40} {cpu:8.2f} {mb / cpu:9.1f} {wall:8.2f} {mb / wall:10.1f}")
    ours, ref = rows["mstcrypt terminal verify"][0], rows["apksigner verify"][0]
    print(f"verify: {ref / ours:.2f}x apksigner (CPU); target >= 1.0x")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "size_bytes": size,
                    "rows": {k: {"cpu_s": v[0], "wall_s": v[1]} for k, v in rows.items()},
                    "apksigner_verify_after_layers": check.returncode == 0,
                },
                indent=1,
            )
        )
    return 0 if check.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

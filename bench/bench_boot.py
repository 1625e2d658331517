"""Trusted boot: SM3 hash-tree build and full verification throughput, and the latency of
verifying one block, on a 1 GiB image, beside references measured in the same run on
the same file: ``sha256sum``, ``openssl dgst -sm3`` and (when installed) ``veritysetup
format --hash=sm3``, which builds the very same tree in C.

    .venv/bin/python bench/bench_boot.py [--size-mib 1024] [--block-size 4096]

All figures are CPU time (user + system, as ``openssl speed``): ours from
``time.process_time``, the references' from ``getrusage(RUSAGE_CHILDREN)``; the file is
read once beforehand so every run reads from the page cache. Target: build and full
verify within 2x of ``openssl dgst -sm3`` (both are one SM3 pass over the data plus
~1/128 for the tree), one-block verify < 1 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mstcrypt.apps import boot


def _child_cpu(cmd: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _own_cpu(fn: object) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn()  # type: ignore[operator]
    return time.process_time() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--reads", type=int, default=2000, help="random single-block verifies")
    ap.add_argument("--dir", help="where to put the image (default: a temporary directory)")
    args = ap.parse_args()
    size = args.size_mib << 20
    bs = args.block_size
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_boot_"))
    img, tree = work / "system.img", work / "system.tree"
    print(f"# image {args.size_mib} MiB, block {bs}, in {work}")
    with img.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    with img.open("rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    mib = size / (1 << 20)
    rows: list[tuple[str, float]] = []

    def build() -> boot.TreeInfo:
        with img.open("rb") as f, tree.open("wb") as t:
            return boot.build(f, t, block_size=bs, salt=b"bench-salt")

    cpu, info = _own_cpu(build)
    assert isinstance(info, boot.TreeInfo)
    rows.append(("mstcrypt hash-tree build (SM3)", cpu))
    desc = boot.HashTreeDescriptor(
        "system", size, bs.bit_length() - 1, b"bench-salt", info.layout.tree_size, info.root
    )

    def verify_all() -> None:
        with img.open("rb") as f, tree.open("rb") as t:
            boot.HashTree(desc, f, t).verify_all()

    cpu, _ = _own_cpu(verify_all)
    rows.append(("mstcrypt hash-tree full verify (SM3)", cpu))
    for name, cmd in (
        ("sha256sum", ["sha256sum", str(img)]),
        ("openssl dgst -sm3", ["openssl", "dgst", "-sm3", str(img)]),
        (
            "veritysetup format --hash=sm3 (C, same tree)",
            ["veritysetup", "format", "--no-superblock", "--format=1", "--hash=sm3",
             f"--data-block-size={bs}", f"--hash-block-size={bs}",
             "--salt=" + b"bench-salt".hex(), str(img), str(work / "v.tree")],
        ),
    ):  # fmt: skip
        if shutil.which(cmd[0]) is None:
            print(f"# {name}: not installed, skipped")
            continue
        rows.append((name, _child_cpu(cmd)))
    ref = dict(rows).get("openssl dgst -sm3")
    print(f"{'operation':48s} {'CPU s':>8s} {'MiB/s':>9s} {'vs openssl sm3':>15s}")
    for name, cpu in rows:
        ratio = f"{ref / cpu:.2f}x" if ref and cpu else "-"
        print(f"{name:48s} {cpu:8.2f} {mib / cpu if cpu else 0:9.1f} {ratio:>15s}")
    # one-block verification: a fresh verifier per read (no cache) and a warm one
    rng = random.Random(1)
    blocks = [rng.randrange(size // bs) for _ in range(args.reads)]
    with img.open("rb") as f, tree.open("rb") as t:
        cold = boot.HashTree(desc, f, t, cache=0)
        t0 = time.process_time()
        for b in blocks:
            cold.read_block(b)
        cold_us = (time.process_time() - t0) / len(blocks) * 1e6
        warm = boot.HashTree(desc, f, t, cache=4096)
        for b in blocks:
            warm.read_block(b)
        t0 = time.process_time()
        for b in blocks:
            warm.read_block(b)
        warm_us = (time.process_time() - t0) / len(blocks) * 1e6
    levels = len(info.layout.level_blocks)
    print(f"one-block verify, {levels} tree levels, no cache:   {cold_us:8.1f} us CPU/block")
    print(f"one-block verify, verified hash blocks cached:      {warm_us:8.1f} us CPU/block")
    if not args.dir:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())

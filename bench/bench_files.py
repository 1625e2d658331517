"""File encryption throughput (apps.files) next to ``openssl speed -evp sm4-ctr`` measured
in the same run, as ratios, with the peak RSS of the process doing the work.

    PYTHONPATH=src python bench/bench_files.py [--size-mib 512] [--chunk-size 65536]
                                               [--seconds 3] [--dir /tmp] [--json out.json]

A plaintext of --size-mib MiB is generated on the fly (never held in memory or written to
disk), encrypted into a file in --dir, then that file is decrypted into a counting sink;
both run in a child process whose ru_maxrss is reported. Target: >= 0.8x the SM4-CTR
reference for encryption and decryption (SM4-GCM = CTR + GHASH, plus the chunking).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET = 0.8
MIB = 1 << 20


class Pattern(io.RawIOBase):
    """``size`` bytes of a random 1 MiB block, each copy stamped with its index."""

    def __init__(self, size: int) -> None:
        self._left = size
        self._block = os.urandom(MIB)
        self._index = 0
        self._cur = memoryview(b"")

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self._left
        n = min(n, self._left)
        out = []
        while n:
            if not self._cur:
                self._cur = memoryview(self._index.to_bytes(8, "big") + self._block[8:])
                self._index += 1
            take = min(n, len(self._cur))
            out.append(self._cur[:take])
            self._cur = self._cur[take:]
            n -= take
            self._left -= take
        return b"".join(out)


class Sink:
    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)


def child(size: int, chunk: int, directory: str) -> dict[str, Any]:
    import resource

    from mstcrypt.apps import files
    from mstcrypt.module import KeyUsage, SoftToken

    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        tok = SoftToken.init(Path(tmp) / "t.tok", "123456", "admin-code-1", iterations=100_000)
        tok.create_container("me")
        h = tok.generate_key_pair("me", KeyUsage.ENCRYPT, escrowed=False)
        base = _vmhwm() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        path = Path(tmp) / "big.mst"
        t0, c0 = time.perf_counter(), _cpu()
        with open(path, "wb") as f:
            files.encrypt(Pattern(size), f, [h.public_key], chunk_size=chunk)
        t1, c1 = time.perf_counter(), _cpu()
        sink = Sink()
        with open(path, "rb") as f:
            n = files.decrypt(f, sink, tok, h)  # type: ignore[arg-type]
        t2, c2 = time.perf_counter(), _cpu()
        assert n == size == sink.n
        peak = _vmhwm() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "size": size,
        "encrypt_s": t1 - t0,
        "decrypt_s": t2 - t1,
        "encrypt_cpu_s": c1 - c0,
        "decrypt_cpu_s": c2 - c1,
        "baseline_rss_kib": base,
        "peak_rss_kib": peak,
    }


def _vmhwm() -> int | None:
    """Peak RSS (KiB) of this process image on Linux; ru_maxrss survives fork and execve,
    so it may include the parent's pages."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _cpu() -> float:
    """User + system CPU seconds of this process (``openssl speed`` divides by user CPU
    time too, so the ratio does not depend on how busy the machine is)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def openssl_ctr(seconds: float, nbytes: int) -> float | None:
    """MB/s (10^6 bytes) of ``openssl speed -evp sm4-ctr`` on ``nbytes`` buffers."""
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
                "sm4-ctr",
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--json", help="also write the figures as JSON")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = args.size_mib * MIB
    if args.child:
        print(json.dumps(child(size, args.chunk_size, args.dir)))
        return 0
    print("  measuring openssl speed -evp sm4-ctr…", file=sys.stderr)
    ref = openssl_ctr(args.seconds, args.chunk_size)
    print(f"  encrypting and decrypting {args.size_mib} MiB…", file=sys.stderr)
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--size-mib",
            str(args.size_mib),
            "--chunk-size",
            str(args.chunk_size),
            "--dir",
            args.dir,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(proc.stdout)
    rows = []
    for op in ("encrypt", "decrypt"):
        cpu = size / r[f"{op}_cpu_s"] / 1e6
        rows.append(
            {
                "operation": f"file {op} (SM4-GCM STREAM)",
                "MB/s (CPU)": cpu,
                "MB/s (wall)": size / r[f"{op}_s"] / 1e6,
                "reference MB/s": ref,
                "ratio": cpu / ref if ref else None,
            }
        )
    print("MB/s per CPU second (user + system) of the process, as openssl speed divides by")
    print("its user CPU time; wall-clock MB/s depends on how busy the machine is.")
    print(f"{'operation':32} {'MB/s':>8} {'wall':>8} {'sm4-ctr':>8} {'ratio':>7}  target")
    for row in rows:
        ratio = row["ratio"]
        verdict = "-" if ratio is None else ("ok" if ratio >= TARGET else "BELOW")
        print(
            f"{row['operation']:32} {row['MB/s (CPU)']:8.1f} {row['MB/s (wall)']:8.1f} "
            f"{ref or 0:8.1f} {(ratio or 0):6.2f}x  >= {TARGET}x {verdict}"
        )
    print(
        f"size {args.size_mib} MiB, chunk {args.chunk_size} B; encrypt {r['encrypt_s']:.1f} s, "
        f"decrypt {r['decrypt_s']:.1f} s; peak RSS {r['peak_rss_kib'] / 1024:.1f} MiB "
        f"(after imports and token set-up: {r['baseline_rss_kib'] / 1024:.1f} MiB)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "child": r, "chunk_size": args.chunk_size}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Check that the ratios `mstcrypt speed` prints match an independent measurement (within 10%).

    .venv/bin/python bench/check_speed.py [--seconds 3] [--rounds 3] [--sizes 16,256,16384]
                                          [--busy N] [--json out.json]

For each algorithm group it runs `mstcrypt speed --algorithms G --rounds 3 --json ...` (the
command users run; its references come from `openssl speed`, or Tongsuo's for SM4-GCM and
ZUC) and right after it measures both sides again by other means:

* the reference with bench/speedref.c, a small C program compiled here with the system C
  compiler against the same libcrypto (``-lcrypto``; needs libssl-dev) -- or against Tongsuo's
  (``MSTCRYPT_TONGSUO``) -- that repeats what `openssl speed` times with its own loop and
  clock (process CPU time);
* our figure by running the same public API call N times in a child process and taking the
  child's CPU time from the kernel (``os.wait4`` rusage), minus that of children making no
  calls (interpreter start-up and set-up); a child runs before and after the C reference, so
  a load that changes meanwhile affects both sides alike (as `mstcrypt speed` measures its
  reference between two halves of its own figure), and the medians of three such rounds are
  kept (as `--rounds 3` does).

A row passes when the ratio `mstcrypt speed` printed is within 10% of the independent ratio.
``--busy N`` keeps N extra processes spinning (``yes > /dev/null``) for the whole run, to show
that the CPU-time basis keeps the ratios right on a busy machine. Exit status 1 if a row
fails; 0 with a message if no compiler or headers are available (nothing checked).
SM2 encryption has no `speed` reference; its independent ratio is printed for information.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.10
GROUPS = ("sm2", "sm3", "sm4-cbc", "sm4-ctr", "sm4-gcm", "zuc-eea3")  # rows with a reference
SIZES = (16, 64, 256, 1024, 16384)

# mstcrypt speed row name -> (speedref mode, speedref algorithm name)
SPEEDREF = {
    "SM2 sign": ("sm2", "sign"),
    "SM2 verify": ("sm2", "verify"),
    "SM2 encrypt (32 B)": ("sm2", "encrypt"),
    "SM2 decrypt (32 B)": ("sm2", "decrypt"),
    "SM3": ("digest", "SM3"),
    "SM4-CBC": ("cipher", "SM4-CBC"),
    "SM4-CTR": ("cipher", "SM4-CTR"),
    "SM4-GCM": ("aead", "SM4-GCM"),
    "ZUC-128 EEA3": ("cipher", "ZUC-128-EEA3"),
}


# --- the child: our public API, N calls, timed by the parent through rusage ---------------


def child(op: str, size: int, n: int) -> None:
    from mstcrypt.crypto import sm3, sm4, zuc
    from mstcrypt.crypto.sm2 import SM2PrivateKey

    k16, iv16, n12, buf = os.urandom(16), os.urandom(16), os.urandom(12), os.urandom(size)
    key = SM2PrivateKey.generate()
    pub = key.public_key()
    msg = os.urandom(32)
    sig, ct = key.sign(msg), pub.encrypt(msg)
    fns = {
        "SM2 sign": lambda: key.sign(msg),
        "SM2 verify": lambda: pub.verify(sig, msg),
        "SM2 encrypt (32 B)": lambda: pub.encrypt(msg),
        "SM2 decrypt (32 B)": lambda: key.decrypt(ct),
        "SM3": lambda: sm3.sm3(buf),
        "SM4-CBC": lambda: sm4.cbc_encrypt(k16, iv16, buf, padding=False),
        "SM4-CTR": lambda: sm4.ctr(k16, iv16, buf),
        "SM4-GCM": lambda: sm4.gcm_encrypt(k16, n12, buf),
        "ZUC-128 EEA3": lambda: zuc.eea3(k16, 0x1234, 5, 1, buf, size * 8),
        "ZUC-128 EIA3": lambda: zuc.eia3(k16, 0x1234, 5, 1, buf, size * 8),
    }
    fn = fns[op]
    for _ in range(n):
        fn()


def child_cpu(op: str, size: int, n: int) -> float:
    """CPU seconds (user + system) of a child process making ``n`` calls."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", op, str(size), str(n)]
    p = subprocess.Popen(argv)
    _pid, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"child for {op} failed with status {p.returncode}")
    return usage.ru_utime + usage.ru_stime


def independent(
    op: str,
    size: int,
    calls_per_s: float,
    seconds: float,
    rounds: int,
    reference: Callable[[float], float],
) -> tuple[float, float]:
    """(our calls per CPU-second, the reference figure), medians over ``rounds`` sandwiches:
    a child making N calls, the reference, another child making N calls. Children making no
    calls give the start-up and set-up cost, which is subtracted."""
    n = max(1, round(calls_per_s * seconds / rounds / 2))
    base = (child_cpu(op, size, 0) + child_cpu(op, size, 0)) / 2
    ours, refs = [], []
    for _ in range(rounds):
        t_a = child_cpu(op, size, n)
        refs.append(reference(seconds / rounds))
        t_b = child_cpu(op, size, n)
        work = t_a + t_b - 2 * base
        if work <= 0:
            raise RuntimeError(f"could not time {op}: no CPU time left after start-up")
        ours.append(2 * n / work)
    return statistics.median(ours), statistics.median(refs)


# --- the C reference --------------------------------------------------------------------------


def compile_speedref(outdir: Path, prefix: Path | None) -> tuple[Path | None, str]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler"
    exe = outdir / ("speedref-tongsuo" if prefix else "speedref")
    cmd = [cc, "-O2", "-o", str(exe), str(HERE / "speedref.c")]
    if prefix is not None:
        lib = prefix / "lib64" if (prefix / "lib64").is_dir() else prefix / "lib"
        cmd[1:1] = [f"-I{prefix / 'include'}"]
        cmd += [f"-L{lib}", f"-Wl,-rpath,{lib}"]
    cmd.append("-lcrypto")
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        return None, f"{' '.join(cmd)} failed: {p.stderr.strip()[:300]} (install libssl-dev?)"
    return exe, " ".join(cmd)


def speedref(exe: Path, mode: str, alg: str, size: int | None, seconds: float) -> float:
    """Ops per CPU-second (public key) or MB/s (bulk) measured by speedref."""
    args = [str(exe), mode, alg] + ([] if mode == "sm2" else [str(size)]) + [str(seconds)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]) if mode == "sm2" else float(out[1]) / 1e6


# --- the run -----------------------------------------------------------------------------------


def mstcrypt_speed(
    group: str, sizes: str, seconds: float, rounds: int, tmp: Path
) -> dict[str, object]:
    out = tmp / f"speed-{group}-{sizes}.json"
    cmd = [sys.executable, "-m", "mstcrypt", "speed", "--seconds", str(seconds)]
    cmd += ["--rounds", str(rounds)]
    cmd += ["--sizes", sizes, "--algorithms", group, "--json", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per measurement")
    ap.add_argument("--sizes", default="16,256,16384", help=f"message sizes (all: {SIZES})")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per row, medians kept")
    ap.add_argument("--algorithms", default=",".join(GROUPS))
    ap.add_argument("--busy", type=int, default=0, help="extra busy-loop processes to run")
    ap.add_argument("--json", help="also write the figures as JSON")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="check_speed-"))
    exes: dict[str, Path] = {}
    exe, how = compile_speedref(tmp, None)
    if exe is None:
        print(f"SKIPPED: cannot build the C reference: {how}")
        return 0
    exes["openssl"] = exe
    print(f"reference program: {how}")
    tongsuo = os.environ.get("MSTCRYPT_TONGSUO") or shutil.which("tongsuo")
    if tongsuo:
        prefix = Path(tongsuo).resolve().parent.parent
        exe, how = compile_speedref(tmp, prefix)
        if exe is not None:
            exes["tongsuo"] = exe
            print(f"reference program: {how}")
        else:
            print(f"no Tongsuo reference program: {how}")

    busy = [
        subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if shutil.which("yes") else
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(args.busy)
    ]  # fmt: skip
    results: list[dict[str, object]] = []
    shares: list[float] = []
    try:
        if busy:
            time.sleep(0.5)
        print(f"load average before: {os.getloadavg()[0]:.2f}; busy-loop processes: {len(busy)}")
        # one `mstcrypt speed` per row (SM2: its four rows), the independent measurement
        # right after it, so both see about the same load
        jobs = [
            (group, size)
            for group in args.algorithms.split(",")
            for size in (["16"] if group == "sm2" else args.sizes.split(","))
        ]
        for group, size_arg in jobs:
            print(f"  {group} {size_arg}: mstcrypt speed …", file=sys.stderr)
            report = mstcrypt_speed(group, size_arg, args.seconds, args.rounds, tmp)
            for row in report["rows"]:  # type: ignore[attr-defined]
                name, size = row["name"], row["size"]
                if row["cpu_share"] is not None:
                    shares.append(row["cpu_share"])
                ref_cmd = row["reference_name"] or ""
                tool = ref_cmd.split()[0] if row["reference"] else None
                if name not in SPEEDREF:
                    continue
                if tool is None and not name.startswith("SM2 "):
                    continue  # no reference in mstcrypt speed and none here either
                exe = exes.get(tool or "openssl")
                if exe is None:
                    continue
                mode, alg = SPEEDREF[name]
                print(f"  {name} {size or ''}: independent measurements …", file=sys.stderr)
                scale = size / 1e6 if size else 1.0
                ours_c, ref_c = independent(
                    name,
                    size or 0,
                    row["ours"] / scale,
                    args.seconds,
                    args.rounds,
                    lambda s, exe=exe, mode=mode, alg=alg, size=size: speedref(
                        exe, mode, alg, size, s
                    ),
                )
                ours_c *= scale
                indep_ratio = ours_c / ref_c
                shown = row["ratio"]
                results.append(
                    {
                        "name": name,
                        "size": size,
                        "unit": row["unit"],
                        "ours_speed": row["ours"],
                        "ref_speed": row["reference"],
                        "ours_indep": ours_c,
                        "ref_indep": ref_c,
                        "ratio_shown": shown,
                        "ratio_indep": indep_ratio,
                        "diff": (shown / indep_ratio - 1) if shown is not None else None,
                        "reference": ref_cmd,
                    }
                )
    finally:
        for p in busy:
            p.kill()
            p.wait()

    share = sum(shares) / len(shares) if shares else None
    print()
    print(
        f"{'row':22} {'mstcrypt speed: ours':>20} {'reference':>11} {'ratio':>6} | "
        f"{'independent: ours':>17} {'C ref':>9} {'ratio':>6} | {'diff':>6}"
    )
    failed = 0
    for r in results:
        label = f"{r['name']} {_size(r['size'])}".strip()
        unit = r["unit"]
        ref_s = f"{r['ref_speed']:,.1f}" if r["ref_speed"] else "-"
        shown = f"{r['ratio_shown']:.2f}x" if r["ratio_shown"] is not None else "-"
        if r["diff"] is None:
            verdict = "(no speed reference; information only)"
        else:
            ok = abs(r["diff"]) <= TOLERANCE
            failed += not ok
            verdict = f"{r['diff']:+6.1%} {'ok' if ok else 'FAIL'}"
        print(
            f"{label:22} {r['ours_speed']:>14,.1f} {unit:>5} {ref_s:>11} {shown:>6} | "
            f"{r['ours_indep']:>17,.1f} {r['ref_indep']:>9,.1f} {r['ratio_indep']:>5.2f}x | "
            f"{verdict}"
        )
    diffs = [r["diff"] for r in results if r["diff"] is not None]
    checked = len(diffs)
    worst = max((abs(d) for d in diffs), default=0.0)
    print()
    if share is not None:
        print(f"mstcrypt's CPU share of wall time while measuring: {share:.0%}")
    if diffs:
        mean = sum(diffs) / len(diffs)
        print(
            f"differences: mean {mean:+.1%}, mean absolute {sum(map(abs, diffs)) / len(diffs):.1%}"
        )
    print(
        f"{checked} ratios checked, largest difference {worst:.1%}: "
        f"{'all within' if not failed else f'{failed} outside'} {TOLERANCE:.0%}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"busy": len(busy), "cpu_share": share, "rows": results}, indent=2)
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


def _size(n: object) -> str:
    if not n:
        return ""
    n = int(n)  # type: ignore[call-overload]
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


if __name__ == "__main__":
    sys.exit(main())

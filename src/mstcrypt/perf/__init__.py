"""Throughput measurement shared by ``mstcrypt speed`` and ``bench/``: our figures next to a
reference tool measured in the same run, on the same basis, as ratios.

Basis. ``openssl speed`` (and Tongsuo's) runs each test for a wall-clock interval but divides
the work done by the *user CPU time* it consumed, so its figures do not drop when the machine
is busy. We do the same: :func:`rate` counts calls per CPU-second of the measuring thread
(:func:`time.thread_time`, which leaves out a progress-display thread) and also records calls
per wall-second, so a busy machine shows up as a CPU share below 100 % rather than as a false
ratio. Each reference figure is measured between the two halves of ours for the same
algorithm and size, so both see the same machine conditions, and on a busy machine the
reference runs for more wall seconds so that it too collects about ``seconds`` of CPU time.

What is compared. Our rows are one-shot API calls per message (key schedule and IV setup
included, as an application pays them). ``openssl speed -evp`` times ``EVP_*Update`` on one
context initialised once, so at 16-byte messages it measures bulk speed without set-up
costs; ``-aead`` (used for GCM) sets a new IV, 13 bytes of AAD and computes the tag for
every message, which is what :func:`mstcrypt.crypto.sm4.gcm_encrypt` does.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from mstcrypt.crypto import _fixedbase, sm3, sm4, zuc
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PrivateKey

#: Message sizes of the bulk rows (bytes); 16384 is ``openssl speed``'s largest default.
SIZES: tuple[int, ...] = (16, 64, 256, 1024, 16384)
#: Algorithm groups, in table order ("zuc" selects both ZUC rows).
ALGORITHMS: tuple[str, ...] = (
    "sm2", "sm3", "sm4-cbc", "sm4-ctr", "sm4-gcm", "zuc", "zuc-eea3", "zuc-eia3",
)  # fmt: skip
BASIS = (
    "CPU time: mstcrypt = calls per CPU-second of the measuring thread; "
    "openssl/tongsuo speed = per user-CPU-second of their process"
)

BULK = 16384  # kept for callers of the previous API

_T = TypeVar("_T")


@dataclass
class Rate:
    """Calls per second of a function, by CPU time and by wall time."""

    cpu: float
    wall: float
    calls: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def cpu_share(self) -> float:
        """CPU time over wall time while measuring (1.0 on an idle core)."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def __add__(self, other: Rate) -> Rate:
        """The two measurements as one."""
        calls = self.calls + other.calls
        cpu = self.cpu_seconds + other.cpu_seconds
        wall = self.wall_seconds + other.wall_seconds
        return Rate(calls / cpu, calls / wall, calls, cpu, wall)


@dataclass
class Row:
    name: str
    unit: str  # "ops/s" or "MB/s" (10^6 bytes)
    ours: float  # CPU-time basis
    reference: float | None = None
    reference_name: str = ""  # the command measured, or why there is no reference
    size: int | None = None  # message bytes, None for public-key operations
    ours_wall: float | None = None  # wall-time basis, for the record
    cpu_share: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.reference in (None, 0):
            return None
        return self.ours / self.reference  # type: ignore[operator]

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"ratio": self.ratio}


@dataclass
class Report:
    rows: list[Row]
    basis: str = BASIS
    zuc_backend: str = field(default_factory=zuc.backend_info)
    references: dict[str, str] = field(default_factory=dict)  # tool name -> version line

    @property
    def cpu_share(self) -> float | None:
        shares = [r.cpu_share for r in self.rows if r.cpu_share is not None]
        return sum(shares) / len(shares) if shares else None

    def as_dict(self) -> dict[str, object]:
        return {
            "basis": self.basis,
            "zuc_backend": self.zuc_backend,
            "references": self.references,
            "cpu_share": self.cpu_share,
            "rows": [r.as_dict() for r in self.rows],
        }


def rate(fn: Callable[[], object], seconds: float) -> Rate:
    """Call ``fn`` until it has used about ``seconds`` of CPU time (or 5x that of wall time on
    a machine too busy to give it the CPU), after one warm-up call."""
    fn()
    n = 0
    batch = 1
    cpu0 = time.thread_time()
    wall0 = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        cpu = time.thread_time() - cpu0
        wall = time.perf_counter() - wall0
        if cpu >= seconds or wall >= 5 * seconds:
            break
        if cpu < seconds / 64:
            batch = min(batch * 2, 1 << 16)
    cpu = max(cpu, 1e-9)
    return Rate(cpu=n / cpu, wall=n / wall, calls=n, cpu_seconds=cpu, wall_seconds=wall)


# --- reference tools ------------------------------------------------------------------------


class SpeedTool:
    """``openssl speed`` or a compatible fork (Tongsuo), machine-readable output (``-mr``)."""

    def __init__(self, name: str, exe: str) -> None:
        self.name = name
        self.exe = exe
        self._version: str | None = None
        self._unsupported: set[str] = set()

    @property
    def version(self) -> str:
        if self._version is None:
            out = self._run(["version"], timeout=30) or ""
            m = re.search(r"(OpenSSL|Tongsuo|BabaSSL) [\w.-]+", out)
            self._version = m.group(0) if m else f"{self.name} (unknown version)"
        return self._version

    def _run(self, args: Sequence[str], timeout: float = 300) -> str | None:
        try:
            p = subprocess.run(
                [self.exe, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout + "\n" + p.stderr

    def speed(self, args: Sequence[str], seconds: float) -> str | None:
        return self._run(["speed", "-mr", "-seconds", str(max(1, round(seconds))), *args])

    def supports(self, alg: str) -> bool:
        return alg.lower() not in self._unsupported

    def evp(self, alg: str, size: int, seconds: float, *, aead: bool = False) -> float | None:
        """MB/s of ``speed -evp alg`` on ``size``-byte buffers (None if unsupported/failed)."""
        if not self.supports(alg):
            return None
        out = self.speed([*(["-aead"] if aead else []), "-bytes", str(size), "-evp", alg], seconds)
        value = parse_evp(out or "")
        if value is None and re.search(r"unknown cipher|unsupported", out or "", re.I):
            self._unsupported.add(alg.lower())
        return value

    def sm2(self, seconds: float) -> tuple[float, float] | None:
        """(sign/s, verify/s) of ``speed sm2``."""
        return parse_sm2(self.speed(["sm2"], seconds) or "")


def parse_evp(out: str) -> float | None:
    """The first figure of a ``+F:`` line (bytes/s) as MB/s."""
    m = re.search(r"^\+F:\d+:[^:]+:([\d.]+)", out, re.M)
    return float(m.group(1)) / 1e6 if m else None


def parse_sm2(out: str) -> tuple[float, float] | None:
    m = re.search(r"^\+F\d+:\d+:\d+:CurveSM2:([\d.]+):([\d.]+)", out, re.M)
    return (float(m.group(1)), float(m.group(2))) if m else None


def find_openssl() -> SpeedTool | None:
    exe = os.environ.get("MSTCRYPT_OPENSSL") or shutil.which("openssl")
    return SpeedTool("openssl", exe) if exe else None


def find_tongsuo() -> SpeedTool | None:
    exe = os.environ.get("MSTCRYPT_TONGSUO") or shutil.which("tongsuo")
    return SpeedTool("tongsuo", exe) if exe and os.access(exe, os.X_OK) else None


# --- the measurements -----------------------------------------------------------------------


def measure(
    seconds: float = 1.0,
    progress: Callable[[str], None] | None = None,
    *,
    sizes: Iterable[int] = SIZES,
    algorithms: Iterable[str] = ALGORITHMS,
    reference: bool = True,
    rounds: int = 1,
) -> list[Row]:
    """Run the measurements; ``progress(name)`` is called before each step."""
    return measure_report(
        seconds, progress, sizes=sizes, algorithms=algorithms, reference=reference, rounds=rounds
    ).rows


def measure_report(
    seconds: float = 1.0,
    progress: Callable[[str], None] | None = None,
    *,
    sizes: Iterable[int] = SIZES,
    algorithms: Iterable[str] = ALGORITHMS,
    reference: bool = True,
    rounds: int = 1,
) -> Report:
    """Measure every selected row. With ``rounds`` > 1 each row is measured that many times
    (``seconds`` split between them) and the medians are kept, which on a machine whose load
    comes and goes drops the rounds a burst of other work disturbed."""
    step = progress or (lambda _name: None)
    if rounds < 1:
        from mstcrypt.errors import PolicyError

        raise PolicyError("rounds must be at least 1")
    sizes = tuple(sizes)
    algs = tuple(a.lower() for a in algorithms)
    unknown = set(algs) - set(ALGORITHMS)
    if "zuc" in algs:
        algs += ("zuc-eea3", "zuc-eia3")
    if unknown:
        from mstcrypt.errors import PolicyError

        raise PolicyError(f"unknown algorithm(s) {sorted(unknown)}; choose from {ALGORITHMS}")
    openssl = find_openssl() if reference else None
    tongsuo = find_tongsuo() if reference else None
    report = Report(rows=[])
    for tool in (openssl, tongsuo):
        if tool is not None:
            report.references[tool.name] = tool.version
    rows = report.rows

    share = 1.0  # CPU share of the last measurement: how long the reference must run

    def ref_seconds() -> int:
        """Wall seconds for `speed -seconds`: enough to collect about as much CPU time as our
        side of the round on a busy machine too (its user time is counted in 10 ms ticks)."""
        return min(5, max(1, math.ceil(seconds / rounds / max(share, 0.2))))

    def around(
        fns: list[Callable[[], object]], middle: Callable[[], _T]
    ) -> tuple[list[Rate], list[_T]]:
        """Per round, measure ``fns`` for half their time before ``middle()`` (the reference)
        and half after, so a load that changes meanwhile shifts both sides alike. Returns the
        median rate of each function and every ``middle()`` result."""
        nonlocal share
        per_fn: list[list[Rate]] = [[] for _ in fns]
        mids: list[_T] = []
        slice_ = seconds / (2 * rounds)
        for _ in range(rounds):
            before = [rate(f, slice_) for f in fns]
            share = sum(r.cpu_share for r in before) / len(before)
            mids.append(middle())
            after = [rate(f, slice_) for f in fns]
            for i, (a, b) in enumerate(zip(before, after, strict=True)):
                per_fn[i].append(a + b)
        return [_median_rate(rs) for rs in per_fn], mids

    def add(name: str, unit: str, r: Rate, ref: float | None, how: str, size: int | None) -> None:
        scale = size / 1e6 if size else 1.0
        rows.append(
            Row(
                name,
                unit,
                r.cpu * scale,
                ref,
                how,
                size=size,
                ours_wall=r.wall * scale,
                cpu_share=r.cpu_share,
            )
        )

    if "sm2" in algs:
        key = SM2PrivateKey.generate()
        pub = key.public_key()
        msg = random_bytes(32)
        sig = key.sign(msg)
        ct = pub.encrypt(msg)
        step("SM2 sign and verify, openssl speed sm2")
        (r_sign, r_verify), refs_sm2 = around(
            [lambda: key.sign(msg), lambda: pub.verify(sig, msg)],
            lambda: openssl.sm2(ref_seconds()) if openssl else None,
        )
        got = [r for r in refs_sm2 if r is not None]
        ref_sm2 = (_median([s for s, _ in got]), _median([v for _, v in got])) if got else None
        how = "openssl speed sm2" if ref_sm2 else _missing(openssl, "openssl speed sm2")
        add("SM2 sign", "ops/s", r_sign, ref_sm2[0] if ref_sm2 else None, how, None)
        add("SM2 verify", "ops/s", r_verify, ref_sm2[1] if ref_sm2 else None, how, None)
        # A key verifying again and again (a CA, a correspondent) gets a precomputed
        # table; this row is a key's first verifications, without one.
        first = SM2PrivateKey.generate()
        first_pub, first_sig = first.public_key(), first.sign(msg)
        step("SM2 verify, a key's first use")
        with _fixedbase.no_new_tables():
            r_first = rate(lambda: first_pub.verify(first_sig, msg), seconds)
        add("SM2 verify (key's first use)", "ops/s", r_first, ref_sm2[1] if ref_sm2 else None,
            how, None)  # fmt: skip
        none = "none: openssl/tongsuo speed have no SM2 encryption"
        step("SM2 encrypt")
        add("SM2 encrypt (32 B)", "ops/s", rate(lambda: pub.encrypt(msg), seconds), None, none,
            None)  # fmt: skip
        step("SM2 decrypt")
        add("SM2 decrypt (32 B)", "ops/s", rate(lambda: key.decrypt(ct), seconds), None, none,
            None)  # fmt: skip

    k16, iv16, n12 = random_bytes(16), random_bytes(16), random_bytes(12)
    Refs = list[tuple[str, SpeedTool | None, str, bool]]  # (tool name, tool, algorithm, -aead)
    bulk: list[tuple[str, str, Callable[[bytes], object], Refs]]
    bulk = [
        ("sm3", "SM3", lambda b: sm3.sm3(b), [("openssl", openssl, "sm3", False)]),
        ("sm4-cbc", "SM4-CBC", lambda b: sm4.cbc_encrypt(k16, iv16, b, padding=False),
         [("openssl", openssl, "sm4-cbc", False)]),
        ("sm4-ctr", "SM4-CTR", lambda b: sm4.ctr(k16, iv16, b),
         [("openssl", openssl, "sm4-ctr", False)]),
        ("sm4-gcm", "SM4-GCM", lambda b: sm4.gcm_encrypt(k16, n12, b),
         [("openssl", openssl, "SM4-GCM", True), ("tongsuo", tongsuo, "SM4-GCM", True)]),
        ("zuc-eea3", "ZUC-128 EEA3", lambda b: zuc.eea3(k16, 0x1234, 5, 1, b, len(b) << 3),
         [("tongsuo", tongsuo, "ZUC-128-EEA3", False)]),
        ("zuc-eia3", "ZUC-128 EIA3", lambda b: zuc.eia3(k16, 0x1234, 5, 1, b, len(b) << 3), []),
    ]  # fmt: skip
    for group, name, fn, refs in bulk:
        if group not in algs:
            continue
        for size in sizes:
            buf = random_bytes(size)

            def reference_figure(size: int = size, refs: Refs = refs) -> tuple[float | None, str]:
                for _tname, tool, alg, aead in refs:
                    if tool is None or not tool.supports(alg):
                        continue
                    value = tool.evp(alg, size, ref_seconds(), aead=aead)
                    if value is not None:
                        return value, f"{tool.name} speed {'-aead ' if aead else ''}-evp {alg}"
                return None, ""

            step(f"{name} ({size} B)")
            (r,), figures = around([lambda fn=fn, buf=buf: fn(buf)], reference_figure)
            got = [f for f in figures if f[0] is not None]
            ref = _median([v for v, _ in got if v is not None]) if got else None
            how = got[0][1] if got else ""
            lacking = [f"{t.version} has no {a}" for _n, t, a, _ in refs if t and not t.supports(a)]
            if ref is not None and lacking:
                how += f" ({'; '.join(lacking)})"
            if ref is None:
                how = _no_reference(refs, reference)
            add(name, "MB/s", r, ref, how, size)
    return report


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _median_rate(rates: list[Rate]) -> Rate:
    """The round with the median CPU rate (the lower middle one for an even count)."""
    return sorted(rates, key=lambda r: r.cpu)[(len(rates) - 1) // 2]


def _missing(tool: SpeedTool | None, command: str) -> str:
    return f"none: {command} failed" if tool else "none: openssl not found"


def _no_reference(refs: list[tuple[str, SpeedTool | None, str, bool]], reference: bool) -> str:
    if not reference:
        return "not measured (--no-reference)"
    if not refs:
        return "none: no speed tool measures it"
    why = []
    for name, tool, alg, _aead in refs:
        if tool is None:
            env = "MSTCRYPT_TONGSUO" if name == "tongsuo" else "MSTCRYPT_OPENSSL"
            why.append(f"{name} not found (set {env})")
        elif not tool.supports(alg):
            why.append(f"{tool.version} has no {alg}")
        else:
            why.append(f"{tool.name} speed failed")
    return "none: " + "; ".join(why)

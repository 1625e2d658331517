"""Throughput measurement shared by ``mstcrypt speed`` and ``bench/``: our figures next
to ``openssl speed`` measured in the same run, as ratios."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from mstcrypt.crypto import sm3, sm4, zuc
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PrivateKey

BULK = 16384


@dataclass
class Row:
    name: str
    unit: str  # "ops/s" or "MB/s"
    ours: float
    reference: float | None = None
    reference_name: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference in (None, 0):
            return None
        return self.ours / self.reference  # type: ignore[operator]


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    batch = 1
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)
        batch = min(batch * 2, 1024)


def openssl_speed(args: list[str], seconds: float) -> str | None:
    exe = shutil.which("openssl")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "speed", "-mr", "-seconds", str(max(1, round(seconds))), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout


def openssl_sm2(seconds: float) -> tuple[float, float] | None:
    out = openssl_speed(["sm2"], seconds)
    m = re.search(r"^\+F\d+:\d+:\d+:CurveSM2:([\d.]+):([\d.]+)", out or "", re.M)
    return (float(m.group(1)), float(m.group(2))) if m else None


def openssl_evp(alg: str, seconds: float) -> float | None:
    """MB/s (10^6 bytes) of ``openssl speed -evp alg`` on 16 KiB buffers."""
    out = openssl_speed(["-bytes", str(BULK), "-evp", alg], seconds)
    m = re.search(r"^\+F:\d+:[^:]+:([\d.]+)", out or "", re.M)
    return float(m.group(1)) / 1e6 if m else None


def measure(seconds: float = 1.0, progress: Callable[[str], None] | None = None) -> list[Row]:
    """Run every measurement; ``progress(name)`` is called before each step."""
    step = progress or (lambda _name: None)
    rows: list[Row] = []
    key = SM2PrivateKey.generate()
    pub = key.public_key()
    msg = random_bytes(32)
    sig = key.sign(msg)
    ct = pub.encrypt(msg)

    step("openssl speed sm2")
    ref_sm2 = openssl_sm2(seconds)
    step("SM2 sign")
    rows.append(
        Row(
            "SM2 sign",
            "ops/s",
            rate(lambda: key.sign(msg), seconds),
            ref_sm2[0] if ref_sm2 else None,
            "openssl speed sm2",
        )
    )
    step("SM2 verify")
    rows.append(
        Row(
            "SM2 verify",
            "ops/s",
            rate(lambda: pub.verify(sig, msg), seconds),
            ref_sm2[1] if ref_sm2 else None,
            "openssl speed sm2",
        )
    )
    step("SM2 encrypt")
    rows.append(Row("SM2 encrypt (32 B)", "ops/s", rate(lambda: pub.encrypt(msg), seconds)))
    step("SM2 decrypt")
    rows.append(Row("SM2 decrypt (32 B)", "ops/s", rate(lambda: key.decrypt(ct), seconds)))

    buf = random_bytes(BULK)
    k16, iv16, n12 = random_bytes(16), random_bytes(16), random_bytes(12)
    mb = BULK / 1e6

    step("SM3")
    ref = openssl_evp("sm3", seconds)
    rows.append(
        Row("SM3", "MB/s", rate(lambda: sm3.sm3(buf), seconds) * mb, ref, "openssl speed -evp sm3")
    )
    step("SM4-CBC")
    ref = openssl_evp("sm4-cbc", seconds)
    rows.append(
        Row(
            "SM4-CBC",
            "MB/s",
            rate(lambda: sm4.cbc_encrypt(k16, iv16, buf), seconds) * mb,
            ref,
            "openssl speed -evp sm4-cbc",
        )
    )
    step("SM4-CTR")
    ref_ctr = openssl_evp("sm4-ctr", seconds)
    rows.append(
        Row(
            "SM4-CTR",
            "MB/s",
            rate(lambda: sm4.ctr(k16, iv16, buf), seconds) * mb,
            ref_ctr,
            "openssl speed -evp sm4-ctr",
        )
    )
    step("SM4-GCM")
    rows.append(
        Row(
            "SM4-GCM",
            "MB/s",
            rate(lambda: sm4.gcm_encrypt(k16, n12, buf), seconds) * mb,
            ref_ctr,
            "openssl speed -evp sm4-ctr",
        )
    )
    step("ZUC-128 EEA3")
    zbuf = buf[:4096]
    rows.append(
        Row(
            "ZUC-128 EEA3 (pure Python)",
            "MB/s",
            rate(lambda: zuc.eea3(k16, 0, 0, 0, zbuf, len(zbuf) * 8), seconds) * len(zbuf) / 1e6,
        )
    )
    return rows

"""`mstcrypt speed` and mstcrypt.perf: the table's structure and the CPU-time basis.

No timing assertions: the figures themselves are checked against an independent
measurement by bench/check_speed.py, not here. The reference tools are replaced by a fake
`openssl` printing canned `speed -mr` output, so the parsing, the ratios and the "no
reference" wording are tested without waiting for real `openssl speed` runs.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from mstcrypt import perf
from mstcrypt.cli import app
from mstcrypt.cli._common import run
from mstcrypt.crypto import zuc

# What OpenSSL 3.0's `speed -mr` prints (abridged to the lines that matter).
OPENSSL_EVP = "+DT:SM4-CTR:1:16\n+R:5413964:SM4-CTR:0.740000\n+H:16\n+F:25:SM4-CTR:117058681.08\n"
OPENSSL_SM2 = (
    "+DTP:256:sign:CurveSM2:1\n+R11:1117:256:CurveSM2:0.46\n"
    "+F7:0:256:CurveSM2:2670.270270:2428.260870\n"
)
OPENSSL_NO_GCM = (
    "speed: SM4-GCM is an unknown cipher or digest\n"
    "40A7...:error:0308010C:digital envelope routines:inner_evp_generic_fetch:unsupported\n"
)

FAKE = r"""#!{python}
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_OPENSSL_LOG"], "a") as log:
    log.write(" ".join(args) + "\n")
if args[0] == "version":
    print("OpenSSL 3.0.99 1 Jan 2030 (Library: OpenSSL 3.0.99 1 Jan 2030)")
elif "sm2" in args:
    sys.stdout.write({sm2!r})
elif "SM4-GCM" in args:
    sys.stderr.write({nogcm!r})
    sys.exit(1)
else:
    size = int(args[args.index("-bytes") + 1])
    alg = args[args.index("-evp") + 1].upper()
    # 100 MB/s whatever the size
    sys.stdout.write("+H:%d\n+F:12:%s:%.2f\n" % (size, alg, 100e6))
"""


@pytest.fixture
def fake_openssl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    exe = tmp_path / "openssl"
    exe.write_text(FAKE.format(python=sys.executable, sm2=OPENSSL_SM2, nogcm=OPENSSL_NO_GCM))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("MSTCRYPT_OPENSSL", str(exe))
    monkeypatch.setenv("FAKE_OPENSSL_LOG", str(tmp_path / "calls.log"))
    monkeypatch.delenv("MSTCRYPT_TONGSUO", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no real `tongsuo` either
    return exe


def test_parsers_read_openssl_machine_readable_output() -> None:
    assert perf.parse_evp(OPENSSL_EVP) == pytest.approx(117.05868108)
    assert perf.parse_sm2(OPENSSL_SM2) == (2670.270270, 2428.260870)
    assert perf.parse_evp(OPENSSL_NO_GCM) is None
    assert perf.parse_sm2("") is None


def test_rate_divides_by_cpu_time_not_wall_time() -> None:
    """A call that sleeps uses wall time but almost no CPU: counted per CPU-second it is far
    faster than per wall-second (the basis openssl speed uses, so a busy machine does not
    distort the ratios)."""
    r = perf.rate(lambda: time.sleep(0.002), 0.05)
    assert r.calls > 1
    assert r.wall_seconds > r.cpu_seconds
    assert r.cpu > 5 * r.wall
    assert r.cpu_share < 0.5


def test_rate_counts_calls_over_cpu_seconds() -> None:
    calls = 0

    def fn() -> None:
        nonlocal calls
        calls += 1
        sum(range(200))

    r = perf.rate(fn, 0.02)
    assert calls == r.calls + 1  # one warm-up call
    assert r.cpu == pytest.approx(r.calls / r.cpu_seconds)
    assert r.cpu_seconds >= 0.02


def test_measure_report_rows_sizes_and_references(fake_openssl: Path) -> None:
    report = perf.measure_report(0.01, sizes=(16, 1024))
    rows = {(r.name, r.size): r for r in report.rows}
    assert [n for n, s in rows if s is None] == [
        "SM2 sign", "SM2 verify", "SM2 verify (key's first use)", "SM2 encrypt (32 B)",
        "SM2 decrypt (32 B)",
    ]  # fmt: skip
    for name in ("SM3", "SM4-CBC", "SM4-CTR", "SM4-GCM", "ZUC-128 EEA3", "ZUC-128 EIA3"):
        assert (name, 16) in rows and (name, 1024) in rows
    assert len(rows) == 5 + 6 * 2
    # references from the (fake) openssl, ratios = ours / reference
    sign = rows[("SM2 sign", None)]
    assert sign.reference == pytest.approx(2670.270270)
    assert sign.reference_name == "openssl speed sm2"
    assert sign.ratio == pytest.approx(sign.ours / sign.reference)
    ctr = rows[("SM4-CTR", 16)]
    assert ctr.reference == pytest.approx(100.0)
    assert ctr.reference_name == "openssl speed -evp sm4-ctr"
    assert ctr.ratio == pytest.approx(ctr.ours / 100.0)
    # GCM is never compared with CTR: OpenSSL lacks SM4-GCM and there is no Tongsuo
    for size in (16, 1024):
        gcm = rows[("SM4-GCM", size)]
        assert gcm.reference is None and gcm.ratio is None
        assert "OpenSSL 3.0.99 has no SM4-GCM" in gcm.reference_name
        assert "ctr" not in gcm.reference_name.lower()
    for r in (rows[("ZUC-128 EEA3", 16)], rows[("SM2 encrypt (32 B)", None)]):
        assert r.reference is None and r.reference_name.startswith("none:")
    assert "tongsuo not found" in rows[("ZUC-128 EEA3", 16)].reference_name
    assert "tongsuo not found" in rows[("SM4-GCM", 16)].reference_name
    # every figure on both bases
    for r in report.rows:
        assert r.ours > 0 and r.ours_wall is not None and r.ours_wall > 0
        assert r.cpu_share is not None and r.cpu_share > 0
    assert report.references == {"openssl": "OpenSSL 3.0.99"}
    assert report.zuc_backend == zuc.backend_info()
    assert "CPU" in report.basis


def test_rounds_measure_the_reference_between_halves_of_ours(fake_openssl: Path) -> None:
    """--rounds 3: three reference runs per row (medians kept), each given at least one
    wall second; our figure sums both halves of the median round."""
    report = perf.measure_report(0.03, sizes=(64,), algorithms=["sm4-ctr", "sm2"], rounds=3)
    calls = (fake_openssl.parent / "calls.log").read_text().splitlines()
    speed_calls = [c.split() for c in calls if c.startswith("speed")]
    assert sum("sm2" in c for c in speed_calls) == 3
    assert sum("sm4-ctr" in c for c in speed_calls) == 3
    for c in speed_calls:
        assert c[:2] == ["speed", "-mr"] and c[2] == "-seconds" and 1 <= int(c[3]) <= 5
    (ctr,) = [r for r in report.rows if r.name == "SM4-CTR"]
    assert ctr.reference == pytest.approx(100.0) and ctr.size == 64


def test_median_helpers() -> None:
    assert perf._median([3.0, 1.0, 2.0]) == 2.0
    assert perf._median([4.0, 1.0, 2.0, 3.0]) == 2.5
    rates = [
        perf.Rate(cpu=c, wall=c / 2, calls=10, cpu_seconds=1, wall_seconds=2) for c in (5, 1, 3)
    ]
    assert perf._median_rate(rates).cpu == 3
    both = rates[0] + rates[1]
    assert both.calls == 20 and both.cpu_seconds == 2 and both.cpu == 10


def test_measure_report_refuses_unknown_algorithm() -> None:
    from mstcrypt.errors import PolicyError

    with pytest.raises(PolicyError):
        perf.measure_report(0.01, algorithms=["rc4"], reference=False)


def _cli(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], *args: str):
    monkeypatch.setattr(sys, "argv", ["mstcrypt", *args])
    monkeypatch.setenv("COLUMNS", "200")
    code = run(app)
    out, err = capfd.readouterr()
    return code, out, err


def test_speed_command_table_and_json(
    fake_openssl: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    out_json = tmp_path / "speed.json"
    code, out, _ = _cli(
        monkeypatch, capfd, "speed", "--seconds", "0.01", "--sizes", "16,64,16384",
        "--algorithms", "sm2,sm4-ctr,sm4-gcm,zuc", "--json", str(out_json),
    )  # fmt: skip
    assert code == 0
    for head in ("algorithm", "message", "mstcrypt", "reference", "ratio", "ref."):
        assert head in out
    for label in ("SM2 sign", "SM2 decrypt", "SM4-CTR", "SM4-GCM", "ZUC-128 EEA3", "EIA3"):
        assert label in out
    for size in ("16 B", "64 B", "16 KiB"):
        assert size in out
    assert "SM3" not in out and "SM4-CBC" not in out  # not selected
    assert "Basis: CPU time" in out
    assert f"ZUC backend: {zuc.BACKEND}" in out
    assert "] none: OpenSSL 3.0.99 has no SM4-GCM; tongsuo not found" in out  # a note
    assert "] openssl speed -evp sm4-ctr" in out
    data = json.loads(out_json.read_text())
    assert data["zuc_backend"] == zuc.backend_info()
    assert len(data["rows"]) == 5 + 3 * 4  # SM2; CTR, GCM, EEA3 and EIA3 at three sizes
    ctr = [r for r in data["rows"] if r["name"] == "SM4-CTR"]
    assert [r["size"] for r in ctr] == [16, 64, 16384]
    assert all(r["reference"] == pytest.approx(100.0) for r in ctr)
    assert all(r["ratio"] == pytest.approx(r["ours"] / 100.0) for r in ctr)


def test_speed_command_without_reference(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(
        monkeypatch, capfd, "speed", "--seconds", "0.01", "--sizes", "16",
        "--algorithms", "zuc", "--no-reference",
    )  # fmt: skip
    assert code == 0
    assert "ZUC-128 EEA3" in out and "not measured (--no-reference)" in out


@pytest.mark.parametrize(
    "args",
    [
        ("--sizes", "0"),
        ("--sizes", "abc"),
        ("--algorithms", "des"),
        ("--seconds", "0"),
        ("--rounds", "0"),
    ],
)
def test_speed_command_bad_options(
    args: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(monkeypatch, capfd, "speed", "--no-reference", *args)
    assert code == 2 and "error" in err


def test_zuc_backend_named_when_forced_to_python(tmp_path: Path) -> None:
    """`mstcrypt speed` says which ZUC backend is active, including the forced fallback."""
    import subprocess

    env = dict(os.environ, MSTCRYPT_ZUC_BACKEND="python", COLUMNS="200")
    p = subprocess.run(
        [sys.executable, "-m", "mstcrypt", "speed", "--seconds", "0.01", "--sizes", "16",
         "--algorithms", "zuc", "--no-reference"],
        env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "ZUC backend: python: forced by MSTCRYPT_ZUC_BACKEND=python" in p.stdout

"""Encrypted mail throughput (apps.mail): messages/s for sign+envelope (compose) and for
open (decrypt, verify, check the signer), at 10 KB and 10 MB attachments, next to
GmSSL's ``cmssign`` + ``cmsencrypt`` (and ``cmsdecrypt`` + ``cmsverify``) doing the same
work on the same content in the same run, all on CPU time (ours: this process; GmSSL:
its child processes, start-up included, as a user of the command line pays it).

    PYTHONPATH=src python bench/bench_mail.py [--sizes 10240,10485760] [--seconds 3]
                                              [--json out.json]

Point MSTCRYPT_GMSSL at the gmssl binary for the reference column (skipped otherwise).
Target: at 10 MB, compose and open within 0.5x of GmSSL's sign+encrypt (their CMS holds
the whole message in memory; ours streams in constant memory and adds MIME and base64).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET = 0.5
KEY_PASS = os.environ.get("BENCH_KEY_PASS", "bench-only")


def _users(tmp: Path) -> dict[str, Any]:
    from mstcrypt import pki
    from mstcrypt.apps.mail import MailIdentity, trust_validator
    from mstcrypt.crypto.sm2 import SM2PrivateKey

    rk = SM2PrivateKey.generate()
    root = pki.Issuer.self_signed(pki.name(CN="Bench Root"), rk.public_key(), rk.sign)
    out: dict[str, Any] = {
        "validator": trust_validator([root.certificate], crls=[root.crl(number=1)])
    }
    for cn in ("alice", "bob"):
        sk, ek = SM2PrivateKey.generate(), SM2PrivateKey.generate()
        addr = f"{cn}@bench.example"
        sc = root.issue(subject=pki.name(CN=cn), public_key=sk.public_key(),
                        profile=pki.Profile.DEVICE_SIGN, subject_alt_names=[addr])  # fmt: skip
        ec = root.issue(subject=pki.name(CN=cn), public_key=ek.public_key(),
                        profile=pki.Profile.DEVICE_ENC, subject_alt_names=[addr])  # fmt: skip
        out[cn] = MailIdentity(addr, sc, sk.sign_digest, ec, ek.decrypt)
        out[f"{cn}_keys"] = (sk, ek)
    return out


def _ours(size: int, seconds: float, tmp: Path, u: dict[str, Any]) -> dict[str, float]:
    from mstcrypt.apps import mail
    from mstcrypt.apps.mail.mime import Attachment, InnerMessage

    att = tmp / f"att-{size}.bin"
    att.write_bytes(os.urandom(size))
    wire = tmp / "wire.eml"

    def compose() -> None:
        inner = InnerMessage(sender=u["alice"].address, to=[u["bob"].address], subject="bench",
                             text="bench", attachments=[Attachment.from_path(att)])  # fmt: skip
        with wire.open("wb") as f:
            mail.compose(f, u["alice"], inner, [u["bob"].encryption_certificate])

    def open_() -> None:
        with wire.open("rb") as f:
            r = mail.open_message(f, u["bob"], validator=u["validator"], save_dir=None)
        assert r.trusted

    out = {}
    for name, fn in (("compose", compose), ("open", open_)):
        n, t0 = 0, time.process_time()
        while True:
            fn()
            n += 1
            if time.process_time() - t0 >= seconds:
                break
        out[name] = n / (time.process_time() - t0)
    return out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _gmssl(size: int, seconds: float, tmp: Path, u: dict[str, Any]) -> dict[str, float] | None:
    exe = os.environ.get("MSTCRYPT_GMSSL") or shutil.which("gmssl")
    if not exe or not Path(exe).is_file():
        return None
    from mstcrypt.formats.keys import dump_private_key

    env = dict(os.environ)
    lib = Path(exe).resolve().parent.parent / "lib"
    env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    files = {}
    for cn in ("alice", "bob"):
        sk, ek = u[f"{cn}_keys"]
        files[f"{cn}.sk"] = tmp / f"{cn}.sk.pem"
        files[f"{cn}.sk"].write_bytes(dump_private_key(sk, password=KEY_PASS))
        files[f"{cn}.ek"] = tmp / f"{cn}.ek.pem"
        files[f"{cn}.ek"].write_bytes(dump_private_key(ek, password=KEY_PASS))
        files[f"{cn}.sc"] = tmp / f"{cn}.sc.pem"
        files[f"{cn}.sc"].write_bytes(u[cn].sign_certificate.pem)
        files[f"{cn}.ec"] = tmp / f"{cn}.ec.pem"
        files[f"{cn}.ec"].write_bytes(u[cn].encryption_certificate.pem)
    content = tmp / "content.bin"
    content.write_bytes(os.urandom(size))
    s, e, d, v = (tmp / x for x in ("s.pem", "e.pem", "d.pem", "v.bin"))

    def run(*args: str) -> None:
        subprocess.run([exe, *args], env=env, check=True, capture_output=True)

    def compose() -> None:
        run("cmssign", "-key", str(files["alice.sk"]), "-pass", KEY_PASS, "-cert",
            str(files["alice.sc"]), "-in", str(content), "-out", str(s))  # fmt: skip
        run("cmsencrypt", "-rcptcert", str(files["bob.ec"]), "-rcptcert",
            str(files["alice.ec"]), "-in", str(s), "-out", str(e))  # fmt: skip

    def open_() -> None:
        run("cmsdecrypt", "-key", str(files["bob.ek"]), "-pass", KEY_PASS, "-cert",
            str(files["bob.ec"]), "-in", str(e), "-out", str(d))  # fmt: skip
        run("cmsverify", "-in", str(d), "-out", str(v))

    out = {}
    for name, fn in (("compose", compose), ("open", open_)):
        n, c0, w0 = 0, _children_cpu(), time.monotonic()
        while True:
            fn()
            n += 1
            if time.monotonic() - w0 >= seconds:
                break
        out[name] = n / max(_children_cpu() - c0, 1e-9)
    return out


def child_rss(mib: int) -> dict[str, Any]:
    """Compose and open a message with a ``mib`` MiB attachment; peak RSS of this
    process (it holds neither the attachment nor the message whole)."""
    from mstcrypt.apps import mail
    from mstcrypt.apps.mail.mime import Attachment, InnerMessage

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        u = _users(tmp)
        att = tmp / "big.bin"
        block = os.urandom(1 << 20)
        with att.open("wb") as f:
            for _ in range(mib):
                f.write(block)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.process_time()
        inner = InnerMessage(sender=u["alice"].address, to=[u["bob"].address], subject="big",
                             text="big", attachments=[Attachment.from_path(att)])  # fmt: skip
        wire = tmp / "wire.eml"
        with wire.open("wb") as f:
            mail.compose(f, u["alice"], inner, [u["bob"].encryption_certificate])
        t1 = time.process_time()
        with wire.open("rb") as f:
            r = mail.open_message(f, u["bob"], validator=u["validator"], save_dir=tmp / "out")
        t2 = time.process_time()
        assert r.trusted and (tmp / "out" / "big.bin").stat().st_size == mib << 20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"mib": mib, "wire_mib": wire.stat().st_size / (1 << 20),
                "compose_s": t1 - t0, "open_s": t2 - t1,
                "rss_before_kib": base, "rss_peak_kib": peak}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10240,10485760")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json")
    ap.add_argument("--rss-mib", type=int, default=0,
                    help="Also compose+open an attachment of this many MiB in a child "
                    "process and report its peak RSS (e.g. 200).")  # fmt: skip
    ap.add_argument("--child-rss", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_rss:
        print(json.dumps(child_rss(args.child_rss)))
        return 0
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        u = _users(tmp)
        print(f"{'size':>10} {'op':>8} {'ours msg/s':>11} {'gmssl msg/s':>12} {'ratio':>6}")
        for size in (int(x) for x in args.sizes.split(",")):
            ours = _ours(size, args.seconds, tmp, u)
            ref = _gmssl(size, args.seconds, tmp, u)
            for op in ("compose", "open"):
                r = ref[op] if ref else None
                ratio = ours[op] / r if r else None
                results.append(
                    {"size": size, "op": op, "ours": ours[op], "gmssl": r, "ratio": ratio}
                )
                ref_s = f"{r:.1f}" if r else "n/a"
                ratio_s = f"{ratio:.2f}" if ratio else "n/a"
                print(f"{size:>10} {op:>8} {ours[op]:>11.1f} {ref_s:>12} {ratio_s:>6}")
    big = [x for x in results if x["size"] >= 1 << 20 and x["ratio"] is not None]
    if big:
        met = all(x["ratio"] >= TARGET for x in big)
        print(f"target >= {TARGET}x GmSSL at >= 1 MiB: {'met' if met else 'MISSED'}")
    if args.rss_mib:
        p = subprocess.run([sys.executable, __file__, "--child-rss", str(args.rss_mib)],
                           capture_output=True, text=True, check=True)  # fmt: skip
        rss = json.loads(p.stdout.strip().splitlines()[-1])
        peak, before = rss["rss_peak_kib"] / 1024, rss["rss_before_kib"] / 1024
        print(f"{rss['mib']} MiB attachment ({rss['wire_mib']:.0f} MiB on the wire): compose "
              f"{rss['compose_s']:.1f} s, open {rss['open_s']:.1f} s CPU; peak RSS "
              f"{peak:.0f} MiB (before: {before:.0f})")  # fmt: skip
        results.append({"rss": rss})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    io.DEFAULT_BUFFER_SIZE = 1 << 16
    sys.exit(main())

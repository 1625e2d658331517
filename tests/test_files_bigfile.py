"""A file of MSTCRYPT_BIGFILE_GIB GiB (default 2) streamed through encrypt and decrypt in
constant memory: the plaintext comes from a generator (never written to disk), the
ciphertext goes to a file, and decryption streams into a hashing sink. The work runs in
a child process whose peak RSS must stay under 64 MiB. The peak is the child's VmHWM
(Linux): ru_maxrss, of the child or RUSAGE_CHILDREN, would also count the pytest
process's pages, as Linux carries the maximum across fork and execve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LIMIT_MIB = 64

CHILD = textwrap.dedent(
    """
    import hashlib, io, json, os, resource, sys, time
    from mstcrypt.apps import files
    from mstcrypt.module import KeyUsage, SoftToken

    size, workdir = int(sys.argv[1]), sys.argv[2]

    def vmhwm():
        # peak RSS of this process image (Linux); ru_maxrss also counts the parent's
        # pages when it was forked from a big process (it survives fork and execve)
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None
    MIB = 1 << 20

    class Generated(io.RawIOBase):
        # size bytes: a random 1 MiB block, each copy stamped with its index
        def __init__(self, size):
            self.left, self.block, self.index = size, os.urandom(MIB), 0
            self.cur = memoryview(b"")
            self.sha = hashlib.sha256()
        def readable(self):
            return True
        def read(self, n=-1):
            n = self.left if n < 0 else min(n, self.left)
            out = []
            while n:
                if not self.cur:
                    self.cur = memoryview(self.index.to_bytes(8, "big") + self.block[8:])
                    self.index += 1
                take = min(n, len(self.cur))
                out.append(self.cur[:take])
                self.cur, n, self.left = self.cur[take:], n - take, self.left - take
            data = b"".join(out)
            self.sha.update(data)
            return data

    class HashSink:
        def __init__(self):
            self.sha, self.n = hashlib.sha256(), 0
        def write(self, b):
            self.sha.update(b)
            self.n += len(b)
            return len(b)

    tok = SoftToken.init(os.path.join(workdir, "t.tok"), "123456", "admin-code-1",
                         iterations=100_000)
    tok.create_container("me")
    h = tok.generate_key_pair("me", KeyUsage.ENCRYPT, escrowed=False)
    path = os.path.join(workdir, "big.mst")
    gen = Generated(size)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        files.encrypt(gen, f, [h.public_key])
    t1 = time.perf_counter()
    sink = HashSink()
    with open(path, "rb") as f:
        n = files.decrypt(f, sink, tok, h)
    t2 = time.perf_counter()
    with open(path, "rb") as f:  # random access at the far end of the file
        tail = files.open_range(f, tok, h, offset=size - 100, length=1000)
    print(json.dumps({
        "plain_sha256": gen.sha.hexdigest(), "decrypted_sha256": sink.sha.hexdigest(),
        "decrypted": n, "sink": sink.n, "ciphertext": os.path.getsize(path), "tail": len(tail),
        "encrypt_s": t1 - t0, "decrypt_s": t2 - t1,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vmhwm_kib": vmhwm(),
    }))
    """
)


@pytest.mark.slow
def test_big_file_streams_in_constant_memory(tmp_path: Path) -> None:
    gib = float(os.environ.get("MSTCRYPT_BIGFILE_GIB", "2"))
    size = int(gib * (1 << 30))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(size), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["decrypted"] == r["sink"] == size
    assert r["decrypted_sha256"] == r["plain_sha256"]
    chunks = -(-size // 65536)
    assert size + 16 * chunks < r["ciphertext"] < size + 16 * chunks + 400
    assert r["tail"] == 100
    peak_mib = (r["vmhwm_kib"] or r["maxrss_kib"]) / 1024
    print(
        f"\n{gib:g} GiB: encrypt {r['encrypt_s']:.1f} s, decrypt {r['decrypt_s']:.1f} s, "
        f"peak RSS {peak_mib:.1f} MiB"
    )
    assert peak_mib < LIMIT_MIB

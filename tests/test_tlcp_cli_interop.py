"""TLCP interoperability through the command line, as a user types it.

``mstcrypt tlcp-client`` / ``mstcrypt tlcp-server`` run as subprocesses against
``gmssl tlcp_server`` / ``gmssl tlcp_client`` (GmSSL 3.3) and ``tongsuo s_server
-enable_ntls`` / ``tongsuo s_client -enable_ntls -ntls`` (Tongsuo 8.5): both directions
× 4 suites × with and without client authentication × both peers, each cell once with
the default options (no ``--compat``: the client's ``auto``, the server's liberal
acceptance) and once with the peer's profile named (``--compat gmssl|tongsuo``).

Point ``MSTCRYPT_GMSSL`` / ``MSTCRYPT_TONGSUO`` at the binaries (or put ``gmssl`` /
``tongsuo`` on PATH); without them the tests skip and say so. One peer server (or one
``mstcrypt tlcp-server``) per client-authentication mode and profile serves every
suite. Certificates come from mstcrypt.pki; every key file is password-protected PKCS#8:
in the default ``--pass-scheme`` (gmssl) for mstcrypt and GmSSL, in the openssl scheme
for Tongsuo (no one form is read by both peers: test_password_protected_key_forms).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mstcrypt.formats.keys import dump_private_key
from mstcrypt.protocols.tlcp import CipherSuite
from mstcrypt.protocols.tlcp.testing import TestPKI

PASS = "cli-interop-pass"
HOST = "localhost"
MSTCRYPT = str(Path(sys.executable).parent / "mstcrypt")

GMSSL_NAMES = {
    CipherSuite.ECC_SM4_CBC_SM3: "TLS_ECC_SM4_CBC_SM3",
    CipherSuite.ECC_SM4_GCM_SM3: "TLS_ECC_SM4_GCM_SM3",
    CipherSuite.ECDHE_SM4_CBC_SM3: "TLS_ECDHE_SM4_CBC_SM3",
    CipherSuite.ECDHE_SM4_GCM_SM3: "TLS_ECDHE_SM4_GCM_SM3",
}
TONGSUO_NAMES = {
    CipherSuite.ECC_SM4_CBC_SM3: "ECC-SM2-SM4-CBC-SM3",
    CipherSuite.ECC_SM4_GCM_SM3: "ECC-SM2-SM4-GCM-SM3",
    CipherSuite.ECDHE_SM4_CBC_SM3: "ECDHE-SM2-SM4-CBC-SM3",
    CipherSuite.ECDHE_SM4_GCM_SM3: "ECDHE-SM2-SM4-GCM-SM3",
}
SUITES = list(CipherSuite)
AUTHS = ["auth-none", "auth-required"]
COMPATS = ["default", "peer-profile"]
TIMEOUT = 60


def _tool(env: str, name: str) -> str | None:
    path = os.environ.get(env) or shutil.which(name)
    return path if path and Path(path).is_file() else None


GMSSL = _tool("MSTCRYPT_GMSSL", "gmssl")
TONGSUO = _tool("MSTCRYPT_TONGSUO", "tongsuo")
PEERS = [
    pytest.param(
        "gmssl",
        marks=pytest.mark.skipif(
            GMSSL is None,
            reason="GmSSL not available: build it outside the repository and set "
            "MSTCRYPT_GMSSL=/path/to/bin/gmssl",
        ),
    ),
    pytest.param(
        "tongsuo",
        marks=pytest.mark.skipif(
            TONGSUO is None,
            reason="Tongsuo not available: build it outside the repository and set "
            "MSTCRYPT_TONGSUO=/path/to/bin/tongsuo",
        ),
    ),
]
pytestmark = pytest.mark.skipif(
    not Path(MSTCRYPT).is_file(), reason="the mstcrypt console script is not installed"
)


def peer_env(tool: str) -> dict[str, str]:
    env = dict(os.environ)
    root = Path(tool).resolve().parent.parent
    libs = [str(root / d) for d in ("lib", "lib64") if (root / d).is_dir()]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")])
    return env


def mst_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env["PATH"] = f"{Path(MSTCRYPT).parent}:{env.get('PATH', '')}"
    env["COLUMNS"] = "200"  # one line per message on stderr
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- files ----------------------------------------------------------------------------


@dataclass
class Files:
    dir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.dir / name)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """Root CA, server and client dual certificates. Keys: password-protected PKCS#8,
    in the default scheme (gmssl) for mstcrypt and GmSSL (which wants the signing then
    the encryption key in one file), in the openssl scheme for Tongsuo."""
    d = tmp_path_factory.mktemp("tlcp-cli-interop")
    pki = TestPKI("CLI Interop")
    ids = {
        "server": pki.identity(HOST, names=[HOST, "127.0.0.1"]),
        "client": pki.identity("terminal-001", server=False),
    }
    (d / "root.pem").write_bytes(pki.root.pem)
    for who, ident in ids.items():
        sign_key = dump_private_key(ident.sign_key, password=PASS)
        enc_key = dump_private_key(ident.enc_key, password=PASS)
        (d / f"{who}_sign.pem").write_bytes(ident.sign_certificate.pem)
        (d / f"{who}_enc.pem").write_bytes(ident.enc_certificate.pem)
        (d / f"{who}_certs.pem").write_bytes(ident.sign_certificate.pem + ident.enc_certificate.pem)
        (d / f"{who}_sign.key").write_bytes(sign_key)
        (d / f"{who}_enc.key").write_bytes(enc_key)
        (d / f"{who}_keys.pem").write_bytes(sign_key + enc_key)
        # Tongsuo does not read the gmssl scheme (see test_password_protected_key_forms).
        for usage, key in (("sign", ident.sign_key), ("enc", ident.enc_key)):
            pem = dump_private_key(key, password=PASS, scheme="openssl")
            (d / f"{who}_{usage}_openssl.key").write_bytes(pem)
    return Files(d)


# --- long-running processes -------------------------------------------------------------


class Proc:
    """A server process whose output is collected line by line."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.argv = argv
        self.p = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(self, pattern: str, start: int = 0, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                if m := re.search(pattern, line):
                    return m
            if self.p.poll() is not None and not self._t.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not seen from {self.argv[:2]}: {self.output()}")

    def output(self, start: int = 0) -> str:
        return "\n".join(self.lines[start:])[-3000:]

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def wait_listening(port: int, proc: Proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise AssertionError(f"server exited: {proc.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"server did not listen: {proc.output()}")


@pytest.fixture(scope="module")
def servers(files: Files) -> Iterator[dict]:
    """Servers started on first use and shared by the cells of the module."""
    running: dict[tuple[str, ...], tuple[Proc, int]] = {}
    yield running
    for proc, _ in running.values():
        proc.stop()


def peer_server(servers: dict, files: Files, peer: str, auth: str) -> tuple[Proc, int]:
    key = ("peer", peer, auth)
    if key in servers and servers[key][0].p.poll() is None:
        return servers[key]
    port = free_port()
    if peer == "gmssl":
        assert GMSSL is not None
        argv = [GMSSL, "tlcp_server", "-port", str(port), "-cert", files["server_certs.pem"]]
        argv += ["-key", files["server_keys.pem"], "-pass", PASS, "-cacert", files["root.pem"]]
        for s in SUITES:
            argv += ["-cipher_suite", GMSSL_NAMES[s]]
        if auth == "auth-required":
            argv.append("-cert_request")
        proc = Proc(argv, peer_env(GMSSL))
    else:
        assert TONGSUO is not None
        argv = [TONGSUO, "s_server", "-accept", str(port), "-enable_ntls"]
        argv += ["-sign_cert", files["server_sign.pem"]]
        argv += ["-sign_key", files["server_sign_openssl.key"]]
        argv += ["-enc_cert", files["server_enc.pem"], "-enc_key", files["server_enc_openssl.key"]]
        argv += ["-pass", f"pass:{PASS}", "-CAfile", files["root.pem"], "-verify_return_error"]
        argv += ["-rev", "-cipher", ":".join(TONGSUO_NAMES[s] for s in SUITES)]
        if auth == "auth-required":
            argv += ["-Verify", "2"]
        proc = Proc(argv, peer_env(TONGSUO))
    wait_listening(port, proc)
    servers[key] = (proc, port)
    return proc, port


def our_server(servers: dict, files: Files, auth: str, compat: str | None) -> tuple[Proc, int]:
    key = ("ours", auth, compat or "default")
    if key in servers and servers[key][0].p.poll() is None:
        return servers[key]
    argv = [MSTCRYPT, "tlcp-server", "--port", "0", "--echo"]
    argv += ["--cert", files["server_sign.pem"], "--cert", files["server_enc.pem"]]
    argv += ["--key", files["server_sign.key"], "--enc-key", files["server_enc.key"]]
    argv += ["--pass", PASS, "--cacert", files["root.pem"]]
    if auth == "auth-required":
        argv.append("--verify-client")
    if compat:
        argv += ["--compat", compat]
    proc = Proc(argv, mst_env())
    port = int(proc.wait_for(r"listening on [\d.]+:(\d+)").group(1))
    servers[key] = (proc, port)
    return proc, port


def needs_client_cert(suite: CipherSuite, auth: str) -> bool:
    return suite.is_ecdhe or auth == "auth-required"


# === our client → peer server ===========================================================


def our_client_argv(
    files: Files, port: int, suite: CipherSuite, auth: str, compat: str | None, msg: Path
) -> list[str]:
    argv = [MSTCRYPT, "tlcp-client", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--server-name", HOST, "--cacert", files["root.pem"], "--cipher-suite", suite.name]
    if needs_client_cert(suite, auth):
        argv += [
            "--client-cert",
            files["client_sign.pem"],
            "--client-cert",
            files["client_enc.pem"],
        ]
        argv += ["--client-key", files["client_sign.key"]]
        argv += ["--client-enc-key", files["client_enc.key"], "--pass", PASS]
    if compat:
        argv += ["--compat", compat]
    return [*argv, "--in", str(msg), "--wait", "1.5", "--timeout", "20"]


def expected_retry(peer: str, suite: CipherSuite, auth: str) -> str | None:
    """What ``--compat auto`` (the default) must find out, from the evidence in
    docs/tlcp.md: GmSSL refuses the SM3 CertificateVerify (and the dual ECC list),
    Tongsuo the vector ClientECDHEParams."""
    if peer == "gmssl" and needs_client_cert(suite, auth):
        return "certificate_verify_form=transcript"
    if peer == "tongsuo" and suite.is_ecdhe:
        return "ecdhe_params_encoding=struct"
    return None


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("auth", AUTHS)
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("peer", PEERS)
def test_mstcrypt_client_to_peer_server(
    files, servers, tmp_path, peer, suite, auth, compat
) -> None:
    proc, port = peer_server(servers, files, peer, auth)
    word = f"{peer}-{suite.name}-{auth}-{compat}"
    msg = tmp_path / "msg"
    msg.write_bytes(f"hello {word}\n".encode())
    argv = our_client_argv(
        files, port, suite, auth, peer if compat == "peer-profile" else None, msg
    )
    p = subprocess.run(argv, env=mst_env(), capture_output=True, timeout=TIMEOUT, check=False)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    assert p.returncode == 0, f"{err[-1500:]}\npeer: {proc.output()}"
    assert f"connected to 127.0.0.1:{port} with {suite.name}" in err, err
    # GmSSL's server echoes; Tongsuo's (-rev) answers each line reversed.
    reply = f"hello {word}" if peer == "gmssl" else f"hello {word}"[::-1]
    assert reply in out, out + err
    retry = expected_retry(peer, suite, auth) if compat == "default" else None
    if retry is None:
        assert "compat auto" not in err, err
    else:
        assert "retrying once" in err and f"succeeded with {retry}" in err, err


# === peer client → our server ===========================================================


def gmssl_client(files: Files, port: int, suite: CipherSuite, auth: str, msg: Path):
    assert GMSSL is not None
    argv = [GMSSL, "tlcp_client", "-host", HOST, "-port", str(port)]
    argv += ["-cipher_suite", GMSSL_NAMES[suite], "-cacert", files["root.pem"], "-in", str(msg)]
    if suite.is_ecdhe:  # dual certificates, both keys in one file
        argv += ["-cert", files["client_certs.pem"], "-key", files["client_keys.pem"]]
        argv += ["-pass", PASS]
    elif auth == "auth-required":  # GmSSL's client sends the signing chain with ECC
        argv += ["-cert", files["client_sign.pem"], "-key", files["client_sign.key"]]
        argv += ["-pass", PASS]
    p = subprocess.run(argv, env=peer_env(GMSSL), capture_output=True, timeout=TIMEOUT)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def tongsuo_client(
    files: Files, port: int, suite: CipherSuite | None, auth: str, msg: Path
) -> tuple[int | None, str, str]:
    """s_client reading from a pipe kept open until the echo arrives (it quits at the end
    of its input, which could be before the answer)."""
    assert TONGSUO is not None
    argv = [TONGSUO, "s_client", "-connect", f"127.0.0.1:{port}", "-enable_ntls", "-ntls"]
    if suite is not None:  # else Tongsuo's default list: ECC-GCM, ECDHE-GCM, ECC-CBC, ...
        argv += ["-cipher", TONGSUO_NAMES[suite]]
    argv += ["-CAfile", files["root.pem"], "-verify_return_error", "-servername", HOST]
    if suite is not None and needs_client_cert(suite, auth):
        argv += ["-sign_cert", files["client_sign.pem"]]
        argv += ["-sign_key", files["client_sign_openssl.key"]]
        argv += ["-enc_cert", files["client_enc.pem"], "-enc_key", files["client_enc_openssl.key"]]
        argv += ["-pass", f"pass:{PASS}"]
    proc = subprocess.Popen(
        argv,
        env=peer_env(TONGSUO),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out: list[bytes] = []
    err: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, b"")), daemon=True),
        threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, b"")), daemon=True),
    ]
    for t in threads:
        t.start()
    data = msg.read_bytes()
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.flush()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if any(data.strip() in line for line in out):
            break
        time.sleep(0.02)
    proc.stdin.close()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for t in threads:
        t.join(5)
    return (
        proc.returncode,
        b"".join(out).decode(errors="replace"),
        b"".join(err).decode(errors="replace"),
    )


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("auth", AUTHS)
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("peer", PEERS)
def test_peer_client_to_mstcrypt_server(
    files, servers, tmp_path, peer, suite, auth, compat
) -> None:
    proc, port = our_server(servers, files, auth, peer if compat == "peer-profile" else None)
    start = len(proc.lines)
    word = f"{peer}-{suite.name}-{auth}-{compat}"
    msg = tmp_path / "msg"
    msg.write_bytes(f"hello {word}\n".encode())
    run = gmssl_client if peer == "gmssl" else tongsuo_client
    rc, out, err = run(files, port, suite, auth, msg)
    assert f"hello {word}" in out, f"rc={rc}\n{out[-1500:]}\n{err[-1500:]}\n{proc.output(start)}"
    assert rc == 0, f"{err[-1500:]}\n{proc.output(start)}"
    who = "CN=terminal-001" if needs_client_cert(suite, auth) else "anonymous"
    line = proc.wait_for(r"connection from \S+ (\S+) (.*)$", start)
    assert line.group(1) == suite.name, proc.output(start)
    assert who in line.group(2), proc.output(start)
    assert "handshake with" not in proc.output(start), proc.output(start)


@pytest.mark.skipif(TONGSUO is None, reason="Tongsuo not available (MSTCRYPT_TONGSUO)")
def test_tongsuo_client_without_certificates_and_default_suites(files, servers, tmp_path):
    """``tongsuo s_client -ntls`` without certificates or -cipher offers ECC-GCM first and
    ECDHE too; ``mstcrypt tlcp-server --compat tongsuo`` follows the client's order (as
    Tongsuo's server does) and serves it ECC-GCM."""
    proc, port = our_server(servers, files, "auth-none", "tongsuo")
    start = len(proc.lines)
    msg = tmp_path / "msg"
    msg.write_bytes(b"hello without certificates\n")
    rc, out, err = tongsuo_client(files, port, None, "auth-none", msg)
    assert rc == 0, err[-800:]
    assert "hello without certificates" in out, f"{out[-1500:]}\n{err[-800:]}\n{proc.output()}"
    line = proc.wait_for(r"connection from \S+ (\S+) (.*)$", start)
    assert line.group(1) == "ECC_SM4_GCM_SM3" and line.group(2) == "anonymous"


# === password-protected keys ==============================================================


@pytest.mark.skipif(
    GMSSL is None or TONGSUO is None,
    reason="needs both GmSSL and Tongsuo (MSTCRYPT_GMSSL, MSTCRYPT_TONGSUO)",
)
def test_password_protected_key_forms(tmp_path) -> None:
    """Which encrypted PKCS#8 form each peer reads, from keys written by
    ``mstcrypt sm2 keygen --pass``: GmSSL reads only PBKDF2-HMAC-SM3 (OID
    1.2.156.10197.1.401.2) with SM4-CBC — the gmssl scheme, our default; Tongsuo does not
    know that PRF OID (its hmacWithSM3 is 1.2.156.10197.1.401.3.1, GM/T 0091) and reads
    the openssl scheme, which GmSSL cannot read. So no one form serves both, and the
    default stays gmssl; mstcrypt reads all of them."""
    assert GMSSL is not None and TONGSUO is not None
    msg = tmp_path / "m.txt"
    msg.write_bytes(b"hello\n")
    readable = {}
    for scheme in (None, "gmssl", "openssl"):
        key = tmp_path / f"k_{scheme}.pem"
        argv = [MSTCRYPT, "sm2", "keygen", "--out", str(key), "--pass", PASS]
        if scheme:
            argv += ["--pass-scheme", scheme]
        subprocess.run(argv, env=mst_env(), check=True, capture_output=True, timeout=TIMEOUT)
        g = subprocess.run(
            [GMSSL, "sm2sign", "-key", str(key), "-pass", PASS, "-in", str(msg)],
            env=peer_env(GMSSL),
            capture_output=True,
            timeout=TIMEOUT,
        )
        t = subprocess.run(
            [TONGSUO, "pkey", "-in", str(key), "-passin", f"pass:{PASS}", "-noout"],
            env=peer_env(TONGSUO),
            capture_output=True,
            timeout=TIMEOUT,
        )
        readable[scheme] = (g.returncode == 0, t.returncode == 0)
        if scheme == "openssl":
            assert b"unsupported" not in t.stderr
        # A wrong password is refused by the peer that reads the form.
        if readable[scheme][0]:
            bad = subprocess.run(
                [GMSSL, "sm2sign", "-key", str(key), "-pass", "wrong", "-in", str(msg)],
                env=peer_env(GMSSL),
                capture_output=True,
                timeout=TIMEOUT,
            )
            assert bad.returncode != 0
    assert readable == {
        None: (True, False),  # the default is the gmssl scheme
        "gmssl": (True, False),
        "openssl": (False, True),
    }
    # Tongsuo's own SM3/SM4 form (hmacWithSM3 1.2.156.10197.1.401.3.1) is refused by
    # GmSSL and read by mstcrypt.
    plain = subprocess.run(
        [TONGSUO, "pkey", "-in", str(tmp_path / "k_openssl.pem"), "-passin", f"pass:{PASS}"],
        env=peer_env(TONGSUO),
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout
    sm_form = tmp_path / "k_tongsuo_sm.pem"
    subprocess.run(
        [
            *(TONGSUO, "pkcs8", "-topk8", "-v2", "sm4-cbc", "-v2prf", "hmacWithSM3"),
            *("-passout", f"pass:{PASS}", "-out", str(sm_form)),
        ],
        env=peer_env(TONGSUO),
        input=plain,
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    )
    g = subprocess.run(
        [GMSSL, "sm2sign", "-key", str(sm_form), "-pass", PASS, "-in", str(msg)],
        env=peer_env(GMSSL),
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert g.returncode != 0
    pub = subprocess.run(
        [MSTCRYPT, "sm2", "pubout", "--key", str(sm_form), "--pass", PASS],
        env=mst_env(),
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert pub.returncode == 0 and b"PUBLIC KEY" in pub.stdout, pub.stderr


# === the commands of docs/tlcp.md, as written ============================================

DOC = Path(__file__).resolve().parents[1] / "docs" / "tlcp.md"
DOC_PASS = "secret123"


def doc_commands() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- cli-interop-commands -->\n```sh\n(.*?)```", text, re.S)
    assert block, "docs/tlcp.md lost its cli-interop-commands block"
    return [
        line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")
    ]


@pytest.mark.skipif(
    GMSSL is None or TONGSUO is None,
    reason="needs both GmSSL and Tongsuo (MSTCRYPT_GMSSL, MSTCRYPT_TONGSUO)",
)
def test_doc_commands_run_as_written(tmp_path: Path) -> None:
    """The one-cell-per-direction block of docs/tlcp.md runs as written (``gmssl``,
    ``tongsuo`` and ``mstcrypt`` on PATH, the files it names in the working directory):
    each client command succeeds and the message crosses."""
    assert GMSSL is not None and TONGSUO is not None
    lines = doc_commands()
    ports = sorted({int(m) for line in lines for m in re.findall(r"(?:port|accept) (\d+)", line)})
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} (used by docs/tlcp.md) is busy")
    pki = TestPKI("Doc")
    ids = {
        "server": pki.identity(HOST, names=[HOST, "127.0.0.1"]),
        "client": pki.identity("terminal-001", server=False),
    }
    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    for who, ident in ids.items():
        keys = {"sign": ident.sign_key, "enc": ident.enc_key}
        certs = {"sign": ident.sign_certificate, "enc": ident.enc_certificate}
        both = b""
        for usage in ("sign", "enc"):
            (tmp_path / f"{who}_{usage}.pem").write_bytes(certs[usage].pem)
            pem = dump_private_key(keys[usage], password=DOC_PASS)
            (tmp_path / f"{who}_{usage}.key").write_bytes(pem)
            both += pem
            ts = dump_private_key(keys[usage], password=DOC_PASS, scheme="openssl")
            (tmp_path / f"{who}_{usage}_openssl.key").write_bytes(ts)
        (tmp_path / f"{who}_keys.pem").write_bytes(both)
        (tmp_path / f"{who}_certs.pem").write_bytes(certs["sign"].pem + certs["enc"].pem)
    message = "hello from the docs"
    (tmp_path / "msg.txt").write_text(message + "\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, target in (("gmssl", GMSSL), ("tongsuo", TONGSUO), ("mstcrypt", MSTCRYPT)):
        (bindir / name).symlink_to(Path(target).resolve() if name != "mstcrypt" else target)
    env = mst_env()
    env["PATH"] = f"{bindir}:{env['PATH']}"
    libs = [peer_env(t)["LD_LIBRARY_PATH"] for t in (GMSSL, TONGSUO)]
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    server: Proc | None = None
    ran = 0
    try:
        for line in lines:
            if line.endswith("&"):
                if server is not None:
                    server.stop()
                server = Proc(["bash", "-c", "exec " + line[:-1]], env, cwd=tmp_path)
                port = int(re.search(r"(?:port|accept) (\d+)", line).group(1))
                wait_listening(port, server)
                continue
            p = subprocess.run(
                ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, timeout=TIMEOUT
            )
            out = p.stdout.decode(errors="replace")
            err = p.stderr.decode(errors="replace")
            assert server is not None
            assert p.returncode == 0, f"{line}\n{err[-1500:]}\n{server.output()}"
            crossed = message in out or message[::-1] in out
            deadline = time.monotonic() + 10
            while not crossed and time.monotonic() < deadline:
                crossed = message in server.output()
                time.sleep(0.05)
            assert crossed, f"{line}\n{out[-1500:]}\n{err[-800:]}\n{server.output()}"
            ran += 1
    finally:
        if server is not None:
            server.stop()
    assert ran == 4

"""Platform-issued gateway certificates checked by validators this project did not write.

- ``gmssl certverify -tlcp_server -hostname`` and ``tongsuo verify -x509_strict -purpose
  sslserver -verify_hostname`` (and OpenSSL 3's ``openssl verify``, one link at a time
  because it applies ``-vfyopt distid`` to the leaf only) accept the CA → gateway pair
  the KMC issues through its service layer, as an enrollment does, for the names the
  enrollment code authorised — and refuse another name;
- a gateway enrolled through the running platform (HTTP API over TLCP, soft token) and
  served by our :class:`~mstcrypt.apps.tlcp_gateway.gateway.Gateway` on a real socket is
  reachable by ``gmssl tlcp_client`` and ``tongsuo s_client -enable_ntls -ntls`` with
  their host-name checks on, and refused by them for a name it was not issued for.

Peers: ``MSTCRYPT_GMSSL`` / ``MSTCRYPT_TONGSUO`` (or ``gmssl`` / ``tongsuo`` on PATH), as
in test_tlcp_interop.py; without them the tests skip and say so.

Peer behaviour encoded here (docs/platform.md, *Names in certificates*):
- GmSSL 3.3 compares the host name with the **first** dNSName only (byte for byte in
  ``tlcp_client``, ignoring case in ``certverify``) and never with an iPAddress or the
  CN; ``tlcp_client`` checks ``-server_name`` when given, else ``-host``. So the name
  GmSSL clients dial must be the first ``--dns`` of the enrollment code.
- Tongsuo checks every dNSName (``-verify_hostname``) and iPAddress (``-verify_ip``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import PolicyError
from mstcrypt.formats.envelope import open_enveloped_key
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, Certificate, Profile, build_csr, match_hostname, name

NAME = "gw.interop.test"
SECOND = "gw-alt.interop.test"
OTHER = "other.interop.test"
DISTID = "distid:1234567812345678"


def _tool(env: str, names: tuple[str, ...]) -> str | None:
    for candidate in (os.environ.get(env), *(shutil.which(n) for n in names)):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


GMSSL = _tool("MSTCRYPT_GMSSL", ("gmssl",))
TONGSUO = _tool("MSTCRYPT_TONGSUO", ("tongsuo",))
OPENSSL = shutil.which("openssl")
needs_gmssl = pytest.mark.skipif(
    GMSSL is None,
    reason="GmSSL not available: build it outside the repository and set "
    "MSTCRYPT_GMSSL=/path/to/bin/gmssl",
)
needs_tongsuo = pytest.mark.skipif(
    TONGSUO is None,
    reason="Tongsuo not available: build it outside the repository and set "
    "MSTCRYPT_TONGSUO=/path/to/bin/tongsuo",
)


def _env(tool: str) -> dict[str, str]:
    env = dict(os.environ)
    prefix = Path(tool).resolve().parent.parent
    libs = [str(prefix / d) for d in ("lib", "lib64") if (prefix / d).is_dir()]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")])
    return env


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv, env=_env(argv[0]), capture_output=True, timeout=60, check=False, **kw
    )


def output(p: subprocess.CompletedProcess[bytes]) -> str:
    return (p.stdout + p.stderr).decode(errors="replace")


# --- a pair issued by the KMC service layer -------------------------------------------------


@dataclass
class Pair:
    dir: Path
    sign: Certificate
    enc: Certificate
    issuing: Certificate
    root: Certificate

    def f(self, name_: str) -> str:
        return str(self.dir / name_)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """A gateway enrolled at the KMC with a code naming NAME, SECOND and 127.0.0.1."""
    d = tmp_path_factory.mktemp("names-pair")
    kmc = Kmc(Database(f"sqlite:///{d / 'kmc.db'}"), SoftKeyStore(secrets.token_bytes(32)))
    try:
        kmc.create_schema()
        kmc.init_ca(actor="test")
        code, _ = kmc.create_enrollment_code(
            owner="gw-interop",
            subject={"CN": NAME, "O": "Interop Unit"},
            profile=Profile.GATEWAY_SIGN,
            actor="ra",
            dns_names=[NAME, SECOND],
            ip_addresses=["127.0.0.1"],
        )
        key = SM2PrivateKey.generate()
        e = kmc.enroll(code, build_csr(name(CN="gw"), key.public_key(), key.sign).der)
        assert (
            open_enveloped_key(e.enveloped_key, key).public_key()
            == e.encryption_certificate.public_key
        )
        crls = {ca: kmc.crl(ca) for ca in ("issuing", "root")}
    finally:
        kmc.db.dispose()
    issuing, root = e.chain
    p = Pair(d, e.sign_certificate, e.encryption_certificate, issuing, root)
    (d / "root.pem").write_bytes(root.pem)
    (d / "issuing.pem").write_bytes(issuing.pem)
    (d / "sign.pem").write_bytes(p.sign.pem)
    (d / "enc.pem").write_bytes(p.enc.pem)
    (d / "tlcp_chain.pem").write_bytes(p.sign.pem + p.enc.pem + issuing.pem)
    (d / "crls.pem").write_bytes(b"".join(CRL.from_der(der).pem for der in crls.values()))
    (d / "issuing.crl").write_bytes(crls["issuing"])
    return p


def test_pair_names_as_our_validator_sees_them(pair: Pair) -> None:
    for cert in (pair.sign, pair.enc):
        assert cert.subject_alt_name_entries == (
            ("dns", NAME),
            ("dns", SECOND),
            ("ip", "127.0.0.1"),
        )
        assert all(match_hostname(cert, h) for h in (NAME, SECOND, "127.0.0.1"))
        assert not match_hostname(cert, OTHER)


@needs_gmssl
def test_gmssl_certverify_accepts_the_platform_pair(pair: Pair) -> None:
    assert GMSSL is not None
    base = [GMSSL, "certverify", "-tlcp_server", "-in", pair.f("tlcp_chain.pem")]
    base += ["-cacert", pair.f("root.pem")]
    for extra in ((), ("-crl", pair.f("issuing.crl"))):
        p = run([*base, *extra, "-hostname", NAME])
        assert p.returncode == 0 and "Verification success" in output(p), output(p)
    p = run([*base, "-hostname", NAME.upper()])  # certverify compares ignoring case
    assert p.returncode == 0, output(p)
    for wrong in (OTHER, "127.0.0.1", SECOND):
        # GmSSL checks the first dNSName only: SECOND is certified, yet GmSSL refuses it
        p = run([*base, "-hostname", wrong])
        assert p.returncode != 0 and "hostname" in output(p), (wrong, output(p))


@needs_tongsuo
def test_tongsuo_verify_accepts_the_platform_pair(pair: Pair) -> None:
    assert TONGSUO is not None
    base = [TONGSUO, "verify", "-x509_strict", "-purpose", "sslserver"]
    base += ["-CAfile", pair.f("root.pem"), "-untrusted", pair.f("issuing.pem")]
    crl = ["-crl_check_all", "-CRLfile", pair.f("crls.pem")]
    for cert in ("sign.pem", "enc.pem"):
        for check in (
            ["-verify_hostname", NAME],
            ["-verify_hostname", SECOND],
            ["-verify_ip", "127.0.0.1"],
        ):
            p = run([*base, *crl, *check, pair.f(cert)])
            assert p.returncode == 0 and ": OK" in output(p), (cert, check, output(p))
        for check in (["-verify_hostname", OTHER], ["-verify_ip", "127.0.0.2"]):
            p = run([*base, *check, pair.f(cert)])
            assert p.returncode != 0 and "mismatch" in output(p), (cert, check, output(p))


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
def test_openssl_verify_accepts_the_platform_pair(pair: Pair) -> None:
    """OpenSSL 3 applies -vfyopt distid to the leaf only: the gateway certificate is
    checked against the issuing CA (-partial_chain), and that CA against the root."""
    assert OPENSSL is not None
    sm2 = run([OPENSSL, "list", "-signature-algorithms"])
    if "SM2" not in output(sm2):
        pytest.skip("this openssl has no SM2")
    strict = [OPENSSL, "verify", "-x509_strict", "-vfyopt", DISTID]
    p = run([*strict, "-CAfile", pair.f("root.pem"), pair.f("issuing.pem")])
    assert p.returncode == 0, output(p)
    leaf = [*strict, "-purpose", "sslserver", "-partial_chain", "-CAfile", pair.f("issuing.pem")]
    for cert in ("sign.pem", "enc.pem"):
        for check in (
            ["-verify_hostname", NAME],
            ["-verify_hostname", SECOND],
            ["-verify_ip", "127.0.0.1"],
        ):
            p = run([*leaf, *check, pair.f(cert)])
            assert p.returncode == 0 and ": OK" in output(p), (cert, check, output(p))
        p = run([*leaf, "-verify_hostname", OTHER, pair.f(cert)])
        assert p.returncode != 0 and "hostname mismatch" in output(p), output(p)


# --- a gateway enrolled through the running platform, on a real socket ------------------


class GatewayThread:
    """Our Gateway in its own event loop: one listener without client authentication,
    NAME routed to an upstream that echoes one read and closes; any other SNI goes to the
    same upstream (so a peer's refusal can only come from its own host-name check)."""

    def __init__(self, credentials: Any, trust: Any) -> None:
        self.credentials, self.trust = credentials, trust
        self.ready = threading.Event()
        self.port = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GatewayThread:
        self._thread.start()
        assert self.ready.wait(30), "the gateway did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        from mstcrypt.apps.tlcp_gateway.config import GatewayConfig, ListenerConfig, Route
        from mstcrypt.apps.tlcp_gateway.gateway import Gateway

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(4096))
            await writer.drain()
            writer.close()

        upstream = await asyncio.start_server(echo_once, "127.0.0.1", 0)
        up = Route(f"127.0.0.1:{upstream.sockets[0].getsockname()[1]}")
        listener = ListenerConfig(
            port=0, routes={NAME: up}, default=up, match_any_name=True, client_auth="none"
        )
        gw = Gateway(
            GatewayConfig(listeners=[listener]),
            credentials=self.credentials,
            trust_source=lambda: self.trust,
        )
        await gw.start()
        self.port = gw.addresses[0][1]
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            await gw.close()
            upstream.close()


@dataclass
class Enrolled:
    dir: Path
    port: int
    sign: Certificate

    def f(self, name_: str) -> str:
        return str(self.dir / name_)


@pytest.fixture(scope="module")
def enrolled_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enrolled]:
    """A registration officer creates a gateway code naming NAME and 127.0.0.1; the
    gateway enrolls its soft token through the platform's TLCP endpoint; our Gateway
    serves with the token's keys."""
    from mstcrypt.apps.tlcp_gateway.trust import TrustMaterial
    from mstcrypt.cli.platform import running_platform
    from mstcrypt.client import Client
    from mstcrypt.module import SoftToken
    from mstcrypt.protocols.tlcp import Credentials
    from mstcrypt.server.config import Settings
    from platform_helpers import add_operators

    d = tmp_path_factory.mktemp("names-gateway")
    settings = Settings(data_dir=d / "data", checkpoint_seconds=3600, static_operators=True)
    with running_platform(d / "data", settings) as url:
        kmc = settings.kmc()
        try:
            ops = add_operators(kmc)
            root = kmc.chain()[-1]
        finally:
            kmc.db.dispose()
        with Client(url, anchors=[root], operator_token=ops["alice"]) as ra:
            issued = ra.create_enrollment_code(
                "gw-interop",
                {"CN": NAME, "O": "Interop Unit"},
                profile="gateway_sign",
                dns_names=[NAME],
                ip_addresses=["127.0.0.1"],
            )
        assert issued["names"] == [NAME, "127.0.0.1"]
        token = SoftToken.init(d / "gw.tok", "246810", "admin-code-1", iterations=100_000)
        with Client(url, anchors=[root]) as c:
            r = c.enroll(issued["code"], token, container="gateway")
            crls = (c.crl("issuing"), c.crl("root"))
    issuing = r.chain[0]
    (d / "root.pem").write_bytes(root.pem)
    creds = Credentials.from_module(token, "gateway", chain=[issuing])
    with GatewayThread(creds, TrustMaterial((root,), (issuing,), crls)) as gw:
        yield Enrolled(d, gw.port, r.sign_certificate)


def test_enrolled_gateway_names(enrolled_gateway: Enrolled) -> None:
    assert enrolled_gateway.sign.subject_alt_name_entries == (("dns", NAME), ("ip", "127.0.0.1"))


@needs_gmssl
@pytest.mark.parametrize("suite", ["TLS_ECC_SM4_CBC_SM3", "TLS_ECC_SM4_GCM_SM3"])
def test_gmssl_tlcp_client_reaches_the_enrolled_gateway(
    enrolled_gateway: Enrolled, tmp_path: Path, suite: str
) -> None:
    assert GMSSL is not None
    msg = tmp_path / "msg"
    msg.write_bytes(b"hello gateway\n")
    argv = [GMSSL, "tlcp_client", "-host", "127.0.0.1", "-port", str(enrolled_gateway.port)]
    argv += ["-cipher_suite", suite, "-cacert", enrolled_gateway.f("root.pem"), "-in", str(msg)]
    # -server_name is both the SNI and the name GmSSL checks (else it checks -host)
    p = run([*argv, "-server_name", NAME])
    assert p.returncode == 0, output(p)[-1500:]
    assert "hello gateway" in p.stdout.decode(errors="replace"), output(p)[-1500:]
    # the check is on: the same gateway under a name it was not issued for is refused
    p = run([*argv, "-server_name", OTHER])
    assert p.returncode != 0 and "hello gateway" not in p.stdout.decode(errors="replace")


@needs_tongsuo
@pytest.mark.parametrize("suite", ["ECC-SM2-SM4-CBC-SM3", "ECC-SM2-SM4-GCM-SM3"])
def test_tongsuo_s_client_reaches_the_enrolled_gateway(
    enrolled_gateway: Enrolled, suite: str
) -> None:
    assert TONGSUO is not None
    argv = [TONGSUO, "s_client", "-connect", f"127.0.0.1:{enrolled_gateway.port}"]
    argv += ["-enable_ntls", "-ntls", "-cipher", suite, "-CAfile", enrolled_gateway.f("root.pem")]
    argv += ["-servername", NAME, "-verify_return_error", "-ign_eof"]
    for check in (["-verify_hostname", NAME], ["-verify_ip", "127.0.0.1"]):
        p = run([*argv, *check], input=b"hello gateway\n")
        out = p.stdout.decode(errors="replace")
        assert "Verify return code: 0 (ok)" in out, output(p)[-1500:]
        assert "hello gateway" in out.split("---")[-1], output(p)[-1500:]
    p = run([*argv, "-verify_hostname", OTHER], input=b"hello gateway\n")
    assert p.returncode != 0 and "hostname mismatch" in output(p), output(p)[-1500:]


# --- the same from the command line, as a user types it -----------------------------------

ROOT_DIR = Path(__file__).resolve().parents[1]


def mstcrypt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    base.update(PYTHONPATH=str(ROOT_DIR / "src"), COLUMNS="200", NO_COLOR="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "mstcrypt", *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=120,
        check=False,
    )


def test_cli_gateway_enrolled_with_names_serves_them(tmp_path: Path) -> None:
    """``mstcrypt enroll-code`` with --dns/--ip, ``mstcrypt enroll --san --certs-out`` into
    a soft token, ``mstcrypt gateway`` serving from that token; our client (and GmSSL's,
    when present) reaches it by name."""
    from mstcrypt.cli.platform import running_platform
    from mstcrypt.module import SoftToken
    from mstcrypt.pki import load_certificates
    from mstcrypt.protocols.tlcp import TLCPContext
    from mstcrypt.protocols.tlcp.sync import TLCPSocket
    from mstcrypt.server.config import Settings
    from platform_helpers import add_operators

    pin = "246810"
    settings = Settings(data_dir=tmp_path / "data", checkpoint_seconds=3600, static_operators=True)
    with running_platform(tmp_path / "data", settings) as url:
        kmc = settings.kmc()
        try:
            ops = add_operators(kmc)
            root = kmc.chain()[-1]
        finally:
            kmc.db.dispose()
        (tmp_path / "root.pem").write_bytes(root.pem)
        (tmp_path / "ra.session").write_text(ops["alice"] + "\n")
        ra = ["--server", url, "--session", str(tmp_path / "ra.session")]
        ra += ["--ca-file", str(tmp_path / "root.pem"), "--owner", "gw1", "--cn", NAME]
        p = mstcrypt("enroll-code", *ra, "--profile", "gateway_sign")
        assert p.returncode != 0 and "at least one DNS name" in p.stderr, p.stderr
        p = mstcrypt(
            "enroll-code",
            *ra,
            "--profile",
            "gateway_sign",
            "--dns",
            NAME.upper(),
            "--dns",
            SECOND,
            "--ip",
            "127.0.0.1",
        )
        assert p.returncode == 0, p.stderr
        assert f"names {NAME}, {SECOND}, 127.0.0.1" in " ".join(p.stderr.split()), p.stderr
        code = p.stdout.strip()
        token = tmp_path / "gw1.tok"
        SoftToken.init(token, pin, "admin-code-1", iterations=100_000)
        enroll = ["enroll", "--server", url, "--code", code, "--token", str(token), "--pin", pin]
        enroll += ["--container", "gateway", "--ca-file", str(tmp_path / "root.pem")]
        p = mstcrypt(*enroll, "--san", OTHER)
        assert p.returncode != 0 and "does not authorise" in p.stdout + p.stderr
        certs_out, chain_out = tmp_path / "gw1-certs.pem", tmp_path / "gw1-chain.pem"
        p = mstcrypt(
            *enroll, "--san", NAME, "--certs-out", str(certs_out), "--chain-out", str(chain_out)
        )
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"subjectAltName: {NAME}" in p.stdout
    sign, enc, issuing = load_certificates(certs_out.read_bytes())
    assert sign.subject_alt_name_entries == enc.subject_alt_name_entries == (("dns", NAME),)
    assert issuing.is_ca and load_certificates(chain_out.read_bytes())[-1] == root

    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen()

    def echo() -> None:
        while True:
            try:
                conn, _ = upstream.accept()
            except OSError:
                return
            with conn:
                conn.sendall(conn.recv(4096))

    threading.Thread(target=echo, daemon=True).start()
    (tmp_path / "gw1.toml").write_text(
        f"""
[credentials]
token = "gw1.tok"
container = "gateway"
cert = ["gw1-chain.pem"]
[[listeners]]
port = 0
client_auth = "none"
[listeners.routes]
"{NAME}" = "127.0.0.1:{upstream.getsockname()[1]}"
""",
        encoding="utf-8",
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mstcrypt", "gateway", str(tmp_path / "gw1.toml")],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**base, "PYTHONPATH": str(ROOT_DIR / "src"), "MSTCRYPT_PIN": pin},
    )
    try:
        assert proc.stderr is not None
        seen = []
        while not (line := proc.stderr.readline().decode()).startswith("listening on "):
            seen.append(line)
            assert line, "gateway exited: " + "".join(seen)
        port = int(line.rsplit(":", 1)[1])
        ctx = TLCPContext(trust_anchors=[root])
        with TLCPSocket.connect(("127.0.0.1", port), ctx, server_name=NAME, timeout=10) as s:
            s.sendall(b"ping")
            assert s.recv(100) == b"ping"
        if GMSSL is not None:
            msg = tmp_path / "msg"
            msg.write_bytes(b"hello gateway\n")
            argv = [GMSSL, "tlcp_client", "-host", "127.0.0.1", "-port", str(port)]
            argv += ["-server_name", NAME, "-cipher_suite", "TLS_ECC_SM4_GCM_SM3"]
            p2 = run([*argv, "-cacert", str(tmp_path / "root.pem"), "-in", str(msg)])
            assert "hello gateway" in p2.stdout.decode(errors="replace"), output(p2)[-1500:]
    finally:
        proc.terminate()
        proc.wait(15)
        upstream.close()


def test_gateway_token_credentials_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mstcrypt.apps.tlcp_gateway.config import CredentialsConfig, GatewayConfig
    from mstcrypt.errors import KeyStoreError, PinIncorrectError
    from mstcrypt.module import SoftToken

    listener = {"port": 0, "routes": {NAME: "127.0.0.1:1"}, "client_auth": "none"}
    cfg = GatewayConfig.from_dict(
        {"credentials": {"token": "t.tok", "pin_env": "GW_PIN"}, "listeners": [listener]},
        base_dir=tmp_path,
    )
    assert cfg.credentials is not None
    assert cfg.credentials.token == tmp_path / "t.tok" and cfg.credentials.pin_env == "GW_PIN"
    with pytest.raises(PolicyError, match="not both"):
        CredentialsConfig(token=tmp_path / "t.tok", keystore=tmp_path / "ks")
    with pytest.raises(PolicyError, match="a keystore or a token"):
        CredentialsConfig()
    SoftToken.init(tmp_path / "t.tok", "246810", "admin-code-1", iterations=100_000)
    monkeypatch.delenv("GW_PIN", raising=False)
    with pytest.raises(PolicyError, match=r"\$GW_PIN"):
        cfg.credentials.load()
    monkeypatch.setenv("GW_PIN", "000000")
    with pytest.raises(PinIncorrectError):
        cfg.credentials.load()
    monkeypatch.setenv("GW_PIN", "246810")
    with pytest.raises(KeyStoreError, match="no container named 'gateway'"):
        cfg.credentials.load()  # nothing enrolled in the token yet

"""``mstcrypt demo``: start the platform on embedded storage (SQLite) and walk the main
flows end to end over real HTTP, printing what happened."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mstcrypt.cli._common import console
from mstcrypt.cli.platform import cert_table, running_platform


def demo_command(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Keep the platform's data here (default: a fresh temporary directory).",
        ),
    ] = None,
) -> None:
    """Run the platform and show a terminal enrolling, using its keys, losing its device
    and recovering its encryption key under dual control, with the audit chain checked."""
    from mstcrypt.client import Client, ServiceError
    from mstcrypt.module import KeyUsage, SoftToken
    from mstcrypt.server.config import Settings

    tmp = None
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="mstcrypt-demo-")
        data_dir = Path(tmp)
    steps: list[tuple[str, str, str]] = []
    failed = False

    def step(title: str, fn: Callable[[], str]) -> Any:
        nonlocal failed
        t0 = time.perf_counter()
        try:
            detail = fn()
            status = "[green]ok[/green]"
        except Exception as exc:  # the demo reports every failure and goes on
            detail, status, failed = f"{type(exc).__name__}: {exc}", "[red]FAILED[/red]", True
        steps.append((title, status, f"{detail} ({(time.perf_counter() - t0) * 1000:.0f} ms)"))
        console.print(f"  {status} {title}")

    console.print(f"[bold]mstcrypt demo[/bold] — data directory {data_dir}")
    settings = Settings.from_env(data_dir)
    state: dict[str, Any] = {}
    with running_platform(data_dir, settings) as url:
        console_kmc = settings.kmc()  # the administrator's console: same database and SS-CC
        root = console_kmc.chain()[-1]
        (data_dir / "root.pem").write_bytes(root.pem)
        console.print(
            f"platform listening on {url} over TLCP (SQLite at {data_dir / 'mstcrypt.db'}); "
            f"root CA {root.fingerprint[:16]}… preset in every token below"
        )
        public = Client(url, anchors=[root])
        admins: dict[str, Client] = {}

        def new_token(path: Path, pin: str) -> Any:
            return SoftToken.init(
                path,
                pin,
                "admin-unlock-code",
                iterations=100_000,
                overwrite=True,
                anchors=[root.der],
            )

        def operators() -> str:
            roles = {
                "alice": ["registration_officer", "key_recovery_officer"],
                "bob": ["key_recovery_officer"],
                "carol": ["administrator"],
            }
            for op, op_roles in roles.items():
                # `mstcrypt operator add NAME --role ...` at the console: a one-time code
                code, _ = console_kmc.operators.add(op, op_roles, actor="console")
                tok = new_token(data_dir / f"{op}.tok", f"{op}-pin-2468")
                public.enroll(code, tok, container=op)
                session = public.login(tok, container=op)["session_token"]
                admins[op] = Client(url, anchors=[root], operator_token=session)
            return (
                "console registered alice (registration + key recovery), bob (key recovery) "
                "and carol (administrator); each enrolled a token and logged in (§7.3)"
            )

        def health() -> str:
            h = public.health()
            return f"version {h['version']}, CA initialised: {h['ca']}"

        def code() -> str:
            r = admins["alice"].create_enrollment_code(
                "zhang.san",
                {
                    "C": "CN",
                    "O": "Example Government Unit",
                    "OU": "Mobile",
                    "CN": "zhang.san",
                    "email": "zhang.san@example.gov.cn",
                },
                ttl_seconds=600,
            )
            state["code"] = r["code"]
            try:
                admins["alice"].create_enrollment_code("bob", {"CN": "bob"}, ttl_seconds=600)
                raise AssertionError("a code for an operator's name was issued")
            except ServiceError as exc:
                if "operator" not in exc.detail:
                    raise
            return (
                f"alice issued one-time code {r['code']} for zhang.san; a code for operator "
                "bob's name is refused (operators come only from the console)"
            )

        def enroll() -> str:
            tok = new_token(data_dir / "zhang.san.tok", "246810")
            r = public.enroll(state["code"], tok, container="zhang.san")
            state.update(token=tok, enrollment=r)
            console.print(
                cert_table(
                    "dual certificates issued to zhang.san",
                    [r.sign_certificate, r.encryption_certificate, *r.chain],
                )
            )
            return (
                "signing key generated in the soft token; encryption key generated by the "
                "KMC, delivered as SM2EnvelopedKey and imported inside the token"
            )

        def reuse() -> str:
            tok2 = new_token(data_dir / "attacker.tok", "135790")
            try:
                public.enroll(state["code"], tok2, container="x")
            except ServiceError as exc:
                if "already used" not in exc.detail:
                    raise
                return f"second use refused: {exc.detail}"
            raise AssertionError("a used enrollment code was accepted twice")

        def use_keys() -> str:
            tok, r = state["token"], state["enrollment"]
            h = tok.key("zhang.san", KeyUsage.SIGN)
            sig = tok.sign(h, b"official document")
            r.sign_certificate.public_key.verify(sig, b"official document")
            cert = public.recipient_certificate("zhang.san")
            state["ct"] = cert.public_key.encrypt(b"confidential memo for zhang.san")
            pt = tok.decrypt(tok.key("zhang.san", KeyUsage.ENCRYPT), state["ct"])
            assert pt == b"confidential memo for zhang.san"
            return "signed with the token and verified; directory lookup → encrypted → decrypted"

        def openssl() -> str:
            exe = shutil.which("openssl")
            if exe is None:
                return "skipped: openssl not installed"
            r = state["enrollment"]
            d = data_dir / "openssl"
            d.mkdir(exist_ok=True)
            (d / "root.pem").write_bytes(r.chain[-1].pem)
            (d / "issuing.pem").write_bytes(r.chain[0].pem)
            (d / "leaf.pem").write_bytes(r.sign_certificate.pem)
            for leaf, ca in (("leaf.pem", "issuing.pem"), ("issuing.pem", "root.pem")):
                p = subprocess.run(
                    [
                        exe,
                        "verify",
                        "-partial_chain",
                        "-CAfile",
                        str(d / ca),
                        "-vfyopt",
                        "distid:1234567812345678",
                        str(d / leaf),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if p.returncode != 0:
                    raise AssertionError(f"openssl verify {leaf}: {p.stderr.strip()[:200]}")
            return "openssl verify accepts leaf ← issuing CA ← root CA (SM2, distid)"

        def user_login() -> str:
            tok = state["token"]
            r = public.login(tok, container="zhang.san")
            claims = public.session(r["session_token"])
            public.logout(r["session_token"])
            try:
                public.session(r["session_token"])
                raise AssertionError("a logged-out session was still accepted")
            except ServiceError as exc:
                if exc.status != 401:
                    raise
            return (
                f"mutual certificate login as {claims['sub']} (amr {claims['amr']}); "
                "after logout the session token is refused"
            )

        def gateway() -> str:
            import asyncio

            from mstcrypt.apps.tlcp_gateway.config import GatewayConfig, ListenerConfig, Route
            from mstcrypt.apps.tlcp_gateway.gateway import Gateway
            from mstcrypt.apps.tlcp_gateway.trust import TrustMaterial
            from mstcrypt.protocols.tlcp import CipherSuite, Credentials, TLCPContext, aio

            code = admins["alice"].create_enrollment_code(
                "gw.example.gov.cn",
                {"O": "Example Government Unit", "CN": "gw.example.gov.cn"},
                profile="gateway_sign",
                ttl_seconds=600,
                dns_names=["gw.example.gov.cn"],
            )["code"]
            gw_tok = new_token(data_dir / "gateway.tok", "gateway-pin-1")
            gw_enr = public.enroll(code, gw_tok, container="gateway")
            issuing, root = gw_enr.chain
            crls = (public.crl("issuing"), public.crl("root"))

            async def internal_service(reader: Any, writer: Any) -> None:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                who = next(
                    (
                        line.split(":", 1)[1].strip()
                        for line in head.split("\r\n")
                        if line.lower().startswith("x-mst-client-subject:")
                    ),
                    "?",
                )
                body = f"hello {who}".encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close"
                    b"\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                writer.close()

            async def run() -> str:
                upstream = await asyncio.start_server(internal_service, "127.0.0.1", 0)
                up = upstream.sockets[0].getsockname()
                config = GatewayConfig(
                    listeners=[
                        ListenerConfig(
                            port=0,
                            routes={"gw.example.gov.cn": Route(f"127.0.0.1:{up[1]}", "http")},
                        )
                    ]
                )
                gw = Gateway(
                    config,
                    credentials=Credentials.from_module(gw_tok, "gateway", chain=[issuing]),
                    trust_source=lambda: TrustMaterial((root,), (issuing,), crls),
                )
                await gw.start()
                host, port = gw.addresses[0]
                ctx = TLCPContext(
                    credentials=Credentials.from_module(
                        state["token"], "zhang.san", chain=[issuing]
                    ),
                    trust_anchors=[root],
                    intermediates=[issuing],
                    crls=list(crls),
                )
                r, w = await aio.open_connection(host, port, ctx, server_name="gw.example.gov.cn")
                w.write(
                    b"GET /oa/inbox HTTP/1.1\r\nHost: oa.internal\r\n"
                    b"X-MST-Client-Subject: forged\r\n\r\n"
                )
                await w.drain()
                reply = await r.read(65536)
                suite = CipherSuite(w.get_extra_info("cipher_suite")).name
                w.close()
                await gw.close()
                upstream.close()
                body = reply.split(b"\r\n\r\n", 1)[-1].decode()
                return f"{suite}: {body}"

            out = asyncio.run(run())
            assert "zhang.san" in out and "forged" not in out, out
            names = ", ".join(gw_enr.sign_certificate.dns_names)
            return (
                f"gateway enrolled with a code naming DNS:{names} (subjectAltName, checked "
                "by the terminal under RFC 6125); terminal → TLCP gateway (dual "
                f"certificates, client auth) → internal HTTP service; {out}"
            )

        def recovery() -> str:
            import base64

            key_id = state["enrollment"].key_id
            new_token_ = new_token(data_dir / "zhang.san-new.tok", "112233")
            new_token_.create_container("zhang.san")
            h = new_token_.generate_key_pair("zhang.san", KeyUsage.SIGN)
            rid = admins["alice"].request_recovery(key_id, h.public_key.to_bytes(), "device lost")
            try:
                admins["alice"].approve_recovery(rid, h.public_key.fingerprint().hex())
                raise AssertionError("the requester approved her own request")
            except ServiceError as exc:
                if "dual control" not in exc.detail:
                    raise
            review = admins["bob"].recovery(rid)
            assert review["requested_by"] == "alice" and review["owner"] == "zhang.san"
            done = admins["bob"].approve_recovery(rid, review["recipient_fingerprint"])
            env = base64.b64decode(done["enveloped_key"])
            new_token_.import_enveloped_key("zhang.san", env)
            pt = new_token_.decrypt(new_token_.key("zhang.san", KeyUsage.ENCRYPT), state["ct"])
            assert pt == b"confidential memo for zhang.san"
            return (
                "alice requested, her own approval refused; bob reviewed requester, reason and "
                f"recipient {review['recipient_fingerprint'][:16]}… and approved → new token "
                "decrypts"
            )

        def revoke() -> str:
            r = state["enrollment"]
            admins["alice"].revoke_certificate(f"{r.sign_certificate.serial:x}", "key_compromise")
            crl = public.crl()
            assert crl.is_revoked(r.sign_certificate.serial)
            assert crl.is_revoked(r.encryption_certificate.serial)
            _, status = public.certificate(f"{r.encryption_certificate.serial:x}")
            return (
                f"lost device: both certificates of the pair revoked; CRL #{crl.number} lists "
                f"them (encryption certificate: {status}); the holder's KDK and groups rekeyed"
            )

        def audit() -> str:
            admins["carol"]._json("POST", "/admin/audit/checkpoint")
            v = admins["carol"].verify_audit()  # the endpoint's bounded incremental check
            assert v["ok"] and v["complete"] and v["anchor_seq"], v
            return (
                f"{v['head_seq']} hash-chained records; the signed checkpoint at record "
                f"{v['anchor_seq']} verified and the {v['records']} records after it "
                "re-hashed (the full check: mstcrypt audit verify)"
            )

        def kats() -> str:
            from mstcrypt.selftest import FAIL, run_all

            results = run_all()
            bad = [r for r in results if r.status == FAIL]
            if bad:
                raise AssertionError(f"{len(bad)} known-answer tests failed: {bad[0].name}")
            return f"{len(results)} known-answer tests (SM2, SM3, SM4, ZUC, formats, OpenSSL)"

        step("power-on self test", kats)
        step("platform health", health)
        step("console registers operators; they enroll and log in", operators)
        step("registration officer creates an enrollment code", code)
        step("terminal enrolls with its soft token", enroll)
        step("enrollment code cannot be reused", reuse)
        step("terminal signs and decrypts with its keys", use_keys)
        step("OpenSSL CLI verifies the issued chain", openssl)
        step("terminal logs in with its certificate", user_login)
        step("terminal reaches an internal service through the TLCP gateway", gateway)
        step("lost device: key recovery under dual control", recovery)
        step("revocation published in the CRL", revoke)
        step("audit chain verifies", audit)
        for c in (*admins.values(), public):
            c.close()
        console_kmc.db.dispose()
    t = Table(title="demo summary")
    for col in ("step", "result", "detail"):
        t.add_column(col)
    for row in steps:
        t.add_row(*row)
    console.print(t)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        raise typer.Exit(1)

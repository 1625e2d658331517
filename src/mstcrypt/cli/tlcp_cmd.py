"""``mstcrypt tlcp-server | tlcp-client | gateway | tunnel``: TLCP endpoints (options like
GmSSL's ``tlcp_server`` / ``tlcp_client``), the mobile access gateway and the terminal's
local port forwarder. These functions are typer commands; ``mstcrypt.cli`` registers them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mstcrypt.cli._common import EXIT_INVALID, err_console, fail, open_token, read_input
from mstcrypt.errors import MstCryptError
from mstcrypt.protocols.tlcp import (
    CipherSuite,
    ClientAuth,
    Credentials,
    TLCPContext,
    TLCPError,
    aio,
)

__all__ = [
    "gateway_command",
    "tlcp_client_command",
    "tlcp_server_command",
    "tunnel_command",
]

CertOpt = Annotated[
    list[str],
    typer.Option(
        "--cert",
        help="PEM certificate file(s): signing certificate, encryption certificate, then the "
        "CA chain (one bundle or several files, repeatable).",
    ),
]
KeyOpt = Annotated[str, typer.Option("--key", help="Signing private key (PEM PKCS#8).")]
EncKeyOpt = Annotated[str, typer.Option("--enc-key", help="Encryption private key (PEM).")]
PassOpt = Annotated[
    str | None,
    typer.Option("--pass", envvar="MSTCRYPT_KEY_PASS", help="Password of the PEM keys."),
]
CaOpt = Annotated[str | None, typer.Option("--cacert", help="PEM file of trusted CA certificates.")]
SuiteOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--cipher-suite",
        help="ECC_SM4_CBC_SM3, ECC_SM4_GCM_SM3, ECDHE_SM4_CBC_SM3, ECDHE_SM4_GCM_SM3 "
        "(or 0xE013 ...; repeatable, in preference order).",
    ),
]
HostOpt = Annotated[str, typer.Option("--host")]
ClientCompatOpt = Annotated[
    str,
    typer.Option(
        "--compat",
        help="Peer profile: standard, gmssl, tongsuo, or auto (start with standard; when the "
        "server's refusal shows it needs the GmSSL or Tongsuo form, retry once with it and "
        "say so; never retried when the server's certificate fails).",
    ),
]
ServerCompatOpt = Annotated[
    str,
    typer.Option(
        "--compat",
        help="Peer profile: standard, gmssl, tongsuo or auto (= standard). A server accepts "
        "every form from every peer; the profile only orders the CertificateVerify checks.",
    ),
]


def _profile(value: str) -> Any:
    """The PeerProfile for --compat (auto: standard; the client then retries)."""
    from mstcrypt.protocols.tlcp.profiles import AUTO, COMPAT_CHOICES, PeerProfile

    v = value.strip().lower()
    if v not in COMPAT_CHOICES:
        fail(f"unknown --compat {value!r}; expected one of {', '.join(COMPAT_CHOICES)}")
    return PeerProfile.named("standard" if v == AUTO else v)


def _is_auto(value: str) -> bool:
    return value.strip().lower() == "auto"


def _say_retry(retry: Any) -> None:
    err_console.print(f"compat auto: {retry}")


def _say_form(writer: Any) -> None:
    retry = writer.get_extra_info("retry")
    if retry is not None:
        changed = ", ".join(f"{k}={v}" for k, v in retry.changes.items())
        err_console.print(f"compat auto: the handshake succeeded with {changed}")


def _suites(values: list[str] | None) -> dict[str, Any]:
    if not values:
        return {}
    out = []
    for v in values:
        name = v.strip().upper().removeprefix("TLS_").removeprefix("TLCP_")
        try:
            out.append(CipherSuite(int(name, 16)) if name.startswith("0X") else CipherSuite[name])
        except (KeyError, ValueError):
            known = ", ".join(s.name for s in CipherSuite)
            fail(f"unknown cipher suite {v!r}; expected one of {known}")
    return {"cipher_suites": out}


def _certs(paths: list[str]) -> list[Any]:
    from mstcrypt.pki import load_certificates

    return [c for p in paths for c in load_certificates(read_input(p))]


def _credentials(
    cert: list[str], key: str | None, enc_key: str | None, password: str | None, what: str
) -> Credentials:
    from mstcrypt.formats.keys import load_private_key

    certs = _certs(cert)
    if len(certs) < 2 or key is None or enc_key is None:
        fail(f"{what} needs the signing and encryption certificates and both keys")
    return Credentials.from_keys(
        certs[0],
        load_private_key(read_input(key), password),
        certs[1],
        load_private_key(read_input(enc_key), password),
        chain=certs[2:],
    )


def _run(coro: Any) -> None:
    """Run until done or until SIGINT/SIGTERM (then cancel: graceful close)."""
    from mstcrypt.apps.tlcp_gateway.asgi import run_until_signal

    run_until_signal(coro)


def tlcp_server_command(
    cert: CertOpt,
    key: KeyOpt,
    enc_key: EncKeyOpt,
    password: PassOpt = None,
    cacert: CaOpt = None,
    cipher_suite: SuiteOpt = None,
    verify_client: Annotated[
        bool, typer.Option("--verify-client", help="Require a client certificate.")
    ] = False,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="0 picks a free port.")] = 443,
    echo: Annotated[bool, typer.Option("--echo", help="Send received data back.")] = False,
    handshake_timeout: Annotated[float, typer.Option("--handshake-timeout")] = 30.0,
    compat: ServerCompatOpt = "auto",
) -> None:
    """A TLCP server: prints what each client sends (or echoes it with --echo). Prints
    "listening on HOST:PORT" on stderr when ready. Clients of every implementation are
    accepted (both CertificateVerify forms, both ClientECDHEParams framings)."""
    profile = _profile(compat)
    creds = _credentials(cert, key, enc_key, password, "the server")
    anchors = _certs([cacert]) if cacert else []
    if verify_client and not anchors:
        fail("--verify-client needs --cacert")
    ctx = TLCPContext.for_peer(
        profile,
        credentials=creds,
        trust_anchors=anchors,
        client_auth=ClientAuth.REQUIRED if verify_client else ClientAuth.NONE,
        **_suites(cipher_suite),
    )

    async def handle(reader: aio.TLCPStreamReader, writer: aio.TLCPStreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        suite = writer.get_extra_info("cipher_suite")
        certs = writer.get_extra_info("peer_certificates")
        who = certs[0].subject_str if certs else "anonymous"
        err_console.print(f"connection from {peer[0]}:{peer[1]} {suite.name} {who}")
        try:
            while data := await reader.read(65536):
                if echo:
                    writer.write(data)
                    await writer.drain()
                else:
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
        except TLCPError as exc:
            err_console.print(f"connection error: {exc}")
        finally:
            writer.close()
            await writer.wait_closed()

    def on_error(exc: BaseException, peer: Any) -> None:
        err_console.print(f"handshake with {peer} failed: {exc}")

    async def main() -> None:
        server = await aio.start_server(
            handle,
            host,
            port,
            ctx,
            handshake_timeout=handshake_timeout,
            on_handshake_error=on_error,
        )
        bound = server.sockets[0].getsockname()
        print(f"listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
        async with server:
            await server.serve_forever()

    _run(main())


def tlcp_client_command(
    cacert: Annotated[str, typer.Option("--cacert", help="PEM file of trusted CA certificates.")],
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 443,
    server_name: Annotated[
        str | None,
        typer.Option("--server-name", help="SNI and the name checked in the certificate."),
    ] = None,
    no_check_hostname: Annotated[bool, typer.Option("--no-check-hostname")] = False,
    client_cert: Annotated[
        list[str] | None,
        typer.Option("--client-cert", help="Client signing cert, encryption cert, chain (PEM)."),
    ] = None,
    client_key: Annotated[str | None, typer.Option("--client-key")] = None,
    client_enc_key: Annotated[str | None, typer.Option("--client-enc-key")] = None,
    password: PassOpt = None,
    cipher_suite: SuiteOpt = None,
    infile: Annotated[str, typer.Option("--in", help="Data to send ('-': stdin).")] = "-",
    wait: Annotated[
        float, typer.Option("--wait", help="Stop after this many seconds without data.")
    ] = 2.0,
    timeout: Annotated[float, typer.Option("--timeout", help="Connect and handshake.")] = 30.0,
    compat: ClientCompatOpt = "auto",
) -> None:
    """A TLCP client: sends the input, prints what the server sends back until the server
    closes or nothing arrives for --wait seconds, then closes with close_notify."""
    profile = _profile(compat)
    creds = None
    if client_cert:
        creds = _credentials(client_cert, client_key, client_enc_key, password, "--client-cert")
    ctx = TLCPContext.for_peer(
        profile,
        credentials=creds,
        trust_anchors=_certs([cacert]),
        check_hostname=not no_check_hostname,
        **_suites(cipher_suite),
    )
    if server_name is None and not no_check_hostname:
        server_name = host
    data = read_input(infile)

    async def main() -> None:
        try:
            reader, writer = await aio.open_connection(
                host,
                port,
                ctx,
                server_name=server_name,
                timeout=timeout,
                retry=_is_auto(compat),
                on_retry=_say_retry,
            )
        except (TLCPError, OSError, TimeoutError) as exc:
            fail(f"TLCP connection to {host}:{port} failed: {exc}", EXIT_INVALID)
        suite = writer.get_extra_info("cipher_suite")
        err_console.print(f"connected to {host}:{port} with {suite.name}")
        _say_form(writer)
        try:
            if data:
                writer.write(data)
                await writer.drain()
            while True:
                try:
                    async with asyncio.timeout(wait):
                        chunk = await reader.read(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
        finally:
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


NoCrlOpt = Annotated[
    bool,
    typer.Option(
        "--no-crl-check",
        help="Accept certificates whose issuer has no CRL (no revocation check; not recommended).",
    ),
]


def gateway_command(
    config: Annotated[Path, typer.Argument(help="Gateway configuration (TOML or JSON).")],
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
    no_crl_check: NoCrlOpt = False,
    compat: Annotated[
        str | None,
        typer.Option(
            "--compat",
            help="Peer profile of listeners without a compat key: standard, gmssl, tongsuo "
            "or auto (= standard). Terminals of every implementation are accepted.",
        ),
    ] = None,
) -> None:
    """Run the TLCP mobile access gateway until SIGINT/SIGTERM (graceful shutdown).
    Client certificates are checked against the CRLs of the [trust] section, and refused
    when their issuer has none (unless require_crl = false or --no-crl-check)."""
    from mstcrypt.apps.tlcp_gateway import Gateway, GatewayConfig

    if compat is not None:
        _profile(compat)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    cfg = GatewayConfig.from_file(config)
    if compat is not None:
        for listener in cfg.listeners:
            if listener.compat is None:
                listener.compat = compat.strip().lower()
    gw = Gateway(cfg, require_crl=False if no_crl_check else None)

    async def main() -> None:
        await gw.start()
        for host, port in gw.addresses:
            print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
        try:
            await gw.serve_forever()
        finally:
            await gw.close()

    _run(main())


def tunnel_command(
    token: Annotated[str, typer.Option("--token", help="Soft token file (MST-CC).")],
    gateway: Annotated[str, typer.Option("--gateway", help="Gateway host:port.")],
    server_name: Annotated[
        str, typer.Option("--server-name", help="Route name (SNI) at the gateway.")
    ],
    cacert: Annotated[str, typer.Option("--cacert", help="PEM file of trusted CA certificates.")],
    local_port: Annotated[int, typer.Option("--local-port", help="0 picks a free port.")],
    pin: Annotated[
        str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN", help="Token PIN (prompted).")
    ] = None,
    container: Annotated[str, typer.Option("--container")] = "vpn",
    local_host: Annotated[str, typer.Option("--local-host")] = "127.0.0.1",
    cipher_suite: SuiteOpt = None,
    crl: Annotated[
        list[str] | None,
        typer.Option("--crl", help="CRL file (DER or PEM) of a CA of the gateway's chain."),
    ] = None,
    crl_url: Annotated[
        list[str] | None,
        typer.Option("--crl-url", help="http(s) URL of such a CRL (fetched and refreshed)."),
    ] = None,
    crl_refresh: Annotated[
        float, typer.Option("--crl-refresh", help="Seconds between CRL re-reads.")
    ] = 300.0,
    no_crl_check: NoCrlOpt = False,
    compat: ClientCompatOpt = "auto",
) -> None:
    """Forward 127.0.0.1:LOCAL to a gateway route: each local connection becomes a TLCP
    connection authenticated with the token's keys. Prints "listening on HOST:PORT".

    The gateway's certificates are checked against CRLs: every CA of its chain below the
    anchors needs one, from --crl files or --crl-url URLs (plus the cRLDistributionPoints
    of the certificates in --cacert), re-read every --crl-refresh seconds; a failed
    re-read keeps the previous CRLs (their nextUpdate still bounds them)."""
    from mstcrypt.apps.tlcp_gateway.config import parse_address
    from mstcrypt.apps.tlcp_gateway.trust import TrustMaterial, call_source, file_trust_source

    profile = _profile(compat)
    gw_host, gw_port = parse_address(gateway)
    crl_files = list(crl or [])
    urls = list(crl_url or [])
    urls += [u for c in _certs([cacert]) for u in c.crl_urls if u not in urls]
    if no_crl_check:
        err_console.print(
            "warning: --no-crl-check: the gateway's certificates are not checked for revocation"
        )
    elif not crl_files and not urls:
        fail(
            "the tunnel checks the gateway's certificates against CRLs: give --crl FILE or "
            "--crl-url URL for each CA of the gateway's chain (or --no-crl-check)"
        )
    source = file_trust_source([cacert], (), crl_files, urls)
    tok = open_token(token, pin)
    creds = Credentials.from_module(tok, container)
    suites = _suites(cipher_suite)
    state: dict[str, Any] = {"forms": {}}

    def use(material: TrustMaterial) -> None:
        state["ctx"] = TLCPContext.for_peer(
            profile,
            credentials=creds,
            trust_anchors=material.trust_anchors,
            intermediates=material.intermediates,
            crls=material.crls,
            require_crl=not no_crl_check,
            **suites,
            **state["forms"],
        )

    async def refresh_loop() -> None:
        while True:
            await asyncio.sleep(crl_refresh)
            try:
                use(await call_source(source))
            except Exception as exc:
                err_console.print(f"CRL refresh failed ({exc}): keeping the previous CRLs")

    async def pipe(read: Any, writer: Any) -> None:
        while data := await read(65536):
            writer.write(data)
            await writer.drain()

    async def handle(lr: asyncio.StreamReader, lw: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await aio.open_connection(
                gw_host,
                gw_port,
                state["ctx"],
                server_name=server_name,
                retry=_is_auto(compat) and not state["forms"],
                on_retry=_say_retry,
            )
        except (TLCPError, OSError, TimeoutError) as exc:
            err_console.print(f"gateway connection failed: {exc}")
            lw.close()
            return
        if (retry := tw.get_extra_info("retry")) is not None:
            # Keep the form that worked for the next connections (and CRL refreshes).
            used = tw.get_extra_info("context")
            state["forms"] = {k: getattr(used, k) for k in retry.changes}
            state["ctx"] = used
            _say_form(tw)
        tasks = [asyncio.create_task(pipe(lr.read, tw)), asyncio.create_task(pipe(tr.read, lw))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tw.close()
            lw.close()

    async def main() -> None:
        try:
            use(await call_source(source))
        except (OSError, MstCryptError) as exc:
            fail(f"cannot load the trust anchors and CRLs: {exc}")
        refresher = asyncio.create_task(refresh_loop())
        server = await asyncio.start_server(handle, local_host, local_port)
        bound = server.sockets[0].getsockname()
        print(f"listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
        try:
            async with server:
                await server.serve_forever()
        finally:
            refresher.cancel()

    try:
        _run(main())
    finally:
        tok.logout()

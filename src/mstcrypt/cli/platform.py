"""Platform commands: ``serve``, ``ca init``, ``operator add``, ``enroll``, ``audit``,
``backup``, and ``demo`` (start the platform on embedded storage and walk a full
enrollment)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from mstcrypt.cli._common import (
    ContainerOpt,
    LoginNameOpt,
    PlatformOpt,
    RootFileOpt,
    TokenFileOpt,
    TokenPinOpt,
    console,
    err_console,
    fail,
    open_token,
    write_output,
)

if TYPE_CHECKING:
    from mstcrypt.client import Client

ca_app = typer.Typer(help="Certificate authority administration.", no_args_is_help=True)
operator_app = typer.Typer(help="Operator credentials for the admin API.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
backup_app = typer.Typer(
    help="Encrypted backup and restore of the whole store (console).", no_args_is_help=True
)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MSTCRYPT_DATA_DIR",
        help="Data directory (SQLite database, master key, operators).",
    ),
]


def _kmc(data_dir: Path | None) -> Any:
    from mstcrypt.server.config import Settings

    settings = Settings.from_env(data_dir)
    kmc = settings.kmc()
    kmc.create_schema()
    return kmc, settings


def cert_table(title: str, certs: list[Any]) -> Table:
    t = Table(title=title)
    for col in ("subject", "serial", "key usage", "valid until"):
        t.add_column(col)
    for c in certs:
        t.add_row(
            c.subject_str,
            f"{c.serial:x}",
            ", ".join(sorted(c.key_usage)),
            c.not_after.strftime("%Y-%m-%d"),
        )
    return t


@ca_app.command("init")
def ca_init(
    data_dir: DataDir = None,
    organisation: Annotated[str, typer.Option("--org")] = "mstcrypt",
    country: Annotated[str, typer.Option("--country")] = "CN",
) -> None:
    """Create the root and issuing CAs (keys wrapped by the SS-CC master key)."""
    kmc, _ = _kmc(data_dir)
    certs = kmc.init_ca(organisation=organisation, country=country, actor="cli")
    console.print(cert_table("CA initialised", certs))


RolesOpt = Annotated[
    list[str],
    typer.Option(
        "--role",
        help="Role (repeatable): administrator, registration_officer, key_recovery_officer, "
        "auditor (the auditor role stands alone).",
    ),
]


@ca_app.command("root")
def ca_root(
    data_dir: DataDir = None,
    out: Annotated[str | None, typer.Option("--out", help="Write the PEM here.")] = None,
) -> None:
    """Export the root CA certificate, the trust anchor to preset in every token
    (`mstcrypt token init --anchor`), with its SM3 fingerprint for an out-of-band check."""
    kmc, _ = _kmc(data_dir)
    root = kmc.chain()[-1]
    err_console.print(f"root CA {root.subject_str}\nSM3 fingerprint {root.fingerprint}")
    if out:
        write_output(out, root.pem)
    else:
        typer.echo(root.pem.decode(), nl=False)


@ca_app.command("publish-crl")
def ca_publish_crl(
    data_dir: DataDir = None,
    force: Annotated[
        bool, typer.Option("--force", help="Publish now even when nothing is due.")
    ] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep running as the CRL publisher (MSTCRYPT_CRL_INTERVAL); for a "
            "dedicated publisher process next to instances run with MSTCRYPT_CRL_PUBLISHER=0.",
        ),
    ] = False,
) -> None:
    """Publish the CRLs that are due (pending revocations, a CRL past half its life), or
    every CA's now with --force. One publisher at a time across all instances (lease)."""
    kmc, _ = _kmc(data_dir)
    if watch:
        err_console.print("publishing CRLs until interrupted (Ctrl-C)")
        with contextlib.suppress(KeyboardInterrupt):
            kmc.crl_publisher.run_forever()
        return
    pubs = kmc.publish_crls(force=force)
    t = Table(title="CRLs published")
    for col in ("CA", "number", "entries", "delta base", "delta entries", "build ms", "store ms"):
        t.add_column(col)
    for p in pubs:
        t.add_row(
            p.ca,
            str(p.number),
            str(p.entries),
            str(p.delta_base if p.delta_base is not None else "-"),
            str(p.delta_entries if p.delta_entries is not None else "-"),
            f"{p.build_seconds * 1000:.1f}",
            f"{p.store_seconds * 1000:.1f}",
        )
    if pubs:
        console.print(t)
    else:
        console.print("no CRL was due")
    for name in ("issuing", "root"):
        st = kmc.crl_publisher.pending(name)
        err_console.print(
            f"{name}: CRL {st['crl_number']}, {st['pending']} revocation(s) pending"
            + (f", due {st['due'].isoformat()}" if st["due"] else "")
        )


@operator_app.command("add")
def operator_add(
    name: str,
    roles: RolesOpt,
    data_dir: DataDir = None,
    static: Annotated[
        bool,
        typer.Option(
            "--static",
            help="Create a static credential instead (accepted only by a server started "
            "with MSTCRYPT_STATIC_OPERATORS=1; for automation).",
        ),
    ] = False,
    org: Annotated[str, typer.Option("--org")] = "mstcrypt",
) -> None:
    """Register an operator with roles. This console command needs the server's data
    directory and SS-CC: operators are never created through the HTTP API. It prints a
    one-time operator enrollment code; the operator enrolls their own soft token with it
    (`mstcrypt enroll`), and that signing certificate becomes their credential."""
    kmc, _ = _kmc(data_dir)
    if static:
        token = kmc.operators.add_static(name, roles, actor="console")
        err_console.print(f"operator [bold]{name}[/bold] static credential (shown once):")
        typer.echo(token)
        return
    code, expires = kmc.operators.add(name, roles, org=org, actor="console")
    err_console.print(
        f"operator [bold]{name}[/bold] registered ({', '.join(sorted(set(roles)))}); "
        f"enrollment code (valid until {expires:%Y-%m-%d %H:%M} UTC):"
    )
    typer.echo(code)


@operator_app.command("enroll-code")
def operator_enroll_code(name: str, data_dir: DataDir = None) -> None:
    """A new operator enrollment code (new device); the next enrollment with it moves the
    operator's credential to the new certificate."""
    kmc, _ = _kmc(data_dir)
    code, expires = kmc.operators.enroll_code(name, actor="console")
    err_console.print(
        f"operator enrollment code for {name} (valid until {expires:%Y-%m-%d %H:%M} UTC):"
    )
    typer.echo(code)


@operator_app.command("bind")
def operator_bind(
    name: str,
    serial: Annotated[str, typer.Option("--serial", help="Signing certificate serial (hex).")],
    data_dir: DataDir = None,
) -> None:
    """Bind the operator to an existing active signing certificate of theirs."""
    kmc, _ = _kmc(data_dir)
    kmc.operators.bind(name, serial, actor="console")
    console.print(f"operator {name} bound to certificate {serial}")


@operator_app.command("roles")
def operator_roles(name: str, roles: RolesOpt, data_dir: DataDir = None) -> None:
    """Replace an operator's roles."""
    kmc, _ = _kmc(data_dir)
    kmc.operators.set_roles(name, roles, actor="console")
    console.print(f"operator {name}: {', '.join(sorted(set(roles)))}")


@operator_app.command("disable")
def operator_disable(name: str, data_dir: DataDir = None) -> None:
    """Stop accepting the operator's credential (their sessions stop at once)."""
    kmc, _ = _kmc(data_dir)
    kmc.operators.set_status(name, "disabled", actor="console")
    console.print(f"operator {name} disabled")


@operator_app.command("enable")
def operator_enable(name: str, data_dir: DataDir = None) -> None:
    kmc, _ = _kmc(data_dir)
    kmc.operators.set_status(name, "active", actor="console")
    console.print(f"operator {name} enabled")


@operator_app.command("list")
def operator_list(data_dir: DataDir = None) -> None:
    """Operators, their roles, state and bound certificate."""
    kmc, _ = _kmc(data_dir)
    t = Table(title="operators")
    for col in ("name", "roles", "status", "certificate", "static"):
        t.add_column(col)
    for o in kmc.operators.list():
        t.add_row(
            o["name"],
            ", ".join(o["roles"]),
            o["status"],
            o["certificate"] or "-",
            "yes" if o["static"] else "",
        )
    console.print(t)


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDir = None,
    incremental: Annotated[
        bool,
        typer.Option(
            "--incremental",
            help="Only the newest signed checkpoint and the records after it (what the "
            "HTTP endpoint does).",
        ),
    ] = False,
    from_seq: Annotated[
        int | None,
        typer.Option(
            "--from", min=1, help="First record of a range (linked to the record before it)."
        ),
    ] = None,
    to_seq: Annotated[
        int | None,
        typer.Option(
            "--to",
            min=1,
            help="Last record of a range (verified on to the next signed checkpoint).",
        ),
    ] = None,
) -> None:
    """Verify the audit chain on a read-only snapshot (writers are not blocked): by
    default every record from the first, every signed checkpoint and the head; exit 1
    if broken."""
    if incremental and (from_seq is not None or to_seq is not None):
        fail("--incremental and --from/--to are exclusive")
    kmc, _ = _kmc(data_dir)
    started = time.monotonic()
    r = kmc.verify_audit(incremental=incremental, from_seq=from_seq, to_seq=to_seq)
    took = time.monotonic() - started
    for note in r.notes:
        err_console.print(f"note: {note}")
    if not r.ok:
        console.print(f"[red]audit chain BROKEN[/red] at record {r.first_bad_seq}: {r.problem}")
        raise typer.Exit(1)
    span = f"records {r.from_seq}..{r.to_seq}" if r.records else "no new records"
    if r.mode == "incremental":
        start = f"signed checkpoint {r.anchor_seq}" if r.anchor_seq else "the first record"
        console.print(
            f"audit chain OK (incremental from {start}): {span} verified, head at "
            f"{r.head_seq} ({took:.1f} s)"
        )
    elif r.mode == "range":
        console.print(
            f"audit chain OK (range): {span} verified, {r.checkpoints} signed checkpoints "
            f"({took:.1f} s)"
        )
    else:
        console.print(
            f"audit chain OK: {r.records} records, {r.checkpoints} signed checkpoints "
            f"({took:.1f} s)"
        )


@audit_app.command("checkpoint")
def audit_checkpoint(data_dir: DataDir = None) -> None:
    """Verify the records since the last signed checkpoint and sign the head with the
    KMC audit key."""
    kmc, _ = _kmc(data_dir)
    seq = kmc.checkpoint()
    if seq is None:
        console.print("nothing new to sign: the head is already signed")
    else:
        console.print(f"signed checkpoint at record {seq}")


PassphraseOpt = Annotated[
    str | None,
    typer.Option(
        "--passphrase-file",
        help="File holding the backup passphrase (else MSTCRYPT_BACKUP_PASSPHRASE, else a prompt).",
    ),
]


def _passphrase(path: str | None, *, confirm: bool) -> str:
    import os

    if path:
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror}")
    value = os.environ.get("MSTCRYPT_BACKUP_PASSPHRASE")
    if value:
        return value
    return str(typer.prompt("backup passphrase", hide_input=True, confirmation_prompt=confirm))


@backup_app.command("create")
def backup_create(
    out: Annotated[str, typer.Option("--out", help="Backup file to write (mode 0600).")],
    data_dir: DataDir = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Stream an encrypted backup of every table to a file: one read-only snapshot,
    read table by table in batches (writers carry on), SM4-GCM chunks under a key
    derived from the passphrase. Key blobs stay wrapped by the SS-CC."""
    import os

    kmc, _ = _kmc(data_dir)
    passphrase = _passphrase(passphrase_file, confirm=True)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    with os.fdopen(fd, "wb") as f:
        n = kmc.backup_to(f, passphrase, actor="console")
    console.print(f"backup written to {out} ({n} bytes)")


@backup_app.command("restore")
def backup_restore(
    path: Annotated[str, typer.Argument(help="Backup file (format 2, or format 1).")],
    data_dir: DataDir = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Restore a backup into an empty store (one transaction; a damaged or truncated
    backup leaves the store empty). Needs the same SS-CC as the backed-up store."""
    kmc, _ = _kmc(data_dir)
    passphrase = _passphrase(passphrase_file, confirm=False)
    if not Path(path).is_file():
        fail(f"cannot read {path}: no such file")
    with Path(path).open("rb") as f:
        n = kmc.restore_from(f, passphrase, actor="console")
    console.print(f"restored {n} rows from {path}")


def _endpoint_names(settings: Any, names: list[str] | None, host: str) -> list[str]:
    import ipaddress
    import urllib.parse

    out = list(names or [])
    public = urllib.parse.urlsplit(settings.public_url).hostname
    if public:
        out.append(public)
    if host not in ("0.0.0.0", "::"):  # noqa: S104 - a name, not a bind
        out.append(host)
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(out[-1] if out else "127.0.0.1").is_loopback:
            out += ["localhost", "127.0.0.1"]
    return list(dict.fromkeys(out)) or ["localhost"]


def serve_command(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8600,
    data_dir: DataDir = None,
    init: Annotated[bool, typer.Option("--init", help="Initialise the CA if needed.")] = False,
    tls: Annotated[
        str,
        typer.Option(
            "--tls",
            help="tlcp (default): terminate TLCP here with certificates from the platform's "
            "own CA; none: plain HTTP for a TLS-terminating reverse proxy on this host "
            "(set MSTCRYPT_TRUSTED_PROXIES to its address).",
        ),
    ] = "tlcp",
    server_name: Annotated[
        list[str] | None,
        typer.Option(
            "--server-name",
            help="Name (DNS or IP) clients dial, certified in the endpoint's certificate "
            "(repeatable; default: MSTCRYPT_PUBLIC_URL's host and --host).",
        ),
    ] = None,
    console_code_ttl: Annotated[
        int | None,
        typer.Option(
            "--console-code-ttl",
            help="Seconds a console code waits for its exchange (10-300; default "
            "MSTCRYPT_CONSOLE_CODE_TTL or 60).",
        ),
    ] = None,
    console_idle: Annotated[
        int | None,
        typer.Option(
            "--console-idle",
            help="Seconds a console session lives without a request (60-28800; default "
            "MSTCRYPT_CONSOLE_IDLE or 900).",
        ),
    ] = None,
    console_max_age: Annotated[
        int | None,
        typer.Option(
            "--console-max-age",
            help="Seconds after the login when a console session ends (idle-86400; "
            "default MSTCRYPT_CONSOLE_MAX_AGE or 28800).",
        ),
    ] = None,
    ca_workers: Annotated[
        int | None,
        typer.Option(
            "--ca-workers",
            help="Worker processes for enrollments and revocations, so that their CPU "
            "does not delay logins (0-64, 0: in the API process; default "
            "MSTCRYPT_CA_WORKERS, else 1 with two or more CPUs; see docs/deployment.md).",
        ),
    ] = None,
) -> None:
    """Run the platform (CA, CRL, directory, enrollment, KMC, admin) over TLCP."""
    from mstcrypt.errors import KeyStoreError, PolicyError
    from mstcrypt.server.app import create_app
    from mstcrypt.server.config import check_ca_workers

    if tls not in ("tlcp", "none"):
        fail("--tls is tlcp or none")
    try:
        kmc, settings = _kmc(data_dir)
        for field_name, value in (
            ("console_code_ttl", console_code_ttl),
            ("console_idle", console_idle),
            ("console_max_age", console_max_age),
            ("ca_workers", ca_workers),
        ):
            if value is not None:
                setattr(settings, field_name, value)
        settings.console_policy()
        check_ca_workers(settings.ca_workers)
    except PolicyError as exc:
        fail(str(exc))
    if init:
        kmc.ensure_initialised(actor="serve")
    if not kmc.is_initialised():
        fail("the CA is not initialised: run `mstcrypt ca init` first (or pass --init)")
    try:
        kmc.check_keystore()
    except KeyStoreError as exc:
        fail(str(exc))
    from mstcrypt.server.logjson import configure_logging

    log_options = configure_logging()  # MSTCRYPT_LOG_FORMAT=json: structured logs
    app = create_app(settings, kmc)
    from mstcrypt.server.tuning import freeze_startup_heap

    freeze_startup_heap()  # no full-GC pauses over the start-up heap while serving
    if tls == "none":
        import uvicorn

        if host not in ("127.0.0.1", "::1", "localhost"):
            console.print(
                "[yellow]warning:[/yellow] plain HTTP on a non-loopback address: enrollment "
                "codes and session tokens would cross the network in clear"
            )
        # X-Forwarded-For is interpreted by the app against MSTCRYPT_TRUSTED_PROXIES only
        uvicorn.run(
            app, host=host, port=port, log_level="warning", proxy_headers=False, **log_options
        )
        return
    from mstcrypt.apps.tlcp_gateway.asgi import run_asgi_tlcp
    from mstcrypt.server.tlcp import platform_credentials

    names = _endpoint_names(settings, server_name, host)
    creds = platform_credentials(kmc, names)
    console.print(
        f"platform on tlcp://{host}:{port} as {', '.join(names)} "
        f"(certificate {creds.sign_certificate.serial:x} from the platform's CA)"
    )
    run_asgi_tlcp(
        app,
        host=host,
        port=port,
        server_credentials=creds,
        uvicorn_options={"log_level": "warning", **log_options},
    )


def _anchors(ca_file: str | None, token: Any) -> list[Any]:
    """The trust anchor: --ca-file when given, else the root preset in the token."""
    from mstcrypt.client import token_anchors
    from mstcrypt.pki import load_certificates

    if ca_file:
        try:
            certs = load_certificates(Path(ca_file).read_bytes())
        except OSError as exc:
            fail(f"cannot read {ca_file}: {exc.strerror}")
        if not certs:
            fail(f"{ca_file}: no certificate found")
        return certs
    anchors = token_anchors(token)
    if not anchors:
        fail(
            "no trust anchor: the token has no preset root CA (`mstcrypt token init --anchor "
            "root.pem`, or `mstcrypt token add-anchor`) and no --ca-file was given"
        )
    return anchors


def officer_client(
    server: str,
    session: str,
    ca_file: str | None,
    token: str | None = None,
    pin: str | None = None,
) -> Client:
    """A :class:`~mstcrypt.client.Client` for an operator's admin calls: the platform's
    certificate checked against --ca-file (or the root preset in --token), the bearer
    read from the --session file."""
    from mstcrypt.client import Client

    if ca_file is None and token is None:
        fail("give the root CA with --ca-file, or a --token with the root preset")
    tok = open_token(token, pin) if ca_file is None and token is not None else None
    anchors = _anchors(ca_file, tok)
    try:
        bearer = Path(session).read_text(encoding="utf-8").strip()
    except OSError as exc:
        fail(f"cannot read {session}: {exc.strerror}")
    return Client(server, anchors=anchors, operator_token=bearer)


def enroll_command(
    server: Annotated[str, typer.Option("--server", help="Platform URL.")],
    code: Annotated[str, typer.Option("--code", help="One-time enrollment code.")],
    token: Annotated[str, typer.Option("--token", help="Soft token file.")],
    pin: Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN")] = None,
    container: Annotated[str, typer.Option("--container")] = "main",
    ca_file: Annotated[
        str | None,
        typer.Option("--ca-file", help="Root CA (PEM) instead of the one preset in the token."),
    ] = None,
    chain_out: Annotated[
        str | None, typer.Option("--chain-out", help="Write the CA chain (PEM) here.")
    ] = None,
    certs_out: Annotated[
        str | None,
        typer.Option(
            "--certs-out",
            help="Write the signing and encryption certificates and the issuing CA (PEM, "
            "the TLCP server chain) here.",
        ),
    ] = None,
    replace: Annotated[bool, typer.Option("--replace")] = False,
    san: Annotated[
        list[str] | None,
        typer.Option(
            "--san",
            help="Ask for this DNS name or IP address only (repeatable; a gateway or server "
            "gets every name its code authorises by default, and a name outside them is "
            "refused).",
        ),
    ] = None,
) -> None:
    """Enroll this terminal's (or gateway's) soft token: dual certificates and the
    escrowed key."""
    from mstcrypt.client import Client

    tok = open_token(token, pin)
    anchors = _anchors(ca_file, tok)
    with Client(server, anchors=anchors) as c:
        r = c.enroll(code, tok, container=container, replace=replace, subject_alt_names=san or ())
    console.print(
        cert_table(
            f"enrolled {r.owner} into container {r.container!r}",
            [r.sign_certificate, r.encryption_certificate],
        )
    )
    names = [v for _, v in r.sign_certificate.subject_alt_name_entries]
    if names:
        console.print(f"subjectAltName: {', '.join(names)}")
    if chain_out:
        write_output(chain_out, b"".join(x.pem for x in r.chain))
    if certs_out:
        pair = [r.sign_certificate, r.encryption_certificate, *r.chain[:-1]]
        write_output(certs_out, b"".join(x.pem for x in pair))


def enroll_code_command(
    server: Annotated[str, typer.Option("--server", help="Platform URL.")],
    session: Annotated[
        str,
        typer.Option(
            "--session",
            help="File holding a registration officer's session token (`mstcrypt login --out`).",
        ),
    ],
    owner: Annotated[str, typer.Option("--owner", help="Who the certificates are for.")],
    cn: Annotated[str, typer.Option("--cn", help="Subject common name.")],
    profile: Annotated[
        str,
        typer.Option(
            "--profile",
            help="device_sign (a terminal), gateway_sign, im_server_sign, mail_server_sign, "
            "login_server_sign, seal_server_sign, wlan_ap_sign, wlan_asu_sign.",
        ),
    ] = "device_sign",
    dns: Annotated[
        list[str] | None,
        typer.Option(
            "--dns",
            help="DNS name the gateway or server is certified for (repeatable; the first is "
            "the one GmSSL checks).",
        ),
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option(
            "--ip", help="IP address the gateway or server is certified for (repeatable)."
        ),
    ] = None,
    org: Annotated[str | None, typer.Option("--org", help="Subject organisation.")] = None,
    email: Annotated[
        str | None, typer.Option("--email", help="Subject e-mail address (devices).")
    ] = None,
    ttl: Annotated[int, typer.Option("--ttl", help="Lifetime in seconds.")] = 86400,
    ca_file: Annotated[
        str | None,
        typer.Option("--ca-file", help="Root CA (PEM) the platform's certificate must chain to."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Soft token whose preset root to use instead of --ca-file."),
    ] = None,
    pin: Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN")] = None,
) -> None:
    """Create a one-time enrollment code (registration officer, over the admin API).
    Prints the code; a gateway or server code names the DNS names and IP addresses its
    certificates will carry (subjectAltName)."""

    subject = {"CN": cn, **({"O": org} if org else {}), **({"email": email} if email else {})}
    with officer_client(server, session, ca_file, token, pin) as c:
        r = c.create_enrollment_code(
            owner,
            subject,
            profile=profile,
            ttl_seconds=ttl,
            dns_names=dns or (),
            ip_addresses=ip or (),
        )
    names = r.get("names") or []
    err_console.print(
        f"enrollment code for {owner} ({profile}"
        + (f"; names {', '.join(names)}" if names else "")
        + f"), valid until {r['expires_at']}:"
    )
    typer.echo(r["code"])


def login_command(
    server: PlatformOpt,
    token: TokenFileOpt,
    pin: TokenPinOpt = None,
    container: ContainerOpt = "main",
    server_name: LoginNameOpt = "mstcrypt-login",
    ca_file: RootFileOpt = None,
    password: Annotated[
        str | None,
        typer.Option("--password", help="Password factor, when the server's policy asks for it."),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out", help="Write the session token here (mode 0600) instead of standard output."
        ),
    ] = None,
) -> None:
    """Log in with the certificate in the soft token (PIN + signing key): mutual
    authentication as in T/ZSA 37-2020 §7.3. Prints the session token."""
    from mstcrypt.cli._common import write_secret
    from mstcrypt.client import Client

    tok = open_token(token, pin)
    anchors = _anchors(ca_file, tok)
    with Client(server, anchors=anchors) as c:
        r = c.login(tok, container=container, server_name=server_name, password=password)
    if out:
        write_secret(out, r["session_token"].encode() + b"\n")
        console.print(f"logged in as {r['subject']}; session token written to {out}")
    else:
        typer.echo(r["session_token"])


@contextlib.contextmanager
def running_platform(data_dir: Path, settings: Any = None, *, tls: bool = True) -> Iterator[str]:
    """Start the platform in this process on a free loopback port — over TLCP with the
    platform's own certificates (``https://`` URL) unless ``tls`` is false — and yield
    its URL."""
    from mstcrypt.server.app import create_app
    from mstcrypt.server.config import Settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    settings = settings or Settings.from_env(data_dir, public_url=url)
    settings.public_url = url
    kmc = settings.kmc()
    kmc.create_schema()
    kmc.ensure_initialised(actor="demo")
    app = create_app(settings, kmc)
    if tls:
        runner: Any = _TlcpRunner(app, kmc, port)
    else:
        import uvicorn

        runner = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started:
        if time.monotonic() > deadline or not thread.is_alive():
            fail("the platform did not start")
        time.sleep(0.05)
    try:
        yield url
    finally:
        runner.should_exit = True
        thread.join(timeout=15)
        kmc.db.dispose()


class _TlcpRunner:
    """The TLCP endpoint in a thread's event loop, with uvicorn.Server's start/stop flags."""

    def __init__(self, app: Any, kmc: Any, port: int) -> None:
        from mstcrypt.server.tlcp import platform_credentials

        self.app, self.port = app, port
        self.credentials = platform_credentials(kmc, ["127.0.0.1", "localhost"])
        self.started = False
        self._exit: Any = None

    @property
    def should_exit(self) -> bool:
        return False

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value and self._exit is not None:
            self._loop.call_soon_threadsafe(self._exit.set)

    def run(self) -> None:
        import asyncio

        from mstcrypt.apps.tlcp_gateway.asgi import ASGITLCPServer

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._exit = asyncio.Event()
            server = ASGITLCPServer(
                self.app,
                host="127.0.0.1",
                port=self.port,
                server_credentials=self.credentials,
                uvicorn_options={"log_level": "warning"},
            )
            await server.start()
            self.started = True
            try:
                await self._exit.wait()
            finally:
                await server.close()

        asyncio.run(main())

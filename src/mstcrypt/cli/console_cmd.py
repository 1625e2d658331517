"""``mstcrypt console open``: log in with the operator's soft token (§7.3) and open the
web console in a browser with a one-time console code (docs/console.md)."""

from __future__ import annotations

import urllib.parse
from typing import Annotated

import typer

from mstcrypt.cli._common import (
    ContainerOpt,
    LoginNameOpt,
    PlatformOpt,
    RootFileOpt,
    TokenPinOpt,
    console,
    err_console,
    fail,
    open_token,
)

app = typer.Typer(help="The operations console (web).", no_args_is_help=True)


@app.command("open")
def open_command(
    server: PlatformOpt,
    token: Annotated[str, typer.Option("--token", help="The operator's soft token file.")],
    pin: TokenPinOpt = None,
    container: ContainerOpt = "main",
    server_name: LoginNameOpt = "mstcrypt-login",
    ca_file: RootFileOpt = None,
    browser: Annotated[
        bool,
        typer.Option(
            "--browser/--no-browser",
            help="Open the console in the default browser (--no-browser: print the URL).",
        ),
    ] = True,
    local_port: Annotated[
        int,
        typer.Option(
            "--local-port",
            help="Loopback port for the console when the platform speaks TLCP (0: any free).",
        ),
    ] = 0,
    console_url: Annotated[
        str | None,
        typer.Option(
            "--console-url",
            help="Where the browser reaches the platform when that is not --server (e.g. the "
            "HTTPS reverse proxy in front of a TLCP or plain-HTTP platform).",
        ),
    ] = None,
) -> None:
    """Log in with the certificate in the operator's soft token (PIN + signing key), get a
    one-time console code (valid one minute) and open the console with it. The code
    travels in the URL fragment, which the browser never sends to a server; the page
    exchanges it once for an HttpOnly session cookie. A platform on https:// speaks TLCP,
    which browsers do not: the console is then served on a loopback port and forwarded
    over TLCP until Ctrl-C (or give --console-url, an HTTPS reverse proxy)."""
    import webbrowser

    from mstcrypt.cli.platform import _anchors
    from mstcrypt.client import Client

    base = (console_url or server).rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        fail("--server / --console-url must be http:// or https:// URLs")
    # an https:// platform speaks TLCP, which browsers do not: serve the console to the
    # local browser on a loopback port, forwarded over TLCP (unless --console-url)
    tunnel = console_url is None and server.startswith("https://")
    tok = open_token(token, pin)
    anchors = _anchors(ca_file, tok)
    with Client(server, anchors=anchors) as c:
        session = c.login(tok, container=container, server_name=server_name)["session_token"]
        try:
            r = c.console_code(session)
        finally:
            c.logout(session)  # the API session is not needed any more
    proxy = None
    if tunnel:
        import httpx

        from mstcrypt.apps.console.localproxy import LocalConsoleProxy
        from mstcrypt.client import _tlcp_transport

        http = httpx.Client(transport=_tlcp_transport(server, anchors, None), timeout=30.0)
        proxy = LocalConsoleProxy(server, http, port=local_port).start()
        base = proxy.url
    url = f"{base}{r['login_path']}#code={urllib.parse.quote(r['code'], safe='')}"
    err_console.print(f"console code for operator {r['operator']} (valid for one minute, once)")
    if browser and webbrowser.open(url):
        console.print(f"opened the console at {base}{r['login_path']}")
    else:
        typer.echo(url)
    if proxy is not None:
        err_console.print(
            f"serving the console on {proxy.url} over TLCP to {server}; Ctrl-C to stop"
        )
        proxy.wait()
        proxy.stop()


report_app = typer.Typer(help="Reports for assessors.", no_args_is_help=True)


@report_app.command("compliance")
def report_compliance(
    out: Annotated[
        str, typer.Option("--out", help="report.html, or report.pdf (printed by Chromium).")
    ],
    data_dir: Annotated[
        str | None,
        typer.Option(
            "--data-dir",
            envvar="MSTCRYPT_DATA_DIR",
            help="The platform's data directory (default ./mstcrypt-data).",
        ),
    ] = None,
    not_applicable: Annotated[
        list[str] | None,
        typer.Option(
            "--not-applicable",
            help="A guide section out of this unit's scope, e.g. 6.3 (repeatable).",
        ),
    ] = None,
    chromium: Annotated[
        str, typer.Option("--chromium", help="Chromium for PDF output.")
    ] = "chromium",
) -> None:
    """The cryptographic-compliance report: every clause of the guide's Annexes A and B
    (GB/T 22239-2019, GM/T 0054-2018) with the evidence this deployment gives and a
    verdict. Reads the platform's store (and verifies the whole audit chain)."""
    from pathlib import Path

    from mstcrypt.apps.console.compliance import collect, render_html, write_pdf
    from mstcrypt.cli.platform import _kmc

    if not out.endswith((".html", ".htm", ".pdf")):
        fail("--out must end in .html or .pdf")
    kmc, _settings = _kmc(Path(data_dir) if data_dir else None)
    if not kmc.is_initialised():
        fail("the CA is not initialised in this data directory")
    report = collect(kmc, not_applicable=not_applicable or ())
    html = render_html(report)
    if out.endswith(".pdf"):
        write_pdf(html, out, chromium=chromium)
    else:
        Path(out).write_text(html, encoding="utf-8")
    s = report.summary()
    console.print(
        f"{out}: {len(report.rows)} clauses — {s['met']} met, {s['partly']} partly, "
        f"{s['not met']} not met, {s['not applicable']} not applicable"
    )

"""The ``mstcrypt`` command line (typer + rich).

Verbs mirror gmssl/openssl: ``sm2 keygen|sign|verify|encrypt|decrypt``, ``sm3``,
``sm4 encrypt|decrypt``, ``token init|info|change-pin|unlock``, ``speed``, ``selftest``;
files: ``file encrypt|decrypt|inspect|rewrap``; TLCP: ``tlcp-server``, ``tlcp-client``,
``gateway``, ``tunnel``;
the platform: ``serve``, ``ca init``, ``operator add``, ``enroll``, ``audit``, ``demo``.
Exit codes: 0 success, 1 a signature/MAC did not verify, 2 usage or format error.
"""

from __future__ import annotations

import sys

import typer

from mstcrypt.cli import (
    _common,
    app_cmd,
    boot_cmd,
    cms_cmd,
    console_cmd,
    demo,
    file_cmd,
    im_cmd,
    keys_cmd,
    mail_cmd,
    platform,
    seal_cmd,
    selftest,
    sm2_cmd,
    speed,
    symmetric,
    tlcp_cmd,
    token_cmd,
    voice_cmd,
    wapi_cmd,
)

app = typer.Typer(
    name="mstcrypt",
    help="SM2/SM3/SM4/ZUC cryptography and the T/ZSA 37-2020 mobile-terminal platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(sm2_cmd.app, name="sm2")
app.add_typer(symmetric.sm4_app, name="sm4")
app.command("sm3")(symmetric.sm3_command)
app.add_typer(token_cmd.app, name="token")
app.command("speed")(speed.speed_command)
app.command("selftest")(selftest.selftest_command)
app.command("serve")(platform.serve_command)
app.command("enroll")(platform.enroll_command)
app.command("enroll-code")(platform.enroll_code_command)
app.command("login")(platform.login_command)
app.command("demo")(demo.demo_command)
app.add_typer(platform.ca_app, name="ca")
app.add_typer(platform.operator_app, name="operator")
app.add_typer(platform.audit_app, name="audit")
app.add_typer(platform.backup_app, name="backup")
app.add_typer(file_cmd.app, name="file")
app.command("tlcp-server")(tlcp_cmd.tlcp_server_command)
app.command("tlcp-client")(tlcp_cmd.tlcp_client_command)
app.command("gateway")(tlcp_cmd.gateway_command)
app.command("tunnel")(tlcp_cmd.tunnel_command)
app.add_typer(wapi_cmd.app, name="wapi")
app.add_typer(voice_cmd.app, name="voice")
app.add_typer(seal_cmd.app, name="seal")
app.add_typer(app_cmd.app, name="app")
app.add_typer(cms_cmd.app, name="cms")
app.add_typer(mail_cmd.app, name="mail")
app.add_typer(im_cmd.app, name="im")
app.add_typer(im_cmd.ims_app, name="ims")
app.add_typer(boot_cmd.app, name="boot")
app.add_typer(console_cmd.app, name="console")
app.add_typer(console_cmd.report_app, name="report")
app.add_typer(keys_cmd.app, name="keys")


@app.command("version")
def version() -> None:
    """Print the mstcrypt and libcrypto versions."""
    from mstcrypt import __version__
    from mstcrypt.crypto._libcrypto import openssl_version

    typer.echo(f"mstcrypt {__version__} ({openssl_version()})")


def main() -> None:
    sys.exit(_common.run(app))

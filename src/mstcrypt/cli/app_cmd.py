"""``mstcrypt app ...``: developer signing, channel review and countersigning, the
terminal's verification and install agent (T/ZSA 37-2020 §6.2; docs/app-signing.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mstcrypt.apps import appsign
from mstcrypt.apps.appsign.channel import ChannelStore
from mstcrypt.cli._common import console, fail, read_input, write_output
from mstcrypt.errors import DecodeError
from mstcrypt.formats.keys import load_private_key
from mstcrypt.pki import CRL, Certificate, CertificationRequest, build_csr, load_certificates, name

app = typer.Typer(
    help="App signing: developer signature, channel countersignature, terminal verification.",
    no_args_is_help=True,
)

KeyOpt = Annotated[str, typer.Option("--key", help="SM2 private key (PEM PKCS#8).")]
PassOpt = Annotated[
    str | None,
    typer.Option("--pass", help="Password of the PEM key.", envvar="MSTCRYPT_KEY_PASS"),
]
CertOpt = Annotated[
    str,
    typer.Option("--cert", help="Signer certificate (PEM), optionally followed by its chain."),
]
CrlOpt = Annotated[
    list[str] | None,
    typer.Option("--crl", help="CRL of the channel CA (PEM or DER; repeatable)."),
]
PolicyOpt = Annotated[str, typer.Option("--policy", help="Terminal policy (JSON).")]
NoCrlOpt = Annotated[bool, typer.Option("--no-crl", help="Do not require a CRL (testing only).")]


def _certs(path: str) -> list[Certificate]:
    certs = load_certificates(read_input(path))
    if not certs:
        fail(f"{path} holds no certificate")
    return certs


def _one_cert(path: str) -> Certificate:
    certs = _certs(path)
    if len(certs) != 1:
        fail(f"{path} must hold exactly one certificate")
    return certs[0]


def _crls(paths: list[str] | None) -> list[CRL]:
    out = []
    for p in paths or []:
        data = read_input(p)
        try:
            out.append(
                CRL.from_pem(data) if data.lstrip().startswith(b"-----") else CRL.from_der(data)
            )
        except DecodeError as exc:
            fail(f"{p}: {exc}")
    return out


def _show(doc: dict[str, Any]) -> None:
    console.print_json(json.dumps(doc, default=str))


@app.command("sign")
def sign(
    input: Annotated[str, typer.Argument(help="APK already signed by apksigner (v2/v3).")],
    output: Annotated[str, typer.Argument(help="Output APK.")],
    key: KeyOpt,
    cert: CertOpt,
    password: PassOpt = None,
) -> None:
    """Add the developer's SM2 signature (the developer certificate comes from the channel)."""
    sk = load_private_key(read_input(key), password)
    layer = appsign.sign_developer(input, output, signer=sk.sign, certificates=_certs(cert))
    _show(
        {
            "signed": output,
            "package": layer.signed.package,
            "version_code": layer.signed.version_code,
            "content_digest": layer.signed.content_digest.hex(),
            "developer": layer.certificate.subject_str,
        }
    )


ChannelDirOpt = Annotated[
    str, typer.Option("--channel-dir", help="The channel's directory (`app channel init`).")
]
ChannelPassOpt = Annotated[
    str,
    typer.Option(
        "--channel-pass",
        help="Password wrapping the channel's keys.",
        envvar="MSTCRYPT_CHANNEL_PASS",
        prompt=True,
        hide_input=True,
    ),
]


@app.command("review")
def review(
    input: Annotated[str, typer.Argument(help="Developer-signed APK.")],
    channel_dir: ChannelDirOpt,
    channel_pass: ChannelPassOpt,
) -> None:
    """The channel's check: the developer signature verifies and the developer certificate
    was issued by this channel's CA (codeSigning, not revoked); logged."""
    rev = ChannelStore(channel_dir, channel_pass).review(input)
    _show({"review": "passed", **rev.summary()})


@app.command("countersign")
def countersign(
    input: Annotated[str, typer.Argument(help="Developer-signed APK.")],
    output: Annotated[str, typer.Argument(help="Output APK.")],
    channel_dir: ChannelDirOpt,
    channel_pass: ChannelPassOpt,
) -> None:
    """Review the package, then add the channel's SM2 signature over it and the
    developer's; logged."""
    store = ChannelStore(channel_dir, channel_pass)
    rev, layer = store.countersign(input, output)
    _show({"countersigned": output, "channel": layer.signed.channel, **rev.summary()})


@app.command("csr")
def csr(
    key: KeyOpt,
    cn: Annotated[str, typer.Option("--cn", help="Developer name (subject CN).")],
    out: Annotated[str, typer.Option("--out", help="Output CSR (PEM).")],
    org: Annotated[str | None, typer.Option("--org", help="Organisation (subject O).")] = None,
    password: PassOpt = None,
) -> None:
    """A developer's certificate request (PKCS#10, SM2) to register at the channel."""
    sk = load_private_key(read_input(key), password)
    subject = name(O=org, CN=cn) if org else name(CN=cn)
    write_output(out, build_csr(subject, sk.public_key(), sk.sign).pem)


channel_app = typer.Typer(
    help="A distribution channel: its CA, developer directory, CRL and review log.",
    no_args_is_help=True,
)
app.add_typer(channel_app, name="channel")


@channel_app.command("init")
def channel_init(
    channel_dir: ChannelDirOpt,
    channel: Annotated[str, typer.Option("--name", help="Channel name.")],
    org: Annotated[str, typer.Option("--org", help="Organisation running the channel.")],
    channel_pass: ChannelPassOpt,
) -> None:
    """Create the channel CA and the channel's App-signing key; print the terminal policy."""
    store = ChannelStore.init(channel_dir, channel=channel, password=channel_pass, organisation=org)
    write_output(
        str(Path(channel_dir) / "policy.json"), json.dumps(store.policy(), indent=1).encode()
    )
    _show({"channel": store.name, "policy": str(Path(channel_dir) / "policy.json")})


@channel_app.command("register")
def channel_register(
    csr_file: Annotated[str, typer.Argument(help="Developer CSR (PEM).")],
    out: Annotated[str, typer.Option("--out", help="Developer certificate (PEM).")],
    channel_dir: ChannelDirOpt,
    channel_pass: ChannelPassOpt,
    email: Annotated[str | None, typer.Option("--email", help="Developer e-mail (SAN).")] = None,
) -> None:
    """Issue a code-signing certificate to a developer (their CSR's signature checked)."""
    store = ChannelStore(channel_dir, channel_pass)
    cert = store.register_developer(
        CertificationRequest.from_pem(read_input(csr_file)), email=email
    )
    write_output(out, cert.pem)
    _show(
        {
            "registered": cert.subject_str,
            "serial": f"{cert.serial:x}",
            "key": appsign.key_fingerprint(cert),
        }
    )


@channel_app.command("list")
def channel_list(channel_dir: ChannelDirOpt, channel_pass: ChannelPassOpt) -> None:
    """The channel's developer directory."""
    _show(ChannelStore(channel_dir, channel_pass).developers())


@channel_app.command("revoke")
def channel_revoke(
    serial: Annotated[str, typer.Argument(help="Developer certificate serial (hex).")],
    channel_dir: ChannelDirOpt,
    channel_pass: ChannelPassOpt,
    reason: Annotated[str, typer.Option("--reason")] = "key_compromise",
) -> None:
    """Revoke a developer and publish the new CRL (DIR/crl.pem)."""
    crl = ChannelStore(channel_dir, channel_pass).revoke(serial, reason=reason)
    _show({"revoked": serial, "crl_number": crl.number})


@channel_app.command("crl")
def channel_crl(channel_dir: ChannelDirOpt, channel_pass: ChannelPassOpt) -> None:
    """Publish a fresh CRL (DIR/crl.pem) for the terminals."""
    crl = ChannelStore(channel_dir, channel_pass).publish_crl()
    _show({"crl_number": crl.number, "next_update": crl.next_update})


@channel_app.command("log")
def channel_log(channel_dir: ChannelDirOpt, channel_pass: ChannelPassOpt) -> None:
    """Check the hash chain of the review log and print it."""
    store = ChannelStore(channel_dir, channel_pass)
    n = store.check_log()
    _show({"records": n, "chain": "intact", "log": store.log()})


@app.command("verify")
def verify(
    input: Annotated[str, typer.Argument(help="APK to verify.")],
    policy: PolicyOpt,
    crl: CrlOpt = None,
) -> None:
    """The terminal's double verification under POLICY (exit 1 when refused)."""
    verdict = appsign.verify_package(input, appsign.Policy.from_file(policy), crls=_crls(crl))
    _show({"verified": True, **verdict.summary()})


def _cert_doc(cert: Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject_str,
        "issuer": cert.issuer_str,
        "serial": f"{cert.serial:x}",
        "not_after": cert.not_after.isoformat(),
        "fingerprint": cert.fingerprint,
        "key_fingerprint": appsign.key_fingerprint(cert),
        "extended_key_usage": list(cert.extended_key_usage),
    }


@app.command("inspect")
def inspect(input: Annotated[str, typer.Argument(help="APK to inspect.")]) -> None:
    """Show the signing block's pairs, both layers, their certificates and digests
    (nothing is verified)."""
    info = appsign.inspect(input)
    doc: dict[str, Any] = {
        "package": info.manifest.package,
        "version_code": info.manifest.version_code,
        "version_name": info.manifest.version_name,
        "content_digest": info.content_digest.hex(),
        "signing_block": {
            "offset": info.layout.block_offset,
            "size": info.layout.block_size,
            "pairs": [f"0x{p.id:08x} ({p.length} bytes)" for p in info.layout.pairs],
        },
        "developer": None,
        "channel": None,
    }
    if info.developer is not None:
        d = info.developer
        doc["developer"] = {
            "signed_at": d.signed.signed_at.isoformat(),
            "content_digest": d.signed.content_digest.hex(),
            "digest_matches": d.signed.content_digest == info.content_digest,
            "certificates": [_cert_doc(c) for c in d.certificates],
        }
    if info.channel is not None:
        c = info.channel
        doc["channel"] = {
            "name": c.signed.channel,
            "signed_at": c.signed.signed_at.isoformat(),
            "developer_layer_sm3": c.signed.developer_layer_sm3.hex(),
            "certificates": [_cert_doc(x) for x in c.certificates],
        }
    _show(doc)


@app.command("fingerprint")
def fingerprint(cert: Annotated[str, typer.Argument(help="Certificate (PEM).")]) -> None:
    """Print the key fingerprint a policy uses for a channel signer or a developer."""
    console.print(appsign.key_fingerprint(_one_cert(cert)), markup=False)


@app.command("install")
def install(
    input: Annotated[str, typer.Argument(help="APK to install.")],
    into: Annotated[str, typer.Option("--into", help="Install agent directory.")],
    policy: PolicyOpt,
    crl: CrlOpt = None,
) -> None:
    """Verify and install; refuses what fails verification or is a downgrade."""
    agent = appsign.InstallAgent(Path(into), appsign.Policy.from_file(policy), _crls(crl))
    inst = agent.install(input)
    _show({"installed": inst.package, "version_code": inst.version_code, "file_sm3": inst.file_sm3})


@app.command("launch")
def launch(
    package: Annotated[str, typer.Argument(help="Installed package name.")],
    root: Annotated[str, typer.Option("--from", help="Install agent directory.")],
    policy: PolicyOpt,
    crl: CrlOpt = None,
) -> None:
    """The check before launch: unchanged file, verdict cached by digest or re-verified."""
    agent = appsign.InstallAgent(Path(root), appsign.Policy.from_file(policy), _crls(crl))
    inst = agent.launch(package)
    _show({"launch": inst.package, "version_code": inst.version_code, "cached": inst.cached})

"""``mstcrypt token ...``: the MST-CC soft token (init, info, change-pin, unlock, recover,
discard-sealed, add-anchor, keygen)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mstcrypt.cli._common import console, fail, read_input, write_output
from mstcrypt.errors import MstCryptError
from mstcrypt.formats.keys import dump_public_key
from mstcrypt.module import KeyOrigin, KeyUsage, SoftToken
from mstcrypt.module.softtoken import anchor_fingerprint
from mstcrypt.pki import Certificate

app = typer.Typer(help="The terminal's soft token (MST-CC).", no_args_is_help=True)

TokenOpt = Annotated[str, typer.Option("--token", help="Path of the token file.")]
PinOpt = Annotated[
    str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN", help="PIN (prompted if absent).")
]
AnchorOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--anchor",
        help="A CA root certificate (PEM or DER file) to trust; repeatable.",
    ),
]
AnchorFpOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--anchor-fingerprint",
        help="SM3 fingerprint (hex) of a CA root certificate obtained out of band; the "
        "certificate fetched later is accepted only if it matches. Repeatable.",
    ),
]


def _pin(value: str | None, prompt: str, confirm: bool = False) -> str:
    if value is not None:
        return value
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


def _anchor_certs(paths: list[str] | None) -> list[bytes]:
    """Read --anchor files: each must be a CA certificate (the PKI layer parses it)."""
    out = []
    for path in paths or []:
        try:
            cert = Certificate.load(read_input(path))
        except MstCryptError as exc:
            fail(f"{path} is not a certificate: {exc}")
        if not cert.is_ca:
            fail(f"{path} is not a CA certificate ({cert.subject_str}); anchors are CA roots")
        out.append(cert.der)
    return out


@app.command("init")
def init(
    token: TokenOpt,
    pin: Annotated[
        str | None,
        typer.Option("--pin", envvar="MSTCRYPT_PIN", help="User PIN (prompted if absent)."),
    ] = None,
    admin_code: Annotated[
        str | None,
        typer.Option(
            "--admin-code",
            envvar="MSTCRYPT_ADMIN_CODE",
            help="Administrator unlock code (prompted if absent).",
        ),
    ] = None,
    label: Annotated[str, typer.Option("--label")] = "mstcrypt",
    max_retries: Annotated[int, typer.Option("--max-retries")] = 6,
    iterations: Annotated[
        int, typer.Option("--iterations", help="PBKDF2-HMAC-SM3 iterations (>= 100000).")
    ] = 200_000,
    anchor: AnchorOpt = None,
    anchor_fingerprint_: AnchorFpOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing token.")] = False,
) -> None:
    """Create an empty token protected by a PIN, with an administrator unlock code and
    the trust anchors (CA roots) preset."""
    anchors = _anchor_certs(anchor)
    p = _pin(pin, "New PIN", confirm=True)
    a = _pin(admin_code, "Administrator unlock code", confirm=True)
    tok = SoftToken.init(
        token,
        p,
        a,
        label=label,
        max_retries=max_retries,
        iterations=iterations,
        overwrite=force,
        anchors=anchors,
        anchor_fingerprints=anchor_fingerprint_ or [],
    )
    info = tok.info()
    console.print(f"token {info.serial} created at {info.path}")
    n = len(info.anchor_fingerprints) + len(info.anchor_pins)
    if not n:
        console.print(
            "warning: no trust anchor preset; add the CA root with "
            "`mstcrypt token add-anchor` before enrolling"
        )


def _escrow_text(tok: SoftToken, name: str, usage: KeyUsage) -> str:
    prov = tok.key_provenance(name, usage)
    if usage is KeyUsage.SIGN:
        return "-" if prov.origin is not KeyOrigin.IMPORTED else "imported"
    if prov.escrowed:
        return "KMC"
    if prov.escrowed is False:
        return "NOT escrowed"
    return "unknown (imported)" if prov.origin is KeyOrigin.IMPORTED else "unknown"


def _anchor_subject(der: bytes) -> str:
    try:
        return Certificate.from_der(der).subject_str
    except MstCryptError:
        return "(unparsable certificate)"


@app.command("info")
def info(
    token: TokenOpt,
    pin: Annotated[
        str | None,
        typer.Option(
            "--pin", envvar="MSTCRYPT_PIN", help="With the PIN, key details are listed too."
        ),
    ] = None,
) -> None:
    """Show the token's state, trust anchors, containers and sealed keys (key details
    and escrow state when the PIN is given)."""
    tok = SoftToken.open(token)
    i = tok.info()
    if i.locked:
        state = "LOCKED"
    elif i.sealed_recovery_locked:
        state = "usable; sealed keys can no longer be recovered (re-enroll, discard-sealed)"
    elif i.recovery_needed:
        state = "usable; keys sealed, recovery needed"
    else:
        state = "usable"
    t = Table(title="soft token", show_header=False)
    rows = [
        ("path", i.path),
        ("serial", i.serial),
        ("label", i.label),
        ("created", i.created),
        ("KDF", f"PBKDF2-HMAC-SM3, {i.iterations} iterations"),
        ("wrong PINs", f"{i.pin_failures} of {i.max_retries}"),
        ("state", state),
    ]
    if i.pin_change_required:
        rows.append(("PIN", "set by the administrator: change it before adding keys"))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)

    # plain lines (not a table): fingerprints must be copyable whole at any width
    console.print("trust anchors:", soft_wrap=True)
    for der in tok.anchors():
        console.print(
            f"  {_anchor_subject(der)}\n    SM3 {anchor_fingerprint(der)}", soft_wrap=True
        )
    for fp in i.anchor_pins:
        console.print(f"  (pinned; certificate not yet fetched)\n    SM3 {fp}", soft_wrap=True)
    if not tok.anchors() and not i.anchor_pins:
        console.print("  none: add the CA root with `mstcrypt token add-anchor`", soft_wrap=True)

    if i.sealed:
        st = Table(title="sealed keys (from an administrator unlock)")
        st.add_column("sealed at")
        st.add_column("containers needing recovery or re-enrollment")
        for s in i.sealed:
            names = ", ".join(f"{n} ({'+'.join(u)})" for n, u in s.containers.items())
            st.add_row(s.sealed_at, names or "(not recorded by this token's version)")
        console.print(st)
        console.print(
            "recover with the PIN valid before the unlock: `mstcrypt token recover`; "
            "or re-enroll (new signing key and certificate, the encryption key "
            "recovered from the KMC) and `mstcrypt token discard-sealed`",
            soft_wrap=True,
        )

    ct = Table(title="containers")
    ct.add_column("container")
    ct.add_column("usage")
    if pin is None:
        for name, usages in i.containers.items():
            ct.add_row(name, ", ".join(usages) or "-")
        console.print(ct)
        return
    tok.login(pin)
    ct.add_column("public key (x)")
    ct.add_column("certificate")
    ct.add_column("escrow")
    for name in tok.list_containers():
        for usage in KeyUsage:
            try:
                pub = tok.export_public_key(name, usage)
            except MstCryptError:
                continue  # a container may lack a key of this usage
            cert = tok.get_certificate(name, usage)
            ct.add_row(
                name,
                usage.value,
                pub.to_bytes()[1:17].hex() + "…",
                f"{len(cert)} bytes" if cert else "-",
                _escrow_text(tok, name, usage),
            )
    console.print(ct)


@app.command("change-pin")
def change_pin(
    token: TokenOpt,
    old_pin: Annotated[str | None, typer.Option("--old-pin")] = None,
    new_pin: Annotated[str | None, typer.Option("--new-pin")] = None,
) -> None:
    """Change the PIN and re-key the token (atomic: a crash leaves the old or the new PIN
    valid; an old copy of the file opens nothing written afterwards)."""
    tok = SoftToken.open(token)
    tok.change_pin(_pin(old_pin, "Current PIN"), _pin(new_pin, "New PIN", confirm=True))
    console.print("PIN changed")


@app.command("unlock")
def unlock(
    token: TokenOpt,
    admin_code: Annotated[str | None, typer.Option("--admin-code")] = None,
    new_pin: Annotated[str | None, typer.Option("--new-pin")] = None,
) -> None:
    """Unlock a locked token with the administrator code and set a new PIN. The keys are
    sealed: the administrator code opens none of them."""
    tok = SoftToken.open(token)
    tok.unlock(_pin(admin_code, "Administrator unlock code"), _pin(new_pin, "New PIN", True))
    console.print(
        "token unlocked, PIN reset; the keys are sealed: the user recovers them with the "
        "previous PIN (`mstcrypt token recover`) or re-enrolls; the user must change the "
        "new PIN before keys can be added"
    )


@app.command("recover")
def recover(
    token: TokenOpt,
    pin: PinOpt = None,
    old_pin: Annotated[
        str | None, typer.Option("--old-pin", help="The PIN valid before the unlock.")
    ] = None,
    new_pin: Annotated[
        str | None,
        typer.Option("--new-pin", help="PIN after recovery (default: the old PIN)."),
    ] = None,
) -> None:
    """Recover keys sealed by an administrator unlock by proving the previous PIN."""
    tok = SoftToken.open(token)
    tok.login(_pin(pin, "Current PIN"))
    names = tok.recover_sealed(_pin(old_pin, "PIN before the unlock"), new_pin=new_pin)
    console.print(f"recovered: {', '.join(names)}")


@app.command("discard-sealed")
def discard_sealed(
    token: TokenOpt,
    pin: PinOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Destroy the sealed keys (after re-enrollment, or when the old PIN is lost)."""
    tok = SoftToken.open(token)
    tok.login(_pin(pin, "PIN"))
    if not tok.info().sealed:
        console.print("no sealed keys")
        return
    if not yes and not typer.confirm("Destroy the sealed keys for good?"):
        fail("nothing destroyed")
    console.print(f"destroyed {tok.discard_sealed()} sealed key set(s)")


@app.command("add-anchor")
def add_anchor(
    token: TokenOpt,
    pin: PinOpt = None,
    anchor: AnchorOpt = None,
    anchor_fingerprint_: AnchorFpOpt = None,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Replace the token's trust anchors by the ones given here."),
    ] = False,
) -> None:
    """Store trust anchors (needs the PIN). A certificate matching a fingerprint pinned
    at initialisation fills it in; any other change of existing anchors needs --replace."""
    certs = _anchor_certs(anchor)
    fps = anchor_fingerprint_ or []
    if not certs and not fps:
        fail("give --anchor and/or --anchor-fingerprint")
    tok = SoftToken.open(token)
    tok.login(_pin(pin, "PIN"))
    if replace:
        tok.set_anchors(certs, fingerprints=fps, replace=True)
    else:
        pinned = set(tok.anchor_pins())
        rest = []
        for der in certs:
            if anchor_fingerprint(der) in pinned:
                tok.pin_anchor(der)
            elif der not in tok.anchors():
                rest.append(der)
        if rest or fps:
            tok.set_anchors(rest, fingerprints=fps)
    console.print(f"{len(tok.anchors())} trust anchor(s), {len(tok.anchor_pins())} pinned")


@app.command("keygen")
def keygen(
    token: TokenOpt,
    container: Annotated[str, typer.Option("--container")],
    pin: Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN")] = None,
    usage: Annotated[str, typer.Option("--usage", help="sign or enc")] = "sign",
    unescrowed: Annotated[
        bool,
        typer.Option(
            "--unescrowed",
            help="With --usage enc: make an encryption key the KMC does not escrow "
            "(recorded in the container; files encrypted to it are lost with the token).",
        ),
    ] = False,
    pubout: Annotated[str | None, typer.Option("--pubout")] = None,
) -> None:
    """Generate a key pair inside the token (creating the container if needed).

    Signing keys are made here. Encryption keys come from the KMC, which escrows them
    (enrollment or key distribution delivers them as an SM2EnvelopedKey)."""
    try:
        kind = KeyUsage(usage)
    except ValueError:
        fail(f"unknown --usage {usage!r}; expected sign or enc")
    if kind is KeyUsage.ENCRYPT and not unescrowed:
        fail(
            "encryption keys come from the KMC, which escrows them (enroll, or key "
            "distribution as an SM2EnvelopedKey); --unescrowed makes a local key that "
            "nobody can recover"
        )
    if kind is KeyUsage.SIGN and unescrowed:
        fail("--unescrowed applies to encryption keys only")
    tok = SoftToken.open(token)
    tok.login(_pin(pin, "PIN"))
    if container not in tok.list_containers():
        tok.create_container(container)
    h = tok.generate_key_pair(container, kind, escrowed=False if kind is KeyUsage.ENCRYPT else None)
    write_output(pubout, dump_public_key(h.public_key))

"""``mstcrypt boot keygen|provision|sign|verify|inspect|hashtree``: trusted boot
(T/ZSA 37-2020 §6.1, format in ``docs/trusted-boot.md``).

``verify`` runs :func:`mstcrypt.apps.boot.verify_chain`, the same code a device runs; it
exits 1 with ``stage: reason [code]`` at the first failure, and stores the new rollback
indexes in the device-state file only with ``--commit`` and only after success.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from mstcrypt.apps import boot
from mstcrypt.cli._common import (
    EXIT_INVALID,
    console,
    err_console,
    fail,
    open_token,
    read_input,
    write_secret,
)
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm3 import SM3, sm3
from mstcrypt.formats.keys import (
    dump_private_key,
    dump_public_key,
    load_private_key,
    load_public_key,
)

if TYPE_CHECKING:
    from mstcrypt.client import Client

app = typer.Typer(
    help="Trusted boot: signed stage manifests, hash trees, chain verification.",
    no_args_is_help=True,
)
hashtree_app = typer.Typer(help="SM3 hash trees (dm-verity format 1).", no_args_is_help=True)
app.add_typer(hashtree_app, name="hashtree")

PassOpt = Annotated[str | None, typer.Option("--pass", help="Password of the PEM PKCS#8 key.")]


def _pair(value: str, what: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        fail(f"{what} must be NAME=VALUE, got {value!r}")
    return name, rest


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")


@app.command("keygen")
def keygen(
    out: Annotated[str, typer.Option("--out", help="Private key file (PEM PKCS#8).")],
    pubout: Annotated[str, typer.Option("--pubout", help="Public key file (PEM).")],
    password: PassOpt = None,
) -> None:
    """Generate a stage signing key (ROM, kernel or next-level key); print the SM3 hash
    of its public key (the value fused for a ROM key)."""
    key = SM2PrivateKey.generate()
    write_secret(out, dump_private_key(key, password=password))
    Path(pubout).write_bytes(dump_public_key(key.public_key()))
    console.print(f"key hash (SM3): {sm3(key.public_key().to_bytes()).hex()}")


@app.command("provision")
def provision(
    rom_key: Annotated[str, typer.Option("--rom-key", help="ROM public key (PEM).")],
    state: Annotated[str, typer.Option("--state", help="Device-state file to create.")],
) -> None:
    """Create a device state: the fused ROM-key hash and 32 rollback slots at zero."""
    if Path(state).exists():
        fail(f"{state} exists; a device is provisioned once")
    st = boot.DeviceState.new(load_public_key(read_input(rom_key)))
    _atomic_write(state, st.to_json().encode())
    console.print(f"fused ROM key hash: {st.rom_key_hash.hex()}")


@app.command("sign")
def sign(
    stage: Annotated[str, typer.Option("--stage", help="Stage name (bootloader, kernel …).")],
    key: Annotated[str, typer.Option("--key", help="This stage's signing key (PEM).")],
    out: Annotated[str, typer.Option("--out", help="Manifest file to write.")],
    rollback_index: Annotated[int, typer.Option("--rollback-index", min=0)] = 0,
    rollback_location: Annotated[int, typer.Option("--rollback-location", min=0, max=31)] = 0,
    image: Annotated[
        list[str] | None, typer.Option("--image", help="NAME=PATH: an SM3-hashed image.")
    ] = None,
    hashtree: Annotated[
        list[str] | None,
        typer.Option("--hashtree", help="NAME=PATH: a hash-tree image; the tree goes to PATH.tree"),
    ] = None,
    block_size: Annotated[int, typer.Option("--block-size", help="Hash-tree block size.")] = 4096,
    chain: Annotated[
        str | None,
        typer.Option("--chain", help="NEXT:SLOT=PUBKEY.pem: the next stage and its key."),
    ] = None,
    password: PassOpt = None,
) -> None:
    """Sign a manifest for one stage."""
    skey = load_private_key(read_input(key), password)
    descs: list[boot.Descriptor] = []
    for spec in image or []:
        name, path = _pair(spec, "--image")
        with open(path, "rb") as f:
            h = SM3(salt := random_bytes(16))
            size = 0
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        descs.append(boot.HashDescriptor(name, size, salt, h.digest()))
    for spec in hashtree or []:
        name, path = _pair(spec, "--hashtree")
        if block_size & (block_size - 1) or not 4096 <= block_size <= 65536:
            fail("--block-size must be a power of two from 4096 to 65536")
        salt = random_bytes(32)
        with open(path, "rb") as f, open(path + ".tree", "wb") as t:
            info = boot.build(f, t, block_size=block_size, salt=salt)
        descs.append(
            boot.HashTreeDescriptor(
                name, info.layout.data_blocks * block_size, block_size.bit_length() - 1,
                salt, info.layout.tree_size, info.root,
            )
        )  # fmt: skip
    if chain:
        head, pub = _pair(chain, "--chain")
        nxt, sep, slot = head.partition(":")
        if not sep or not slot.isdigit():
            fail("--chain must be NEXT:SLOT=PUBKEY.pem")
        descs.append(boot.ChainDescriptor(nxt, int(slot), load_public_key(read_input(pub))))
    m = boot.Manifest.build(
        stage, descs, rollback_index=rollback_index, rollback_location=rollback_location, key=skey
    )
    _atomic_write(out, m.raw)
    console.print(f"{stage}: {len(descs)} descriptors, manifest SM3 {m.digest.hex()}")


def _describe(m: boot.Manifest) -> dict[str, object]:
    out: list[dict[str, object]] = []
    for d in m.descriptors:
        if isinstance(d, boot.HashDescriptor):
            out.append({"type": "hash", "image": d.name, "size": d.image_size,
                        "salt": d.salt.hex(), "digest": d.digest.hex()})  # fmt: skip
        elif isinstance(d, boot.HashTreeDescriptor):
            out.append({"type": "hashtree", "image": d.name, "size": d.image_size,
                        "block_size": d.block_size, "salt": d.salt.hex(),
                        "tree_size": d.tree_size, "root": d.root.hex()})  # fmt: skip
        else:
            out.append({"type": "chain", "stage": d.name, "rollback_location": d.rollback_location,
                        "key_hash": sm3(d.public_key.to_bytes()).hex()})  # fmt: skip
    return {
        "stage": m.stage,
        "rollback_location": m.rollback_location,
        "rollback_index": m.rollback_index,
        "signer_key_hash": sm3(m.signer_key.to_bytes()).hex(),
        "manifest_sm3": m.digest.hex(),
        "descriptors": out,
    }


@app.command("inspect")
def inspect(
    manifest: Annotated[str, typer.Argument(help="Manifest file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a manifest's fields (structure checked, trust NOT checked: use verify)."""
    info = _describe(boot.Manifest.parse(read_input(manifest)))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    console.print(f"stage {info['stage']} (not verified; use 'mstcrypt boot verify')")
    for k, v in info.items():
        if k not in ("stage", "descriptors"):
            console.print(f"  {k}: {v}")
    for d in info["descriptors"]:
        console.print("  - " + ", ".join(f"{k}={v}" for k, v in d.items()))


@app.command("verify")
def verify(
    state: Annotated[str, typer.Option("--state", help="Device-state file (from provision).")],
    manifest: Annotated[
        list[str],
        typer.Option("--manifest", help="[STAGE=]PATH of a stage manifest (repeat)."),
    ],
    image: Annotated[
        list[str] | None, typer.Option("--image", help="NAME=PATH of a stage image (repeat).")
    ] = None,
    tree: Annotated[
        list[str] | None, typer.Option("--tree", help="NAME=PATH of a hash tree (repeat).")
    ] = None,
    first: Annotated[str, typer.Option("--first", help="Stage the ROM loads.")] = "bootloader",
    full: Annotated[bool, typer.Option("--full", help="Verify every hash-tree block.")] = False,
    commit: Annotated[
        bool, typer.Option("--commit", help="Store the new rollback indexes on success.")
    ] = False,
    log_out: Annotated[
        str | None, typer.Option("--log-out", help="Write the measurement event log (JSON).")
    ] = None,
) -> None:
    """Verify the boot chain exactly as the device does; stop at the first failure."""
    st = boot.DeviceState.from_json(read_input(state))
    manifests: dict[str, bytes] = {}
    for spec in manifest:
        stage, sep, path = spec.partition("=")
        if not sep:  # PATH alone: the stage is the one the manifest names
            stage, path = "", spec
        raw = read_input(path)
        if not stage:
            try:
                stage = boot.Manifest.parse(raw).stage
            except boot.BootError as exc:  # unknown stage: say so, the chain decides
                err_console.print(f"note: {path}: {exc.reason} (use --manifest STAGE={path})")
                continue
        manifests[stage] = raw
    images = dict(_pair(s, "--image") for s in image or [])
    trees = dict(_pair(s, "--tree") for s in tree or [])
    try:
        with boot.verify_chain(
            st, manifests, images, trees=trees, first=first, full_hashtree=full
        ) as result:
            for m in result.manifests:
                console.print(
                    f"{m.stage}: OK (rollback {m.rollback_index} in slot {m.rollback_location})"
                )
            console.print(f"PCR: {result.log.pcr.hex()}")
            if log_out:
                _atomic_write(log_out, result.log.to_json().encode())
            if commit:
                st.commit(result)
                _atomic_write(state, st.to_json().encode())
                console.print("rollback indexes stored")
    except boot.BootError as exc:
        err_console.print(
            f"[red]boot stopped[/red] at {exc.stage}: {escape(exc.reason)} \\[{exc.code}]"
        )
        raise typer.Exit(EXIT_INVALID) from None
    except OSError as exc:
        fail(f"cannot read {exc.filename}: {exc.strerror}")


@hashtree_app.command("build")
def hashtree_build(
    image: Annotated[str, typer.Option("--image", help="Image file.")],
    tree: Annotated[str, typer.Option("--tree", help="Tree file to write.")],
    block_size: Annotated[int, typer.Option("--block-size")] = 4096,
    salt: Annotated[str, typer.Option("--salt", help="Salt, hex.")] = "",
) -> None:
    """Build the SM3 hash tree of an image (veritysetup --format=1 --hash=sm3 layout)."""
    try:
        s = bytes.fromhex(salt)
    except ValueError:
        fail("--salt must be hexadecimal")
    with open(image, "rb") as f, open(tree, "wb") as t:
        info = boot.build(f, t, block_size=block_size, salt=s)
    console.print(f"root: {info.root.hex()}")
    console.print(f"tree size: {info.layout.tree_size}, levels: {len(info.layout.level_blocks)}")


@hashtree_app.command("verify")
def hashtree_verify(
    manifest: Annotated[str, typer.Option("--manifest", help="Manifest with the descriptor.")],
    key: Annotated[str, typer.Option("--key", help="Public key that must have signed it.")],
    name: Annotated[str, typer.Option("--name", help="Image name in the manifest.")],
    image: Annotated[str, typer.Option("--image", help="Image file.")],
    tree: Annotated[str, typer.Option("--tree", help="Its hash tree.")],
    block: Annotated[
        list[int] | None, typer.Option("--block", help="Block to verify (repeat); default all.")
    ] = None,
) -> None:
    """Verify blocks of a hash-tree image in O(log n) each (or all of them), against a
    manifest signed by --key."""
    m = boot.Manifest.parse(read_input(manifest))
    pub = load_public_key(read_input(key))
    if m.signer_key != pub:
        fail("the manifest is not signed by --key", EXIT_INVALID)
    pub.verify(m.signature, m.tbs)
    desc = next((d for d in m.images if d.name == name), None)
    if not isinstance(desc, boot.HashTreeDescriptor):
        fail(f"no hashtree descriptor {name!r} in {manifest}")
    with open(image, "rb") as fi, open(tree, "rb") as ft:
        ht = boot.HashTree(desc, fi, ft)
        try:
            if block:
                for b in block:
                    ht.read_block(b)
                    console.print(f"block {b}: OK")
            else:
                ht.verify_all()
                console.print(f"all {ht.blocks} blocks: OK")
        except boot.HashTreeError as exc:
            err_console.print(f"[red]hash tree:[/red] {escape(exc.reason)}")
            raise typer.Exit(EXIT_INVALID) from None


@app.command("attest")
def attest(
    server: Annotated[
        str, typer.Option("--server", envvar="MSTCRYPT_SERVER", help="Platform URL.")
    ],
    token: Annotated[str, typer.Option("--token", help="Soft token file.")],
    log: Annotated[str, typer.Option("--log", help="Event log from 'boot verify --log-out'.")],
    pin: Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN")] = None,
    container: Annotated[str, typer.Option("--container")] = "main",
    server_name: Annotated[str, typer.Option("--server-name")] = "mstcrypt-login",
    ca_file: Annotated[str | None, typer.Option("--ca-file", help="Pinned root CA (PEM).")] = None,
) -> None:
    """Log in with the token, quote the measured boot to the platform, print its verdict;
    exit 1 unless the platform judged the boot trusted."""
    from mstcrypt.cli.platform import _anchors
    from mstcrypt.client import Client, ServiceError

    events = boot.EventLog.from_json(read_input(log)).events
    tok = open_token(token, pin)
    with Client(server, anchors=_anchors(ca_file, tok)) as c:
        session = c.login(tok, container=container, server_name=server_name)["session_token"]
        try:
            verdict = c.boot_attest(session, tok, events, container=container)
        except ServiceError as exc:
            if exc.status != 403:
                raise
            err_console.print(f"[red]quote rejected:[/red] {escape(exc.detail)}")
            raise typer.Exit(EXIT_INVALID) from None
    console.print(f"verdict: {verdict['status']} (model {verdict['model']})")
    for reason in verdict["reasons"]:
        console.print(f"  - {escape(reason)}")
    if verdict["status"] != "trusted":
        raise typer.Exit(EXIT_INVALID)


ServerOpt = Annotated[str, typer.Option("--server", envvar="MSTCRYPT_SERVER", help="Platform URL.")]
SessionOpt = Annotated[
    str, typer.Option("--session", help="File holding the operator's session token.")
]
CaOpt = Annotated[
    str, typer.Option("--ca-file", help="Root CA (PEM) the platform's certificate must chain to.")
]


def _operator_client(server: str, session: str, ca_file: str) -> Client:
    from mstcrypt.cli.platform import officer_client

    return officer_client(server, session, ca_file)


@app.command("golden")
def golden(
    server: ServerOpt,
    session: SessionOpt,
    ca_file: CaOpt,
    model: Annotated[str, typer.Option("--model", help="Device model.")],
    manifest: Annotated[list[str], typer.Option("--manifest", help="An approved manifest.")],
) -> None:
    """Approve stage manifests as golden values of a device model (administrator)."""
    parsed = [boot.Manifest.parse(read_input(p)) for p in manifest]
    with _operator_client(server, session, ca_file) as c:
        for m in parsed:
            c.boot_add_golden(model, m.stage, m.digest)
            console.print(f"{model}: {m.stage} {m.digest.hex()} approved")


@app.command("device")
def device(
    server: ServerOpt,
    session: SessionOpt,
    ca_file: CaOpt,
    owner: Annotated[str, typer.Option("--owner", help="Terminal owner.")],
    model: Annotated[str, typer.Option("--model", help="Its device model.")],
) -> None:
    """Record a terminal's device model (registration officer)."""
    with _operator_client(server, session, ca_file) as c:
        c.boot_set_device_model(owner, model)
    console.print(f"{owner}: model {model}")


@app.command("verdicts")
def verdicts(
    server: ServerOpt,
    session: SessionOpt,
    ca_file: CaOpt,
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner.")] = None,
) -> None:
    """Recent attestation verdicts (auditor, administrator)."""
    with _operator_client(server, session, ca_file) as c:
        rows = c.boot_attestations(owner)
    for r in rows:
        console.print(f"{r['at']} {r['owner']} {r['model'] or '-'} {r['status']}")
        for reason in r["reasons"]:
            console.print(f"    {escape(reason)}")

"""``mstcrypt wapi asu | ap | sta | inspect``: WAPI (WAI + WPI, SM suite) between a
terminal and an access point through an authentication server, on real Ethernet
interfaces; and a decoder for captured WAI frames."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mstcrypt.cli._common import EXIT_INVALID, console, err_console, fail, read_input
from mstcrypt.errors import MstCryptError

__all__ = ["app"]

app = typer.Typer(
    help="WAPI WLAN access (guide 6.3): ASU, access point, terminal; inspect WAI captures.",
    no_args_is_help=True,
)

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="TOML role configuration file.")]
PassOpt = Annotated[
    str | None,
    typer.Option("--pass", envvar="MSTCRYPT_KEY_PASS", help="Password of the PEM private key."),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log each event to stderr.")]


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _stopper() -> Any:
    stop = {"flag": False}

    def handler(*_: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return lambda: stop["flag"]


@app.command("asu")
def asu_command(config: ConfigOpt, password: PassOpt = None, verbose: VerboseOpt = False) -> None:
    """Run the authentication server (ASU): certificate verdicts over UDP."""
    from mstcrypt.apps.wapi import config as cf
    from mstcrypt.apps.wapi.runtime import AsuServer

    _logging(verbose)
    try:
        cfg = cf.load(config, "asu", password)
        server = AsuServer(cf.build_asu(cfg), str(cfg.need("listen")))
    except (MstCryptError, OSError) as e:
        fail(str(e))
    err_console.print(f"ASU listening on {cfg.need('listen')}")
    server.serve(stop=_stopper())


@app.command("ap")
def ap_command(config: ConfigOpt, password: PassOpt = None, verbose: VerboseOpt = False) -> None:
    """Run the access point (AE) on an Ethernet interface."""
    from mstcrypt.apps.wapi import config as cf
    from mstcrypt.apps.wapi.runtime import ApRunner, RawLink

    _logging(verbose)
    try:
        cfg = cf.load(config, "ap", password)
        link = RawLink(str(cfg.need("interface")))
        point = cf.build_ap(cfg, link.mac)
        rd = cfg.get("receive_dir")
        runner = ApRunner(
            point, link, str(cfg.need("asu")), receive_dir=cfg.base / rd if rd else None
        )
    except (MstCryptError, OSError) as e:
        fail(str(e))
    err_console.print(f"AP {link.mac.hex(':')} on {cfg.need('interface')}")
    runner.serve(stop=_stopper())


@app.command("sta")
def sta_command(
    config: ConfigOpt,
    password: PassOpt = None,
    send: Annotated[str | None, typer.Option("--send", help="File to send over WPI.")] = None,
    ping: Annotated[int, typer.Option("--ping", help="Echo requests over WPI.")] = 0,
    verbose: VerboseOpt = False,
) -> None:
    """Associate a terminal (ASUE), authenticate, then move data over WPI."""
    from mstcrypt.apps.wapi import config as cf
    from mstcrypt.apps.wapi.runtime import RawLink, StaRunner, WapiRunError

    _logging(verbose)
    try:
        cfg = cf.load(config, "sta", password)
        link = RawLink(str(cfg.need("interface")))
        runner = StaRunner(cf.asue_factory(cfg, link.mac), link, cfg.ie())
    except (MstCryptError, OSError) as e:
        fail(str(e))
    timeout = float(cfg.get("timeout", 10))
    try:
        runner.associate(timeout=timeout)
        assert runner.ap is not None
        suite = "standard suite" if cfg.suite.name == "standard" else "SM suite"
        console.print(f"associated with {runner.ap.hex(':')} (WAI, {suite})")
        if send is not None:
            digest = runner.send_file(read_input(send), timeout=timeout)
            console.print(f"sent {send} over WPI; the AP confirmed SM3 {digest.hex()}")
        if ping:
            rtts = runner.ping(ping, timeout=timeout)
            console.print(f"{len(rtts)} echo replies over WPI, max {max(rtts) * 1000:.1f} ms")
    except WapiRunError as e:
        err_console.print(f"[red]refused:[/red] {e}", markup=True)
        raise typer.Exit(EXIT_INVALID) from None


@app.command("issue")
def issue_command(
    cn: Annotated[str, typer.Option("--cn", help="Subject common name.")],
    out: Annotated[str, typer.Option("--out", help="Writes OUT.pem and OUT.key.")],
    issuer_cert: Annotated[
        str | None, typer.Option("--issuer-cert", help="The ASU's certificate (PEM).")
    ] = None,
    issuer_key: Annotated[
        str | None, typer.Option("--issuer-key", help="The ASU's private key (PEM).")
    ] = None,
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 730,
    password: PassOpt = None,
) -> None:
    """Standard suite: a key on the WAPI 192-bit curve and its certificate, signed by the
    ASU (ECDSA-192/SHA-256); without --issuer-*, the ASU's own self-issued certificate."""
    import secrets
    from datetime import UTC, datetime, timedelta

    from mstcrypt.cli._common import write_output, write_secret
    from mstcrypt.crypto import wapi192
    from mstcrypt.formats._der import pem_decode, pem_encode
    from mstcrypt.formats.wapi_keys import dump_wapi_private_key, load_wapi_private_key
    from mstcrypt.protocols.wai import certs
    from mstcrypt.protocols.wai.suites import cert_info

    if not password:
        fail("the new private key needs a password (--pass or MSTCRYPT_KEY_PASS)")
    if (issuer_cert is None) != (issuer_key is None):
        fail("--issuer-cert and --issuer-key go together")
    key = wapi192.PrivateKey.generate()
    try:
        if issuer_cert is None or issuer_key is None:
            ikey, icn = key, cn
        else:
            ikey = load_wapi_private_key(read_input(issuer_key), password)
            ider = pem_decode(read_input(issuer_cert), ("CERTIFICATE",))[1]
            if cert_info(ider).public_point != ikey.public_key().to_bytes():
                fail("the issuer key does not match the issuer certificate")
            icn = _common_name(ider)
        now = datetime.now(UTC)
        der = certs.issue(
            subject_cn=cn,
            public_key=key.public_key(),
            issuer_cn=icn,
            issuer_key=ikey,
            serial=secrets.randbits(63) | 1,
            not_before=now - timedelta(minutes=5),
            not_after=now + timedelta(days=days),
        )
    except MstCryptError as e:
        fail(str(e), EXIT_INVALID)
    write_output(out + ".pem", pem_encode(der, "CERTIFICATE"))
    write_secret(out + ".key", dump_wapi_private_key(key, password))
    console.print(f"wrote {out}.pem and {out}.key (serial {certs.serial_of(der):x})")


def _common_name(der: bytes) -> str:
    from mstcrypt.protocols.wai import certs

    return certs.subject_cn(der)


@app.command("inspect")
def inspect_command(
    pcap: Annotated[str, typer.Argument(help="pcap file of Ethernet frames.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per WAI packet.")
    ] = False,
) -> None:
    """Decode the WAI packets (EtherType 0x88B4) of a capture, reassembling fragments."""
    from mstcrypt.protocols.wai import messages as m
    from mstcrypt.protocols.wai import pcap as pc
    from mstcrypt.protocols.wai.constants import ETHERTYPE_WAI, Subtype

    data = Path(pcap).read_bytes() if pcap != "-" else read_input("-")
    reasm: dict[bytes, m.Reassembler] = {}
    bad = 0
    try:
        frames = list(pc.read_pcap(data))
    except MstCryptError as e:
        fail(str(e), EXIT_INVALID)
    for n, (ts, frame) in enumerate(frames, 1):
        try:
            dst, src, et, payload = pc.parse_ethernet(frame)
            if et != ETHERTYPE_WAI:
                continue
            whole = reasm.setdefault(src, m.Reassembler()).feed(payload)
            if whole is None:
                continue
            h, msg = m.decode_packet(whole)
        except MstCryptError as e:
            bad += 1
            console.print(f"#{n} malformed: {e}")
            continue
        fields = {k: _show(v) for k, v in m.iter_fields(msg)}
        if as_json:
            rec = {"frame": n, "time": ts, "src": src.hex(":"), "dst": dst.hex(":")}
            rec |= {"subtype": Subtype(h.subtype).name.lower(), "seq": h.seq, "fields": fields}
            console.print_json(json.dumps(rec))
        else:
            name = Subtype(h.subtype).name.lower()
            console.print(f"#{n} {src.hex(':')} -> {dst.hex(':')} {name} seq={h.seq}")
            for k, v in fields.items():
                console.print(f"    {k}: {v}")
    if bad:
        raise typer.Exit(EXIT_INVALID)


def _show(v: object) -> Any:
    if isinstance(v, bytes | bytearray):
        return v.hex() if len(v) <= 64 else f"{v[:32].hex()}… ({len(v)} bytes)"
    if isinstance(v, tuple):
        return [_show(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _show(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, int):
        return int(v)
    return str(v)

"""``mstcrypt voice``: encrypted calls between enrolled terminals (guide §7.1).

``voice serve`` runs the platform, whose ``/voice`` routes are the call server;
``voice answer`` waits for a call and records what it hears; ``voice call USER`` calls
and plays a WAV file; ``voice relay`` forwards one direction of UDP media with loss,
reordering, duplication and replay for trying a call on a bad network.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from mstcrypt.cli import platform
from mstcrypt.cli._common import console, fail, open_token

app = typer.Typer(help="Encrypted voice calls: call server, call, answer, test relay.",
                  no_args_is_help=True)  # fmt: skip
app.command("serve")(platform.serve_command)

ServerOpt = Annotated[str, typer.Option("--server", help="Platform (call server) URL.")]
TokenOpt = Annotated[str, typer.Option("--token", help="Soft token file of this terminal.")]
PinOpt = Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN")]
ContainerOpt = Annotated[str, typer.Option("--container")]
CaOpt = Annotated[str | None, typer.Option("--ca-file", help="Pinned root CA (PEM).")]
AdvertiseOpt = Annotated[
    str | None,
    typer.Option("--advertise", help="Media address HOST:PORT to give the peer (NAT, relay)."),
]
MediaHostOpt = Annotated[str, typer.Option("--media-host", help="Bind UDP media here.")]
MediaPortOpt = Annotated[int, typer.Option("--media-port", help="UDP media port (0: any).")]
PaceOpt = Annotated[float, typer.Option("--pace", help="Frame pacing factor (1 = real time).")]
ProfileOpt = Annotated[
    list[str] | None,
    typer.Option("--profile", help="SRTP profiles in order of preference (repeatable)."),
]


def _phone(server: str, token: str, pin: str | None, container: str, ca_file: str | None,
           media_host: str, media_port: int, advertise: str | None,
           profiles: list[str] | None) -> Any:  # fmt: skip
    from mstcrypt.apps.voice import DEFAULT_PROFILES, CallParty
    from mstcrypt.apps.voice.phone import Phone
    from mstcrypt.apps.voice.signalling import SignallingClient
    from mstcrypt.client import Client
    from mstcrypt.module import KeyUsage
    from mstcrypt.pki import Certificate

    tok = open_token(token, pin)
    anchors = platform._anchors(ca_file, tok)
    with Client(server, anchors=anchors) as c:
        session = c.login(tok, container=container)
        intermediates, crls = c.trusted_chain()
    cert_der = tok.get_certificate(container, KeyUsage.ENCRYPT)
    if cert_der is None:
        fail(f"container {container!r} has no encryption certificate: enroll first")
    party = CallParty(
        identity=session["owner"] if session.get("owner") else container,
        module=tok, handle=tok.key(container, KeyUsage.ENCRYPT),
        certificate=Certificate.from_der(cert_der), anchors=anchors,
        intermediates=intermediates, crls=crls,
        profiles=tuple(profiles) if profiles else DEFAULT_PROFILES,
    )  # fmt: skip
    sig = SignallingClient(server, session["session_token"], anchors=anchors)
    return Phone(party, sig, media_host=media_host, media_port=media_port, advertise=advertise)


def _report(r: Any, record: str | None) -> None:
    from mstcrypt.apps.voice.media import SAMPLE_RATE, write_wav

    s = r.rx_stats
    console.print(
        f"call {r.call_id} with {r.peer}: profile {r.profile}; sent {r.sent_packets} packets; "
        f"received {s.rtp_unprotected} ({len(r.received_pcm) / 2 / SAMPLE_RATE:.2f} s of audio); "
        f"dropped {s.dropped} (authentication {s.auth_failures}, replay {s.replays}, "
        f"malformed {s.malformed})"
    )
    if r.remote_sent is not None:
        lost = max(0, r.remote_sent - s.rtp_unprotected)
        console.print(f"the peer reported {r.remote_sent} packets sent (RTCP): {lost} lost")
    if record:
        write_wav(record, r.received_pcm)
        console.print(f"received audio written to {record}")


@app.command("call")
def call_command(
    user: Annotated[str, typer.Argument(help="The user to call.")],
    server: ServerOpt,
    token: TokenOpt,
    play: Annotated[Path, typer.Option("--play", help="WAV file to send (speech).")],
    pin: PinOpt = None,
    container: ContainerOpt = "main",
    ca_file: CaOpt = None,
    record: Annotated[
        str | None, typer.Option("--record", help="Write what the callee sends.")
    ] = None,
    media_host: MediaHostOpt = "127.0.0.1",
    media_port: MediaPortOpt = 0,
    advertise: AdvertiseOpt = None,
    pace: PaceOpt = 1.0,
    profile: ProfileOpt = None,
    answer_timeout: Annotated[float, typer.Option("--answer-timeout")] = 60.0,
) -> None:
    """Call USER through the call server, send the WAV file, hang up."""
    from mstcrypt.apps.voice.media import read_wav

    pcm = read_wav(play)
    phone = _phone(
        server, token, pin, container, ca_file, media_host, media_port, advertise, profile
    )
    try:
        r = asyncio.run(phone.call(user, pcm, pace=pace, answer_timeout=answer_timeout))
    finally:
        phone.sig.close()
    _report(r, record)


@app.command("answer")
def answer_command(
    server: ServerOpt,
    token: TokenOpt,
    record: Annotated[str, typer.Option("--record", help="Write the received audio (WAV).")],
    pin: PinOpt = None,
    container: ContainerOpt = "main",
    ca_file: CaOpt = None,
    play: Annotated[Path | None, typer.Option("--play", help="WAV file to send back.")] = None,
    media_host: MediaHostOpt = "127.0.0.1",
    media_port: MediaPortOpt = 0,
    advertise: AdvertiseOpt = None,
    pace: PaceOpt = 1.0,
    profile: ProfileOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for a call.")
    ] = 120.0,
) -> None:
    """Wait for one call, accept it if the caller's certificate checks out, record."""
    from mstcrypt.apps.voice.media import read_wav

    pcm = read_wav(play) if play else b""
    phone = _phone(
        server, token, pin, container, ca_file, media_host, media_port, advertise, profile
    )
    console.print("registered; waiting for a call", highlight=False)
    try:
        r = asyncio.run(phone.answer(pcm, pace=pace, timeout=timeout))
    finally:
        phone.sig.close()
    _report(r, record)


@app.command("relay")
def relay_command(
    to: Annotated[str, typer.Option("--to", help="Forward to HOST:PORT.")],
    port: Annotated[int, typer.Option("--port", help="Listen on this UDP port (0: any).")] = 0,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    loss: Annotated[float, typer.Option("--loss")] = 0.0,
    reorder: Annotated[float, typer.Option("--reorder")] = 0.0,
    duplicate: Annotated[float, typer.Option("--duplicate")] = 0.0,
    replay: Annotated[float, typer.Option("--replay")] = 0.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    duration: Annotated[float, typer.Option("--duration", help="Stop after N seconds.")] = 600.0,
    pcap: Annotated[
        str | None, typer.Option("--pcap", help="Write what arrived as a pcap (tshark).")
    ] = None,
) -> None:
    """Forward UDP media to --to with injected loss, reordering, duplicates, replays."""
    from mstcrypt.apps.voice.transport import UdpRelay, write_pcap

    th, _, tp = to.rpartition(":")
    if not th or not tp.isdigit():
        fail("--to is HOST:PORT")

    async def run() -> Any:
        relay = UdpRelay((th, int(tp)), loss=loss, reorder=reorder, duplicate=duplicate,
                         replay=replay, seed=seed, host=host, port=port,
                         record=pcap is not None)  # fmt: skip
        addr = await relay.start()
        console.print(f"relay {addr[0]}:{addr[1]} -> {to}", highlight=False)
        try:
            await asyncio.sleep(duration)
        finally:
            relay.close()
            if pcap:
                write_pcap(pcap, relay.stats.seen, ("127.0.0.1", 9), addr)
        return relay.stats

    try:
        st = asyncio.run(run())
    except KeyboardInterrupt:
        return
    console.print(f"forwarded {st.forwarded}, dropped {st.dropped}, reordered {st.reordered}, "
                  f"duplicated {st.duplicated}, replayed {st.replayed}")  # fmt: skip

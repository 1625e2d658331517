"""``mstcrypt im …`` (a terminal in a messaging group) and ``mstcrypt ims serve`` (the IMS
server): guide §7.5 and Annex D. The commands only parse, call :mod:`mstcrypt.apps.im`
and print."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from mstcrypt.cli._common import fail, open_token
from mstcrypt.cli.platform import DataDir, _anchors, _kmc, console

app = typer.Typer(
    help="Secure instant messaging (guide 7.5, Annex D): chat, send, listen, history, groups.",
    no_args_is_help=True,
)
ims_app = typer.Typer(help="The IMS server (guide 7.5).", no_args_is_help=True)
group_app = typer.Typer(help="Groups: list yours; create and change (registration officer).")
app.add_typer(group_app, name="group")

ServerOpt = Annotated[str, typer.Option("--server", envvar="MSTCRYPT_SERVER", help="Platform URL.")]
ImsOpt = Annotated[str, typer.Option("--ims", envvar="MSTCRYPT_IMS", help="IMS server URL.")]
TokenOpt = Annotated[str, typer.Option("--token", help="Soft token file.")]
PinOpt = Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN")]
CaOpt = Annotated[str | None, typer.Option("--ca-file", help="Pinned root CA (PEM).")]
StateOpt = Annotated[
    str | None,
    typer.Option("--state", help="Local store (default: <token>.im), sealed to the token."),
]


class _Session:
    """Token opened with the PIN, logged in to the platform, SDK client on the IMS."""

    def __init__(
        self,
        server: str,
        ims: str,
        token: str,
        pin: str | None,
        ca_file: str | None,
        state: str | None,
    ) -> None:
        from mstcrypt.apps.im.terminal import Identity, ImClient
        from mstcrypt.client import Client
        from mstcrypt.module import KeyUsage
        from mstcrypt.pki import Certificate

        tok = open_token(token, pin)
        anchors = _anchors(ca_file, tok)
        self.platform = Client(server, anchors=anchors)
        session = self.platform.login(tok)["session_token"]
        cert = Certificate.from_der(tok.get_certificate("main", KeyUsage.SIGN) or b"")
        member = self.platform.session(session).get("owner") or cert.subject_str
        tlcp: dict[str, Any] = {}
        if ims.startswith("https://"):  # through the TLCP gateway: HTTP and WebSocket
            from mstcrypt.protocols.tlcp import Credentials

            tlcp = {"anchors": anchors, "client_credentials": Credentials.from_module(tok, "main")}
        self.im = ImClient(
            ims,
            identity=Identity.from_token(tok, str(member)),
            platform=self.platform,
            session_token=session,
            state_path=state or f"{token}.im",
            **tlcp,
        )
        tail = self.im.store.tail if self.im.store is not None else "new"
        if tail in ("torn", "unclosed"):
            why = (
                "a partial last record was dropped"
                if tail == "torn"
                else "a crash, or records cut off its end"
            )
            console.print(
                "[yellow]note: the local IM store was not closed cleanly last time "
                f"({why})[/yellow]"
            )

    def close(self) -> None:
        self.im.close()
        self.platform.close()


@contextlib.contextmanager
def _session(*args: Any) -> Iterator[Any]:
    from mstcrypt.errors import MstCryptError

    try:
        s = _Session(*args)
    except MstCryptError as exc:
        fail(f"cannot start the session: {exc}")
    try:
        yield s.im
    except MstCryptError as exc:
        fail(str(exc))
    finally:
        s.close()


def _describe(r: Any) -> str:
    """One line for a received message; everything from the network is escaped (no
    console markup from a sender)."""
    from rich.markup import escape as e

    from mstcrypt.apps.im import ImError
    from mstcrypt.apps.im.content import FileRef, Reaction, Reply, Text

    if isinstance(r, ImError):
        return f"[red]refused[/red] ({e(r.code)}): {e(str(r))}"
    from mstcrypt.apps.im.content import Delete, Edit, Location, Poll, Vote

    c, env = r.content, r.message.envelope
    head = (
        f"#{r.pos} {e(env.group)} \\[{env.message_id.hex()[:8]}] <{e(r.sender)}> "
        f"(v{env.key_version})"
    )
    if r.gap:
        head += f" [yellow]{r.gap} earlier message(s) of this device missing[/yellow]"
    if isinstance(c, Text):
        return f"{head} {e(c.text)}"
    if isinstance(c, Reply):
        return f"{head} ↪{c.ref.hex()[:8]} {e(c.text)}"
    if isinstance(c, FileRef):
        return f"{head} \\[file] {e(c.name)} ({e(c.media_type)}, {c.size} bytes) {e(c.caption)}"
    if isinstance(c, Reaction):
        return f"{head} {'-' if c.remove else '+'}{e(c.emoji)} on {c.ref.hex()[:8]}"
    if isinstance(c, Edit):
        return f"{head} \\[edit of {c.ref.hex()[:8]}] {e(c.text)}"
    if isinstance(c, Delete):
        return f"{head} \\[deleted {c.ref.hex()[:8]}]"
    if isinstance(c, Poll):
        opts = "  ".join(f"{i}) {e(o)}" for i, o in enumerate(c.options))
        return f"{head} \\[poll] {e(c.question)}  {opts}"
    if isinstance(c, Vote):
        return f"{head} \\[vote {c.choice} on {c.ref.hex()[:8]}]"
    if isinstance(c, Location):
        return f"{head} \\[location] {c.lat:.6f}, {c.lon:.6f} {e(c.label)}".rstrip()
    return f"{head} \\[{c.TYPE.name.lower()}] {e(repr(c))}"


@app.command("send")
def send_command(
    group: Annotated[str, typer.Argument(help="Group id.")],
    text: Annotated[str | None, typer.Argument(help="Message text.")] = None,
    file: Annotated[str | None, typer.Option("--file", help="Send this file.")] = None,
    media_type: Annotated[str, typer.Option("--media-type")] = "application/octet-stream",
    reply_to: Annotated[str | None, typer.Option("--reply-to", help="Message id (hex).")] = None,
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """Send a text (or --file) to a group, end-to-end encrypted and signed."""
    from mstcrypt.apps.im.content import Reply, Text

    if not (text or file) or not (server and ims and token):
        fail("give --server, --ims, --token and a text or --file")
    with _session(server, ims, token, pin, ca_file, state) as im:
        if file:
            pos = im.send_file(group, file, media_type=media_type, caption=text or "")
        elif reply_to:
            pos = im.send(group, Reply(bytes.fromhex(reply_to), text or ""))
        else:
            pos = im.send(group, Text(text or ""))
        mid = im.local_messages(group)[-1]["id"]
        console.print(f"sent to {group} at position {pos} (id {mid[:8]})")


def _send_content(
    group: str, make: Any, server: str, ims: str, token: str, pin: Any, ca_file: Any, state: Any
) -> None:
    """Open the session, build the content with ``make(im)`` (which may resolve message
    ids), send it and print where it went."""
    from mstcrypt.apps.im.chat import UsageError

    if not (server and ims and token):
        fail("give --server, --ims and --token")
    with _session(server, ims, token, pin, ca_file, state) as im:
        try:
            content = make(im)
        except UsageError as exc:
            fail(str(exc))
        pos = im.send(group, content)
        mid = im.local_messages(group)[-1]["id"]
        console.print(f"sent to {group} at position {pos} (id {mid[:8]})")


MsgId = Annotated[
    str, typer.Argument(help="Message id: 32 hex digits, or a unique prefix (see history).")
]


@app.command("react")
def react_command(
    group: Annotated[str, typer.Argument(help="Group id.")],
    message: MsgId,
    emoji: Annotated[str, typer.Argument(help="The reaction (1..16 characters).")],
    remove: Annotated[bool, typer.Option("--remove", help="Take the reaction back.")] = False,
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """React to a message (signed event)."""
    from mstcrypt.apps.im.chat import resolve_ref
    from mstcrypt.apps.im.content import Reaction

    _send_content(
        group,
        lambda im: Reaction(resolve_ref(im, group, message), emoji, remove=remove),
        server,
        ims,
        token,
        pin,
        ca_file,
        state,
    )


@app.command("edit")
def edit_command(
    group: Annotated[str, typer.Argument(help="Group id.")],
    message: MsgId,
    text: Annotated[str, typer.Argument(help="The new text.")],
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """Replace the text of one of your messages (readers refuse edits by others)."""
    from mstcrypt.apps.im.chat import resolve_ref
    from mstcrypt.apps.im.content import Edit

    _send_content(
        group,
        lambda im: Edit(resolve_ref(im, group, message), text),
        server,
        ims,
        token,
        pin,
        ca_file,
        state,
    )


@app.command("delete")
def delete_command(
    group: Annotated[str, typer.Argument(help="Group id.")],
    message: MsgId,
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """Withdraw one of your messages (readers refuse deletions by others)."""
    from mstcrypt.apps.im.chat import resolve_ref
    from mstcrypt.apps.im.content import Delete

    _send_content(
        group,
        lambda im: Delete(resolve_ref(im, group, message)),
        server,
        ims,
        token,
        pin,
        ca_file,
        state,
    )


@app.command("poll")
def poll_command(
    group: Annotated[str, typer.Argument(help="Group id.")],
    question: Annotated[str, typer.Argument(help="The question.")],
    options: Annotated[list[str], typer.Argument(help="2..16 distinct options.")],
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """Start a poll; members answer with `mstcrypt im vote`."""
    from mstcrypt.apps.im.content import Poll

    _send_content(
        group, lambda _im: Poll(question, tuple(options)), server, ims, token, pin, ca_file, state
    )


@app.command("vote")
def vote_command(
    group: Annotated[str, typer.Argument(help="Group id.")],
    poll: MsgId,
    choice: Annotated[int, typer.Argument(help="Option number (from 0, as history shows).")],
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """Vote for an option of a poll."""
    from mstcrypt.apps.im.chat import resolve_ref
    from mstcrypt.apps.im.content import Vote

    _send_content(
        group,
        lambda im: Vote(resolve_ref(im, group, poll), choice),
        server,
        ims,
        token,
        pin,
        ca_file,
        state,
    )


@app.command("location")
def location_command(
    group: Annotated[str, typer.Argument(help="Group id.")],
    lat: Annotated[float, typer.Argument(help="Latitude, decimal degrees (-90..90).")],
    lon: Annotated[float, typer.Argument(help="Longitude, decimal degrees (-180..180).")],
    label: Annotated[str, typer.Option("--label", help="A place name.")] = "",
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """Share a location."""
    from mstcrypt.apps.im.content import Location

    _send_content(
        group, lambda _im: Location(lat, lon, label), server, ims, token, pin, ca_file, state
    )


@app.command("chat")
def chat_command(
    group: Annotated[
        str | None, typer.Option("--group", help="Open this group (default: choose).")
    ] = None,
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """Interactive chat: scrollback, live messages while you type, files, replies, edits,
    reactions, polls, locations, members online (/help inside)."""
    from mstcrypt.cli.im_chat import run_chat

    if not (server and ims and token):
        fail("give --server, --ims and --token")
    with _session(server, ims, token, pin, ca_file, state) as im:
        run_chat(im, group)


@app.command("prune")
def prune_command(
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """Compact the sealed local store and forget group key versions that no retained
    message needs."""
    if not (server and ims and token):
        fail("give --server, --ims and --token")
    with _session(server, ims, token, pin, ca_file, state) as im:
        n = im.prune_keys()
        console.print(f"store compacted; {n} group key version(s) pruned")


@app.command("listen")
def listen_command(
    count: Annotated[int, typer.Option("--count", help="Stop after this many messages.")] = 0,
    timeout: Annotated[float, typer.Option("--timeout", help="Stop after this idle time.")] = 30.0,
    save_dir: Annotated[
        str | None, typer.Option("--save-dir", help="Decrypt received files here.")
    ] = None,
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """Receive (the offline queue, then live over the WebSocket), verify, decrypt, print."""
    from mstcrypt.apps.im import ImError
    from mstcrypt.apps.im.content import FileRef

    if not (server and ims and token):
        fail("give --server, --ims and --token")
    with _session(server, ims, token, pin, ca_file, state) as im:

        def show(r: Any) -> None:
            console.print(_describe(r))
            if save_dir and not isinstance(r, ImError) and isinstance(r.content, FileRef):
                dst = Path(save_dir) / Path(r.content.name).name
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_suffix(dst.suffix + ".part")
                with tmp.open("wb") as f:
                    im.fetch_file(r.content, f)
                os.replace(tmp, dst)
                console.print(f"  saved {dst}")

        im.listen(
            until=(lambda got: len(got) >= count) if count else None,
            timeout=timeout,
            on_message=show,
        )


@app.command("history")
def history_command(
    group: Annotated[str, typer.Argument(help="Group id.")],
    after: Annotated[int, typer.Option("--after")] = 0,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """The group's stored messages since you joined, each verified and decrypted."""
    if not (server and ims and token):
        fail("give --server, --ims and --token")
    with _session(server, ims, token, pin, ca_file, state) as im:
        for r in im.history(group, after=after, limit=limit):
            console.print(_describe(r))


@group_app.command("list")
def group_list_command(
    server: ServerOpt = "",
    ims: ImsOpt = "",
    token: TokenOpt = "",
    pin: PinOpt = None,
    ca_file: CaOpt = None,
    state: StateOpt = None,
) -> None:
    """Your groups, their current key version and members."""
    if not (server and ims and token):
        fail("give --server, --ims and --token")
    with _session(server, ims, token, pin, ca_file, state) as im:
        for g in im.groups():
            console.print(f"{g['group']}: key v{g['version']}, members {', '.join(g['members'])}")


OperatorOpt = Annotated[
    str,
    typer.Option(
        "--operator-token",
        envvar="MSTCRYPT_OPERATOR_TOKEN",
        help="A registration officer's session.",
    ),
]


@group_app.command("create")
def group_create_command(
    group: Annotated[str, typer.Argument(help="Group id (1..64 characters).")],
    members: Annotated[list[str], typer.Argument(help="At least two enrolled owners.")],
    server: ServerOpt = "",
    operator_token: OperatorOpt = "",
    ca_file: CaOpt = None,
) -> None:
    """Create a group: the KMC makes its first group key (registration officer)."""
    r = _admin(server, operator_token, ca_file, "create_group", group, members)
    console.print(f"group {r['group']} at key v{r['version']}: {', '.join(r['members'])}")


@group_app.command("change")
def group_change_command(
    group: Annotated[str, typer.Argument(help="Group id.")],
    add: Annotated[list[str] | None, typer.Option("--add")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove")] = None,
    server: ServerOpt = "",
    operator_token: OperatorOpt = "",
    ca_file: CaOpt = None,
) -> None:
    """Add or remove members: the group key rotates (registration officer)."""
    r = _admin(
        server, operator_token, ca_file, "change_group", group, add=add or (), remove=remove or ()
    )
    console.print(f"group {r['group']} now at key v{r['version']}: {', '.join(r['members'])}")


def _admin(
    server: str, operator_token: str, ca_file: str | None, op: str, *a: Any, **kw: Any
) -> Any:
    from mstcrypt.client import Client
    from mstcrypt.errors import MstCryptError
    from mstcrypt.pki import load_certificates

    if not (server and operator_token and ca_file):
        fail("give --server, --operator-token and --ca-file")
    try:
        anchors = load_certificates(Path(ca_file).read_bytes())
        with Client(server, anchors=anchors, operator_token=operator_token) as c:
            return getattr(c, op)(*a, **kw)
    except (OSError, MstCryptError) as exc:
        fail(str(exc))


# -- the server ----------------------------------------------------------------------------
@ims_app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8700,
    data_dir: DataDir = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis", envvar="MSTCRYPT_REDIS_URL", help="Redis URL for fan-out between instances."
        ),
    ] = None,
    blob_dir: Annotated[
        str | None, typer.Option("--blob-dir", help="Encrypted blobs (shared by all instances).")
    ] = None,
    queue_size: Annotated[int, typer.Option("--queue-size", help="Frames per connection.")] = 256,
    presence_ttl: Annotated[
        float,
        typer.Option(
            "--presence-ttl",
            help="Seconds after which a crashed instance's devices count as offline (Redis).",
        ),
    ] = 30.0,
) -> None:
    """Run an IMS instance on the platform's database (plain HTTP and WebSocket: put the
    TLCP gateway or a TLS proxy in front; see docs/im.md)."""
    import uvicorn

    from mstcrypt.server.ims import MAX_FRAME, create_ims_app

    kmc, settings = _kmc(data_dir)
    if not kmc.is_initialised():
        fail("the CA is not initialised: run `mstcrypt ca init` first")
    blobs = blob_dir or str(Path(settings.data_dir) / "im-blobs")
    app = create_ims_app(
        kmc,
        blob_dir=blobs,
        redis_url=redis_url,
        queue_size=queue_size,
        login_server_name=settings.login_server_name,
        presence_ttl=presence_ttl,
    )
    console.print(
        f"IMS on http://{host}:{port} (fan-out: {'redis' if redis_url else 'this process'}; "
        f"blobs in {blobs})"
    )
    from mstcrypt.server.tuning import freeze_startup_heap

    freeze_startup_heap()  # no full-GC pauses over the start-up heap while serving
    uvicorn.run(app, host=host, port=port, log_level="warning", ws_max_size=MAX_FRAME)


# -- the demo ------------------------------------------------------------------------------
@app.command("demo")
def demo_command(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Keep the data here (default: temporary).")
    ] = None,
) -> None:
    """Three terminals in a group on two IMS instances over Redis: text and a file, then a
    member removed who cannot read the next message."""
    _demo(data_dir)


@contextlib.contextmanager
def _redis(tmp: Path) -> Iterator[str | None]:
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    fail("redis-server did not start")
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _demo(data_dir: Path | None) -> None:
    import threading

    from mstcrypt.apps.im import ImError
    from mstcrypt.apps.im.content import FileRef, Text
    from mstcrypt.apps.im.terminal import Identity, ImClient
    from mstcrypt.cli.platform import running_platform
    from mstcrypt.client import Client
    from mstcrypt.module import SoftToken
    from mstcrypt.protocols.tlcp import Credentials
    from mstcrypt.server.config import Settings
    from mstcrypt.server.ims import running_ims

    tmp = Path(tempfile.mkdtemp(prefix="mstcrypt-im-demo-")) if data_dir is None else data_dir
    tmp.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env(tmp)
    failed: list[str] = []

    def check(ok: bool, what: str) -> None:
        console.print(f"  {'[green]ok[/green]' if ok else '[red]FAILED[/red]'} {what}")
        if not ok:
            failed.append(what)

    with running_platform(tmp, settings) as url, _redis(tmp) as redis_url:
        kmc = settings.kmc()
        root = kmc.chain()[-1]
        code, _ = kmc.operators.add("officer", ["registration_officer"], actor="console")
        public = Client(url, anchors=[root])
        otok = SoftToken.init(
            tmp / "officer.tok",
            "officer-pin-1",
            "admin-unlock-code",
            iterations=100_000,
            overwrite=True,
            anchors=[root.der],
        )
        public.enroll(code, otok, container="main")
        officer = Client(url, anchors=[root], operator_token=public.login(otok)["session_token"])
        members: dict[str, Any] = {}
        for name in ("wang", "li", "zhao"):
            c = officer.create_enrollment_code(name, {"C": "CN", "O": "Example Unit", "CN": name})
            tok = SoftToken.init(
                tmp / f"{name}.tok",
                f"{name}-pin-1",
                "admin-unlock-code",
                iterations=100_000,
                overwrite=True,
                anchors=[root.der],
            )
            public.enroll(c["code"], tok)
            members[name] = (tok, public.login(tok)["session_token"])
        v = officer.create_group("project", ["wang", "li", "zhao"])["version"]
        console.print(
            f"platform {url} (TLCP); wang, li and zhao enrolled into soft tokens and logged in; "
            f"group 'project' created by the KMC at key v{v}"
        )
        blobs = tmp / "im-blobs"
        with (
            running_ims(kmc, blob_dir=blobs, redis_url=redis_url, instance="ims-1") as ims1,
            running_ims(kmc, blob_dir=blobs, redis_url=redis_url, instance="ims-2") as ims2,
            _gateways(kmc, [ims1, ims2]) as gateways,
        ):
            how = f"over Redis {redis_url}" if redis_url else "in-process (no redis-server)"
            console.print(f"IMS instances {ims1} and {ims2}, fan-out {how}")
            if redis_url:
                import httpx

                deadline = time.monotonic() + 10
                while not all(httpx.get(u + "/health").json()["redis"] for u in (ims1, ims2)):
                    if time.monotonic() > deadline:
                        fail("the IMS instances did not reach Redis")
                    time.sleep(0.05)
            gw1, gw2 = gateways
            console.print(
                f"TLCP gateway {gw1} → {ims1} and {gw2} → {ims2}: the terminals' HTTP and "
                "WebSocket run over TLCP with their token certificates"
            )
            where = {"wang": gw1, "li": gw2, "zhao": gw2}
            clients = {
                n: ImClient(
                    where[n],
                    identity=Identity.from_token(tok, n),
                    platform=public,
                    session_token=session,
                    state_path=tmp / f"{n}.im",
                    anchors=[root],
                    client_credentials=Credentials.from_module(tok, "main"),
                )
                for n, (tok, session) in members.items()
            }
            got: dict[str, list[Any]] = {}

            def listen(n: str, k: int) -> threading.Thread:
                got[n] = []
                t = threading.Thread(
                    target=lambda: got[n].extend(
                        clients[n].listen(until=lambda g: len(g) >= k, timeout=15)
                    ),
                    daemon=True,
                )
                t.start()
                return t

            threads = [listen("li", 2), listen("zhao", 2)]
            time.sleep(0.5)
            data = os.urandom(300_000)
            clients["wang"].send_text("project", "会议改到三点 / meeting moved to 3pm")
            clients["wang"].send_file(
                "project", _bytes(data), name="minutes.pdf", media_type="application/pdf"
            )
            for t in threads:
                t.join(20)
            for n in ("li", "zhao"):
                texts = [
                    r.content.text
                    for r in got[n]
                    if not isinstance(r, ImError) and isinstance(r.content, Text)
                ]
                files = [
                    r.content
                    for r in got[n]
                    if not isinstance(r, ImError) and isinstance(r.content, FileRef)
                ]
                check(
                    texts == ["会议改到三点 / meeting moved to 3pm"],
                    f"{n} on {where[n]} got wang's text from {gw1}",
                )
                ok = False
                if files:
                    out = _bytes(b"")
                    clients[n].fetch_file(files[0], out)
                    ok = out.getvalue() == data
                check(ok, f"{n} decrypted the 300 kB file (SM4-GCM blob, SM3 digest checked)")
            v2 = officer.change_group("project", remove=["zhao"])["version"]
            console.print(f"officer removed zhao: the KMC rotated the group key to v{v2}")
            clients["wang"].send_text("project", "zhao must not read this")
            li_next = clients["li"].receive_pending()
            check(
                [r.content.text for r in li_next if not isinstance(r, ImError)]
                == ["zhao must not read this"],
                "li reads the next message (key v2)",
            )
            zhao = clients["zhao"]
            zhao_queue = zhao.receive_pending()
            check(zhao_queue == [], "the IMS delivers nothing more to zhao")
            try:
                zhao.keys.group_key("project", v2)
                check(False, "the KMC refuses zhao the new group key")
            except ImError as exc:
                check(True, f"the KMC refuses zhao the new group key ({exc.code})")
            raw = base64.b64decode(
                clients["li"]._call("GET", "/im/groups/project/messages")[-1]["envelope"]
            )
            try:
                zhao.open(raw, 0)
                check(False, "zhao cannot decrypt the leaked ciphertext")
            except ImError as exc:
                check(True, f"zhao cannot open the leaked ciphertext either ({exc.code})")
            for c in clients.values():
                c.close()
        kmc.db.dispose()
    if failed:
        fail(f"{len(failed)} step(s) failed", code=1)
    console.print("[bold green]IM demo complete[/bold green]")


@contextlib.contextmanager
def _gateways(kmc: Any, upstreams: list[str]) -> Iterator[list[str]]:
    """A TLCP gateway with one listener per IMS URL (route ``localhost``, WebSocket
    allowed), the platform's TLCP identity as its certificate, the KMC's CA and CRLs as
    trust, on its own event loop in a thread; yields the listeners' ``https://`` URLs."""
    import asyncio
    import threading

    from mstcrypt.apps.tlcp_gateway import (
        Gateway,
        GatewayConfig,
        ListenerConfig,
        Route,
        kmc_trust_source,
    )
    from mstcrypt.server.tlcp import platform_credentials

    listeners = [
        ListenerConfig(port=0, routes={"localhost": Route(u.split("://", 1)[1], "http", True)})
        for u in upstreams
    ]
    gw = Gateway(
        GatewayConfig(listeners=listeners),
        credentials=platform_credentials(kmc, ["127.0.0.1", "localhost"]),
        trust_source=kmc_trust_source(kmc),
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(gw.start(), loop).result(30)
        yield [f"https://localhost:{port}" for _, port in gw.addresses]
    finally:
        asyncio.run_coroutine_threadsafe(gw.close(grace=2), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)

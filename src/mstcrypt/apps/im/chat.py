"""The interactive chat's logic, without a terminal: commands typed by the person become
:class:`~mstcrypt.apps.im.terminal.ImClient` calls, and what arrives (messages, refusals,
presence, key rotations) becomes lines of text. ``mstcrypt im chat`` puts a
prompt_toolkit prompt in front of it; the tests drive it directly.

Every string that comes from the network (names, texts, file names) is made safe for a
terminal here: control characters and escape sequences are replaced, so a sender cannot
move the cursor, recolour or rewrite the screen.
"""

from __future__ import annotations

import mimetypes
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mstcrypt.apps.im.content import (
    Content,
    Delete,
    Edit,
    FileRef,
    Location,
    Poll,
    Reaction,
    Reply,
    Text,
    Vote,
)
from mstcrypt.apps.im.errors import ImError
from mstcrypt.apps.im.terminal import ImClient, Received
from mstcrypt.errors import MstCryptError

__all__ = ["HELP", "ChatController", "UsageError", "resolve_ref", "safe", "short_id"]

HELP = """commands:
  TEXT                     send a message (start with // to send a text beginning with /)
  /file PATH [CAPTION]     send a file (encrypted blob)
  /save ID [DIR]           decrypt a received file into DIR (default: .)
  /reply ID TEXT           reply to a message
  /edit ID TEXT            edit one of your messages
  /delete ID               withdraw one of your messages
  /react ID EMOJI          react (/unreact ID EMOJI to take it back)
  /poll "QUESTION" A B ... start a poll (2..16 options)
  /vote ID N               vote for option N of a poll
  /location LAT LON [LABEL] share a location
  /members                 the group's members and who is online
  /groups                  your groups
  /switch GROUP            change group
  /history [N]             the last N messages of this device's store
  /help                    this text
  /quit                    leave"""

SCROLLBACK = 20


def safe(s: object, limit: int = 2000) -> str:
    """``s`` with every control character (C0, DEL, C1: escape sequences) replaced, so
    that it prints as text; newlines become ``⏎``."""
    out = []
    for ch in str(s)[:limit]:
        o = ord(ch)
        if ch == "\n":
            out.append(" ⏎ ")
        elif ch == "\t":
            out.append(" ")
        elif o < 0x20 or 0x7F <= o < 0xA0 or o in (0x2028, 0x2029, 0x202E, 0x2066, 0x2067):
            out.append("�")
        else:
            out.append(ch)
    return "".join(out)


def short_id(message_id: str) -> str:
    return message_id[:8]


class UsageError(MstCryptError):
    """A command the chat does not understand (shown to the person, nothing sent)."""


def resolve_ref(client: ImClient, group: str, token: str, *, server: bool = True) -> bytes:
    """A message id (32 hex digits), or a unique prefix (at least 4 digits) of the id of
    a message in this device's store of ``group`` (then, with ``server``, of the group's
    last 500 messages on the server)."""
    token = token.strip().lower()
    if not 4 <= len(token) <= 32 or any(c not in "0123456789abcdef" for c in token):
        raise UsageError(f"{safe(token)!r} is not a message id (the hex shown in [...])")
    if len(token) == 32:
        return bytes.fromhex(token)
    hits = {m["id"] for m in client.local_messages(group) if m["id"].startswith(token)}
    if not hits and server:
        for r in client.history(group, limit=500):
            if not isinstance(r, ImError) and r.message.envelope.message_id.hex().startswith(token):
                hits.add(r.message.envelope.message_id.hex())
    if len(hits) != 1:
        raise UsageError(
            f"no message {safe(token)!r} in {safe(group)}"
            if not hits
            else f"{safe(token)!r} matches {len(hits)} messages: give more digits"
        )
    return bytes.fromhex(hits.pop())


@dataclass
class _Item:
    """A message as the chat shows it (from the store or just received)."""

    id: str
    group: str
    sender: str
    at: int
    type: str
    payload: dict[str, Any]
    version: int | None = None
    gap: int = 0


class ChatController:
    """One person's chat over one :class:`ImClient`.

    ``emit`` receives every output line. ``run`` executes a call that uses the client
    (the terminal runs it on the thread that owns the client; tests call directly)."""

    def __init__(
        self,
        client: ImClient,
        emit: Callable[[str], None],
        *,
        run: Callable[[Callable[[], Any]], Any] = lambda f: f(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client, self.emit, self.run, self.clock = client, emit, run, clock
        self.group: str | None = None
        self.versions: dict[str, int] = {}
        self.groups: list[dict[str, Any]] = []

    # -- start ---------------------------------------------------------------------------
    def start(self, group: str | None = None) -> bool:
        """Load the groups; pick ``group`` (or the only one). False if a group must be
        chosen (the groups were listed)."""
        self.groups = self.run(self.client.groups)
        for g in self.groups:
            self.versions[g["group"]] = int(g["version"])
        names = [g["group"] for g in self.groups]
        if not names:
            self.emit("you are in no group yet (a registration officer adds you)")
            return False
        if group is None and len(names) == 1:
            group = names[0]
        if group is None:
            self._list_groups()
            self.emit("choose one with /switch GROUP")
            return False
        return self.switch(group)

    def switch(self, group: str) -> bool:
        if group not in self.versions:
            self.groups = self.run(self.client.groups)
            self.versions.update({g["group"]: int(g["version"]) for g in self.groups})
        if group not in self.versions:
            self.emit(f"!! you are not in a group {safe(group)!r}")
            return False
        self.group = group
        g = next(x for x in self.groups if x["group"] == group)
        members = ", ".join(safe(m) for m in g["members"])
        self.emit(f"== {safe(group)} (key v{g['version']}): {members}")
        for line in self.scrollback(SCROLLBACK):
            self.emit(line)
        return True

    def scrollback(self, n: int) -> list[str]:
        assert self.group is not None
        items = self.run(lambda: self.client.local_messages(self.group))[-n:]
        return [
            self.render(
                _Item(
                    m["id"], self.group, m["sender"], m["at"], m["type"], m["content"], m.get("v")
                )
            )
            for m in items
        ]

    # -- rendering -----------------------------------------------------------------------
    def _find(self, group: str, ref: str) -> dict[str, Any] | None:
        for m in reversed(self.client.local_messages(group)):
            if m["id"] == ref:
                return m
        return None

    def render(self, it: _Item) -> str:
        stamp = time.strftime("%H:%M", time.localtime(it.at / 1000))
        where = "" if it.group == self.group else f"#{safe(it.group)} "
        head = f"{stamp} {where}[{short_id(it.id)}] <{safe(it.sender)}>"
        p = it.payload
        t = it.type
        if t == "text":
            body = safe(p["text"])
        elif t == "reply":
            orig = self._find(it.group, p["ref"])
            quoted = (
                f"{safe(orig['sender'])}: {safe(orig['content'].get('text', orig['type']), 40)}"
                if orig
                else short_id(p["ref"])
            )
            body = f"↪ ({quoted}) {safe(p['text'])}"
        elif t == "file":
            body = f"[file] {safe(p['name'])} ({safe(p['media_type'])}, {p['size']} bytes)" + (
                f" {safe(p['caption'])}" if p.get("caption") else ""
            )
        elif t == "edit":
            body = f"[edit of {short_id(p['ref'])}] {safe(p['text'])}"
        elif t == "delete":
            body = f"[deleted {short_id(p['ref'])}]"
        elif t == "reaction":
            body = (
                f"[{'-' if p.get('remove') else '+'}{safe(p['emoji'], 16)} on {short_id(p['ref'])}]"
            )
        elif t == "poll":
            opts = "  ".join(f"{i}) {safe(o, 200)}" for i, o in enumerate(p["options"]))
            body = f"[poll] {safe(p['question'])}  {opts}"
        elif t == "vote":
            body = f"[vote {p['choice']} on {short_id(p['ref'])}]"
        elif t == "location":
            label = f" {safe(p['label'], 200)}" if p.get("label") else ""
            body = f"[location] {p['lat']:.6f}, {p['lon']:.6f}{label}"
        else:  # pragma: no cover - every content type is handled above
            body = f"[{safe(t)}]"
        line = f"{head} {body}"
        if it.gap:
            line += f"  (!! {it.gap} earlier message(s) of this device are missing)"
        return line

    def incoming(self, r: Received | ImError) -> None:
        """A message from the WebSocket (or the queue), opened or refused."""
        if isinstance(r, ImError):
            self.emit(f"!! refused message ({safe(r.code)}): {safe(r)}")
            return
        env = r.message.envelope
        known = self.versions.get(env.group, 0)
        if env.key_version > known:
            self.versions[env.group] = env.key_version
            if known:
                self.emit(
                    f"-- {safe(env.group)}: group key rotated to v{env.key_version} "
                    "(membership changed)"
                )
        self.emit(
            self.render(
                _Item(
                    env.message_id.hex(),
                    env.group,
                    env.sender,
                    env.timestamp_ms,
                    r.content.TYPE.name.lower(),
                    r.content._payload(),
                    env.key_version,
                    r.gap,
                )
            )
        )

    def frame(self, f: dict[str, Any]) -> None:
        """A server frame other than a message: presence, an error."""
        op = f.get("op")
        if op == "presence":
            if f.get("group") != self.group or f.get("member") == self.client.identity.member:
                return
            state = "online" if f.get("online") else "offline"
            self.emit(
                f"-- {safe(f.get('member'))} is {state} (device {safe(str(f.get('device'))[:8])})"
            )
        elif op == "error":
            self.emit(f"!! server: {safe(f.get('detail'))}")

    # -- commands --------------------------------------------------------------------------
    def handle(self, line: str) -> bool:
        """One line typed by the person; False when the chat should end."""
        line = line.strip()
        if not line:
            return True
        try:
            if line.startswith("//") or not line.startswith("/"):
                self._send(Text(line[1:] if line.startswith("//") else line))
                return True
            cmd, _, rest = line.partition(" ")
            return self._command(cmd[1:].lower(), rest.strip())
        except UsageError as exc:
            self.emit(f"!! {exc}")
        except ImError as exc:
            self.emit(f"!! refused ({safe(exc.code)}): {safe(exc)}")
        except MstCryptError as exc:
            self.emit(f"!! {safe(exc)}")
        return True

    def _need_group(self) -> str:
        if self.group is None:
            raise UsageError("choose a group first: /switch GROUP (/groups lists them)")
        return self.group

    def _ref(self, token: str) -> bytes:
        group = self._need_group()
        return self.run(lambda: resolve_ref(self.client, group, token, server=False))

    def _send(self, content: Content) -> None:
        group = self._need_group()
        self.run(lambda: self.client.send(group, content))
        self._echo(group)

    def _echo(self, group: str) -> None:
        m = self.run(lambda: self.client.local_messages(group))[-1]
        self.emit(self.render(_Item(m["id"], group, m["sender"], m["at"], m["type"], m["content"])))

    def _list_groups(self) -> None:
        for g in self.groups:
            mark = "*" if g["group"] == self.group else " "
            self.emit(
                f"{mark} {safe(g['group'])} (key v{g['version']}, {len(g['members'])} members)"
            )

    def _command(self, cmd: str, rest: str) -> bool:
        try:
            args = shlex.split(rest)
        except ValueError as exc:
            raise UsageError(f"cannot parse the arguments: {exc}") from None
        if cmd in ("quit", "exit", "q"):
            return False
        if cmd == "help":
            for line in HELP.splitlines():
                self.emit(line)
        elif cmd == "groups":
            self.groups = self.run(self.client.groups)
            self.versions.update({g["group"]: int(g["version"]) for g in self.groups})
            self._list_groups()
        elif cmd == "switch":
            if len(args) != 1:
                raise UsageError("usage: /switch GROUP")
            self.switch(args[0])
        elif cmd == "members":
            group = self._need_group()
            for m in self.run(lambda: self.client.presence(group)):
                n = len(m["devices"])
                state = f"online ({n} device{'s' if n > 1 else ''})" if m["online"] else "offline"
                self.emit(f"  {safe(m['member'])}: {state}")
        elif cmd == "history":
            n = int(args[0]) if args and args[0].isdigit() else SCROLLBACK
            self._need_group()
            for line in self.scrollback(max(1, min(n, 2000))):
                self.emit(line)
        elif cmd == "file":
            if not args:
                raise UsageError("usage: /file PATH [CAPTION]")
            path = Path(args[0]).expanduser()
            if not path.is_file():
                raise UsageError(f"no file {safe(args[0])!r}")
            group = self._need_group()
            mt = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            caption = " ".join(args[1:])
            self.run(lambda: self.client.send_file(group, path, media_type=mt, caption=caption))
            self._echo(group)
        elif cmd == "save":
            self._save(args)
        elif cmd == "reply":
            ref, text = self._ref_and_text(rest, "reply")
            self._send(Reply(ref, text))
        elif cmd == "edit":
            ref, text = self._ref_and_text(rest, "edit")
            self._send(Edit(ref, text))
        elif cmd == "delete":
            if len(args) != 1:
                raise UsageError("usage: /delete ID")
            self._send(Delete(self._ref(args[0])))
        elif cmd in ("react", "unreact"):
            if len(args) != 2:
                raise UsageError(f"usage: /{cmd} ID EMOJI")
            self._send(Reaction(self._ref(args[0]), args[1], remove=cmd == "unreact"))
        elif cmd == "poll":
            if len(args) < 3:
                raise UsageError('usage: /poll "QUESTION" OPTION OPTION ...')
            self._send(Poll(args[0], tuple(args[1:])))
        elif cmd == "vote":
            if len(args) != 2 or not args[1].isdigit():
                raise UsageError("usage: /vote ID N")
            self._send(Vote(self._ref(args[0]), int(args[1])))
        elif cmd == "location":
            if len(args) < 2:
                raise UsageError("usage: /location LAT LON [LABEL]")
            try:
                lat, lon = float(args[0]), float(args[1])
            except ValueError:
                raise UsageError("LAT and LON are decimal degrees") from None
            self._send(Location(lat, lon, " ".join(args[2:])))
        else:
            raise UsageError(f"unknown command /{safe(cmd)} (/help lists them)")
        return True

    def _ref_and_text(self, rest: str, cmd: str) -> tuple[bytes, str]:
        ref, _, text = rest.partition(" ")
        if not ref or not text.strip():
            raise UsageError(f"usage: /{cmd} ID TEXT")
        return self._ref(ref), text.strip()

    def _save(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            raise UsageError("usage: /save ID [DIR]")
        group = self._need_group()
        ref = self._ref(args[0]).hex()
        m = next(x for x in self.run(lambda: self.client.local_messages(group)) if x["id"] == ref)
        if m["type"] != "file":
            raise UsageError(f"message {short_id(ref)} is not a file")
        p = m["content"]
        fref = FileRef(
            name=p["name"],
            media_type=p["media_type"],
            size=p["size"],
            blob=p["blob"],
            key=bytes.fromhex(p["key"]),
            digest=bytes.fromhex(p["digest"]),
            caption=p.get("caption", ""),
        )
        dst_dir = Path(args[1] if len(args) > 1 else ".").expanduser()
        dst_dir.mkdir(parents=True, exist_ok=True)
        dst = dst_dir / Path(fref.name).name
        tmp = dst.with_name(dst.name + ".part")

        def fetch() -> None:
            with tmp.open("wb") as f:
                self.client.fetch_file(fref, f)
            os.replace(tmp, dst)

        try:
            self.run(fetch)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.emit(f"saved {safe(dst)} ({fref.size} bytes, digest checked)")

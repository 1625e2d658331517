"""The terminal side of secure messaging: the SDK a messaging app embeds.

* :class:`SealedStore` (:mod:`mstcrypt.apps.im.store`) — the terminal's local state
  (group keys, sequence numbers, received messages) as an append-only log of SM4-GCM
  records under a random store key that is SM2-encrypted to the token's *encryption*
  key: without the token's PIN (which opens d_M, MK hierarchy) the file reveals nothing
  (a stolen phone).
* :class:`Keyring` — the member's KDK and group keys per version, fetched from the KMC
  with the session token (the KMC serves only the session's owner), unwrapped, checked
  against what was asked, and cached in the sealed store.
* :class:`ImClient` — send (text, files, replies, edits, …), receive (WebSocket),
  history, acknowledgements; every received envelope is opened in the order of
  ``docs/im-format.md`` §6 with the sender's certified key from the directory.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import httpx

from mstcrypt.apps.im import blob as imblob
from mstcrypt.apps.im.content import Content, Delete, Edit, FileRef, Text
from mstcrypt.apps.im.errors import (
    ImDecryptError,
    ImError,
    ImKeyVersionError,
    ImReplayError,
    ImSenderError,
)
from mstcrypt.apps.im.format import (
    MAX_ENVELOPE,
    Envelope,
    Opened,
    SequenceTracker,
    Signer,
    decrypt_verified,
    parse,
    seal,
    verify_envelope,
)
from mstcrypt.apps.im.store import MAX_STORED_MESSAGES, SealedStore
from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import (
    DecryptionError,
    MstCryptError,
    PolicyError,
    VerificationError,
)

__all__ = [
    "Identity",
    "ImClient",
    "ImsError",
    "Keyring",
    "PlatformKeys",
    "Received",
    "SealedStore",
]


class PlatformKeys(Protocol):
    """What the SDK needs from the platform (:class:`mstcrypt.client.Client` has it)."""

    def kdk(self, session_token: str) -> dict[str, Any]: ...

    def group_key(
        self, session_token: str, group: str, version: int | None = None
    ) -> dict[str, Any]: ...

    def signing_certificate(self, owner: str, key_id: bytes) -> Any: ...


class ImsError(ImError):
    """The IMS server refused a request; ``code`` is the server's (e.g. ``rekey``)."""

    def __init__(self, status: int, error: str, code: str, detail: str) -> None:
        super().__init__(code or error, f"IMS {status} {error}: {detail}")
        self.status, self.error = status, error


# -- the terminal's identity --------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """The member's keys as the token exposes them: signing and decryption stay in the
    module (callables over handles)."""

    member: str
    sign: Signer = field(repr=False)
    sign_public: SM2PublicKey = field(repr=False)
    decrypt: Callable[[bytes], bytes] = field(repr=False)
    enc_public: SM2PublicKey = field(repr=False)

    @classmethod
    def from_token(cls, token: Any, member: str, container: str = "main") -> Identity:
        from mstcrypt.module.base import KeyUsage

        sh, eh = token.key(container, KeyUsage.SIGN), token.key(container, KeyUsage.ENCRYPT)
        return cls(
            member,
            lambda m: token.sign(sh, m),
            sh.public_key,
            lambda c: token.decrypt(eh, c),
            eh.public_key,
        )


# -- keys ----------------------------------------------------------------------------------
class Keyring:
    """KDK and group keys of one member, fetched with the session token."""

    def __init__(
        self,
        identity: Identity,
        platform: PlatformKeys,
        session_token: str,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.identity, self.platform, self.session_token = identity, platform, session_token
        self.state = state if state is not None else {}
        self.state.setdefault("kdk", {})
        self.state.setdefault("gk", {})

    def __repr__(self) -> str:
        return f"Keyring({self.identity.member!r}, {len(self.state['gk'])} group keys)"

    def _fetch_kdk(self) -> None:
        """The member's current KDK from the KMC (SM2-decrypted by the token)."""
        try:
            d = self.platform.kdk(self.session_token)
        except MstCryptError as exc:
            raise ImKeyVersionError("key-not-available", f"no KDK from the KMC: {exc}") from None
        if d.get("member") != self.identity.member:
            raise ImKeyVersionError("key-not-available", "the KMC answered for another member")
        try:
            key = self.identity.decrypt(base64.b64decode(d["ciphertext"]))
        except (MstCryptError, ValueError):
            raise ImDecryptError("key-unwrap-failed", "the KDK does not decrypt") from None
        if len(key) != 16:
            raise ImKeyVersionError("key-not-available", "the KDK is not a 16-byte SM4 key")
        self.state["kdk"][str(int(d["version"]))] = key.hex()

    def _kdk(self, version: int) -> bytes:
        hexkey = self.state["kdk"].get(str(version))
        if hexkey is None:
            self._fetch_kdk()
            hexkey = self.state["kdk"].get(str(version))
            if hexkey is None:
                raise ImKeyVersionError(
                    "key-not-available", f"the KMC no longer holds KDK version {version}"
                )
        return bytes.fromhex(hexkey)

    def group_key(self, group: str, version: int | None = None) -> tuple[int, bytes]:
        """(version, GK): a cached version, or the KMC's answer unwrapped with the KDK.
        ``None`` asks the KMC for the current version (and caches it)."""
        if version is not None:
            hexkey = self.state["gk"].get(f"{group}|{version}")
            if hexkey is not None:
                return version, bytes.fromhex(hexkey)
        if not self.state["kdk"]:
            self._fetch_kdk()  # the KMC wraps group keys only for a member who has a KDK
        try:
            d = self.platform.group_key(self.session_token, group, version)
        except MstCryptError as exc:
            raise ImKeyVersionError(
                "key-not-available",
                f"the KMC does not release group {group!r} key "
                f"{'(current)' if version is None else f'version {version}'} to this member: {exc}",
            ) from None
        got = int(d["version"])
        if (
            d.get("group") != group
            or d.get("member") != self.identity.member
            or (version is not None and got != version)
        ):
            raise ImKeyVersionError("key-not-available", "the KMC answered another question")
        kdk = self._kdk(int(d["kdk_version"]))
        try:
            gk = sm4.gcm_decrypt(
                kdk,
                bytes.fromhex(d["nonce"]),
                bytes.fromhex(d["wrapped"]),
                f"{group}|{got}|{self.identity.member}".encode(),
            )
        except (DecryptionError, MstCryptError, ValueError):
            raise ImDecryptError(
                "key-unwrap-failed", "the group key does not unwrap under the KDK"
            ) from None
        self.state["gk"][f"{group}|{got}"] = gk.hex()
        return got, gk


# -- the messaging client --------------------------------------------------------------------
@dataclass(frozen=True)
class Received:
    """A message opened and checked: its position on the server, the content, and how
    many of the sender device's messages were skipped before it (a gap)."""

    pos: int
    message: Opened
    gap: int = 0

    @property
    def content(self) -> Content:
        return self.message.content

    @property
    def sender(self) -> str:
        return self.message.sender


class ImClient:
    """One member's device on one IMS server.

    ``ims_url`` ``http://…``: plain HTTP and WebSocket (a loopback IMS, or a TLS proxy
    elsewhere). ``https://…``: HTTP and the WebSocket both run over TLCP (normally to the
    mobile access gateway, on a route with ``websocket = true``): the server's
    certificates must chain to ``anchors`` (the root CA preset in the token) and its
    signing certificate match ``server_name`` (default: the URL's host), as for the
    platform client; ``client_credentials`` (for example
    ``Credentials.from_module(token, "main")``) are presented when the gateway asks for
    a client certificate. ``tlcp_context`` replaces those three with a ready context."""

    def __init__(
        self,
        ims_url: str,
        *,
        identity: Identity,
        platform: PlatformKeys,
        session_token: str,
        state_path: str | os.PathLike[str] | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        anchors: Sequence[Any] = (),
        server_name: str | None = None,
        client_credentials: Any = None,
        tlcp_context: Any = None,
    ) -> None:
        self.identity, self.platform = identity, platform
        self.ims_url = ims_url.rstrip("/")
        self.server_name = server_name
        self.tlcp_context = _tlcp_context(self.ims_url, anchors, client_credentials, tlcp_context)
        if transport is None and self.tlcp_context is not None:
            from mstcrypt.protocols.tlcp.http_client import tlcp_transport

            transport = tlcp_transport(
                context=self.tlcp_context,
                server_name=server_name or httpx.URL(self.ims_url).host,
            )
        self.clock = clock
        self.store = SealedStore(state_path, identity) if state_path is not None else None
        self.state: dict[str, Any] = self.store.load() if self.store else {}
        if "device" not in self.state:
            self.state["device"] = random_bytes(16).hex()
        for k in ("seq", "current", "seen", "tracker", "messages"):
            self.state.setdefault(k, {})
        self.device = bytes.fromhex(self.state["device"])
        self.keys = Keyring(identity, platform, session_token, self.state.setdefault("keys", {}))
        self.tracker = SequenceTracker(self.state["tracker"])
        self._senders: dict[tuple[str, bytes], SM2PublicKey] = {}
        self._token = session_token
        self.http = httpx.Client(
            base_url=self.ims_url,
            headers={"Authorization": f"Bearer {session_token}", "X-MST-Device": self.device.hex()},
            transport=transport,
            timeout=30.0,
        )

    def __repr__(self) -> str:
        return f"ImClient({self.identity.member!r}, device={self.device.hex()[:8]}…)"

    def close(self) -> None:
        self.state["tracker"] = self.tracker.state()
        if self.store is not None:
            self.store.close(self.state)
        self.http.close()

    def __enter__(self) -> ImClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(self) -> None:
        self.state["tracker"] = self.tracker.state()
        if self.store is not None:
            self.store.save(self.state)

    def prune_keys(self) -> int:
        """Forget cached group key versions that no retained message needs: per group,
        every version below both the oldest version of a stored message and the current
        one (the KMC can still release versions from the member's joining on, if ever
        needed again). The store is compacted so the pruned keys leave the file too.
        Returns how many versions were dropped."""
        gk: dict[str, str] = self.keys.state["gk"]
        keep_from: dict[str, int] = {}
        for name in {k.rsplit("|", 1)[0] for k in gk}:
            versions = [int(m["v"]) for m in self.state["messages"].get(name, ()) if "v" in m]
            if any("v" not in m for m in self.state["messages"].get(name, ())):
                continue  # messages stored before versions were recorded: keep everything
            floor = max(self.state["current"].get(name, 0), self.state["seen"].get(name, 0))
            keep_from[name] = min([floor, *versions])
        dropped = [
            k
            for k in gk
            if k.rsplit("|", 1)[0] in keep_from
            and int(k.rsplit("|", 1)[1]) < keep_from[k.rsplit("|", 1)[0]]
        ]
        for k in dropped:
            del gk[k]
        self.state["tracker"] = self.tracker.state()
        if self.store is not None:
            self.store.compact(self.state)
        return len(dropped)

    # -- HTTP ----------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ImsError(0, "ConnectionError", "connection", type(exc).__name__) from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {}
            raise ImsError(
                r.status_code,
                str(body.get("error", "HTTPError")),
                str(body.get("code", "")),
                str(body.get("detail", r.text[:200])),
            )
        return r.json()

    def groups(self) -> list[dict[str, Any]]:
        out = list(self._call("GET", "/im/groups"))
        for g in out:  # a fresh device continues the server's series
            key = g["group"]
            self.state["seq"][key] = max(self.state["seq"].get(key, 0), int(g.get("last_seq", 0)))
        return out

    # -- sending -------------------------------------------------------------------------
    def _current(self, group: str, refresh: bool = False) -> tuple[int, bytes]:
        version = None if refresh else self.state["current"].get(group)
        v, gk = self.keys.group_key(group, version)
        self.state["current"][group] = max(v, self.state["current"].get(group, 0))
        return v, gk

    def send(self, group: str, content: Content) -> int:
        """Seal ``content`` for ``group`` with a fresh SK under the current GK and send it;
        returns its position. A ``rekey`` answer (the group changed) fetches the current
        group key and seals once more."""
        if group not in self.state["seq"]:
            self.groups()
        seq = self.state["seq"].get(group, 0) + 1
        for attempt in range(2):
            version, gk = self._current(group, refresh=attempt > 0)
            raw = seal(
                content,
                group=group,
                key_version=version,
                group_key=gk,
                sender=self.identity.member,
                device=self.device,
                sender_public=self.identity.sign_public,
                sign=self.identity.sign,
                seq=seq,
                timestamp_ms=int(self.clock() * 1000),
            )
            try:
                r = self._call(
                    "POST",
                    "/im/messages",
                    content=raw,
                    headers={"Content-Type": "application/octet-stream"},
                )
            except ImsError as exc:
                if exc.code == "rekey" and attempt == 0:
                    continue
                raise
            self.state["seq"][group] = seq
            env = parse(raw)
            # the server delivers it back to this device too: shown and stored once
            self.tracker.accept(env)
            self._remember(env, int(r["pos"]), content)
            self.save()
            return int(r["pos"])
        raise ImKeyVersionError(
            "rekey", "the group changed again while sending"
        )  # pragma: no cover

    def send_text(self, group: str, text: str) -> int:
        return self.send(group, Text(text))

    def send_file(
        self,
        group: str,
        src: BinaryIO | str | os.PathLike[str],
        *,
        name: str | None = None,
        media_type: str = "application/octet-stream",
        caption: str = "",
    ) -> int:
        """Encrypt the file as a blob (streamed, constant memory), upload it, then send the
        signed message that carries its key and digest."""
        if isinstance(src, str | os.PathLike):
            name = name or Path(src).name
            with open(src, "rb") as f:
                return self.send_file(group, f, name=name, media_type=media_type, caption=caption)
        sealer = imblob.BlobSealer(src)
        self._call(
            "PUT",
            f"/im/blobs/{sealer.blob_id}",
            params={"group": group, "offset": 0, "final": "true"},
            content=iter(sealer),
            headers={"Content-Type": "application/octet-stream"},
        )
        ref = FileRef(
            name=name or "file",
            media_type=media_type,
            size=sealer.size,
            blob=sealer.blob_id,
            key=sealer.key,
            digest=sealer.digest,
            caption=caption,
        )
        return self.send(group, ref)

    def fetch_file(self, ref: FileRef, dst: BinaryIO) -> None:
        """Download and decrypt a file announced by a message into ``dst``."""
        with self.http.stream("GET", f"/im/blobs/{ref.blob}") as r:
            if r.status_code >= 400:
                r.read()
                raise ImsError(r.status_code, "HTTPError", "", r.text[:200])
            stream = r.iter_bytes()
            buf = bytearray()

            def read(n: int) -> bytes:
                while len(buf) < n:
                    try:
                        buf.extend(next(stream))
                    except StopIteration:
                        break
                out = bytes(buf[:n])
                del buf[:n]
                return out

            imblob.open_blob(
                read, dst.write, blob_id=ref.blob, key=ref.key, size=ref.size, digest=ref.digest
            )

    # -- receiving -----------------------------------------------------------------------
    def _sender_key(self, env: Envelope) -> SM2PublicKey:
        k = (env.sender, env.sender_key)
        if k not in self._senders:
            try:
                cert = self.platform.signing_certificate(env.sender, env.sender_key)
            except (VerificationError, MstCryptError):
                raise ImSenderError(
                    "wrong-sender-key",
                    f"no valid signing certificate of {env.sender!r} has the key that signed",
                ) from None
            self._senders[k] = cert.public_key
        return self._senders[k]

    def open(self, raw: bytes, pos: int, *, live: bool = True) -> Received:
        """Open one envelope from the server (§6): structure, sender's certified key,
        signature, group key version, decryption, content, replay/reorder, authorship."""
        env = parse(raw)
        sender_public = self._sender_key(env)
        verify_envelope(env, sender_public)
        # the highest version received so far in the server's order of this group: the
        # server stores only current-version messages, so an older one after a newer one
        # is an injection under a key a removed member still holds
        seen = self.state["seen"].get(env.group, 0)
        if live and env.key_version < seen:
            raise ImKeyVersionError(
                "stale-key-version",
                f"group {env.group!r} is at key version {seen}; "
                f"a message under version {env.key_version} is refused",
            )
        _v, gk = self.keys.group_key(env.group, env.key_version)
        msg = decrypt_verified(env, gk)
        gap = self.tracker.accept(env) if live else 0
        if live and env.key_version > seen:
            self.state["seen"][env.group] = env.key_version
        c = msg.content
        if isinstance(c, Edit | Delete):
            author = self._author(env.group, c.ref)
            if author is not None and author != env.sender:
                raise ImSenderError(
                    "not-the-author", "only the author of a message may edit or delete it"
                )
        if live:
            self._remember(env, pos, c)
        return Received(pos, msg, gap)

    def _author(self, group: str, ref: bytes) -> str | None:
        for m in self.state["messages"].get(group, ()):
            if m["id"] == ref.hex():
                return str(m["sender"])
        return None

    def _remember(self, env: Envelope, pos: int, content: Content) -> None:
        msgs = self.state["messages"].setdefault(env.group, [])
        item = {
            "id": env.message_id.hex(),
            "pos": pos,
            "sender": env.sender,
            "type": content.TYPE.name.lower(),
            "at": env.timestamp_ms,
            "v": env.key_version,
        }
        item["payload"] = base64.b64encode(json.dumps(content._payload()).encode()).decode()
        msgs.append(item)
        del msgs[:-MAX_STORED_MESSAGES]

    def local_messages(self, group: str) -> list[dict[str, Any]]:
        """What this device has sent and received in ``group`` (from the sealed store)."""
        out = []
        for m in self.state["messages"].get(group, ()):
            payload = json.loads(base64.b64decode(m["payload"]))
            out.append({k: v for k, v in m.items() if k != "payload"} | {"content": payload})
        return out

    def presence(self, group: str) -> list[dict[str, Any]]:
        """The members of ``group`` with ``online`` and their connected ``devices``
        (across IMS instances when they share Redis)."""
        return list(self._call("GET", f"/im/groups/{group}/presence")["members"])

    def ack(self, group: str, pos: int) -> int:
        r = self._call("POST", "/im/ack", json={"group": group, "pos": pos})
        return int(r["acked"])

    def history(self, group: str, *, after: int = 0, limit: int = 100) -> list[Received | ImError]:
        """Stored messages of ``group`` (those since this member joined), each opened and
        checked, or the typed error that refused it."""
        frames = self._call(
            "GET", f"/im/groups/{group}/messages", params={"after": after, "limit": limit}
        )
        tracker = SequenceTracker()
        out: list[Received | ImError] = []
        for f in frames:
            try:
                raw = base64.b64decode(f["envelope"])
                r = self.open(raw, int(f["pos"]), live=False)
                tracker.accept(r.message.envelope)
                out.append(r)
            except ImError as exc:
                out.append(exc)
        return out

    def receive_pending(self) -> list[Received | ImError]:
        """Poll the offline queue over HTTP, open everything, acknowledge."""
        frames = self._call("GET", "/im/queue")
        return self._consume(frames)

    def _consume(self, frames: list[dict[str, Any]]) -> list[Received | ImError]:
        out: list[Received | ImError] = []
        last: dict[str, int] = {}
        for f in frames:
            item = self._open_frame(f)
            if item is not None:
                out.append(item)
            last[f["group"]] = max(last.get(f["group"], 0), int(f["pos"]))
        for group, pos in last.items():
            self.ack(group, pos)
        self.save()
        return out

    def _open_frame(self, f: dict[str, Any]) -> Received | ImError | None:
        """A delivered frame opened, or the error that refused it; ``None`` for a message
        this device already accepted (delivered again because its acknowledgement had
        not reached the server: at-least-once delivery, shown once)."""
        try:
            raw = base64.b64decode(f["envelope"])
            if len(raw) > MAX_ENVELOPE:
                raise PolicyError("oversized envelope")
            return self.open(raw, int(f["pos"]))
        except ImReplayError as exc:
            return None if exc.code == "replayed" else exc
        except ImError as exc:
            return exc

    def listen(
        self,
        *,
        until: Callable[[list[Received | ImError]], bool] | None = None,
        timeout: float = 30.0,
        on_message: Callable[[Received | ImError], None] | None = None,
        on_frame: Callable[[dict[str, Any]], None] | None = None,
        stop: Callable[[], bool] | None = None,
        outbox: Any = None,
    ) -> list[Received | ImError]:
        """Connect the WebSocket, receive (the offline queue first, then live messages),
        open each, acknowledge, until ``until(received)`` is true or ``timeout`` seconds
        pass without a frame (or ``stop()`` is true). Other server frames (``presence``,
        ``error``) go to ``on_frame``. ``outbox`` (a :class:`queue.Queue` of callables)
        lets another thread run work on this thread between frames (an interactive
        chat sends from the thread that owns the client)."""
        import queue as _queue

        from websockets.exceptions import ConnectionClosed

        headers = {"Authorization": f"Bearer {self._token}", "X-MST-Device": self.device.hex()}
        got: list[Received | ImError] = []
        with self._websocket(headers) as ws:
            try:
                idle = 0.0
                step = timeout if outbox is None and stop is None else min(timeout, 0.1)
                while not (until and until(got)) and not (stop and stop()):
                    while outbox is not None:
                        try:
                            job = outbox.get_nowait()
                        except _queue.Empty:
                            break
                        job()
                    try:
                        text = ws.recv(timeout=step)
                    except TimeoutError:
                        idle += step
                        if idle >= timeout:
                            break
                        continue
                    idle = 0.0
                    frame = json.loads(text)
                    if frame.get("op") != "msg":
                        if on_frame is not None:
                            on_frame(frame)
                        continue
                    item = self._open_frame(frame)
                    if item is not None:
                        got.append(item)
                        if on_message:
                            on_message(item)
                    ws.send(json.dumps({"op": "ack", "group": frame["group"], "pos": frame["pos"]}))
                # the server handles a connection's frames in order: its pong means every
                # acknowledgement above is stored
                ws.send(json.dumps({"op": "ping", "ref": "bye"}))
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    if json.loads(ws.recv(timeout=5)).get("op") == "pong":
                        break
            except (ConnectionClosed, TimeoutError):
                pass
        self.save()
        return got

    def _websocket(self, headers: dict[str, str]) -> Any:
        """The WebSocket to ``/im/ws``: over TLCP for an ``https://`` IMS URL, plain
        otherwise."""
        if self.tlcp_context is not None:
            from mstcrypt.protocols.tlcp.websocket import TLCPWebSocket

            return TLCPWebSocket.connect(
                self.ims_url + "/im/ws",
                self.tlcp_context,
                server_name=self.server_name,
                additional_headers=headers,
                max_size=2 * MAX_ENVELOPE,
            )
        from websockets.sync.client import connect

        url = "ws" + self.ims_url[4:] + "/im/ws"
        return connect(url, additional_headers=headers, max_size=2 * MAX_ENVELOPE)


def _tlcp_context(url: str, anchors: Sequence[Any], credentials: Any, context: Any) -> Any:
    """The TLCP client context for an ``https://`` IMS URL (None for ``http://``)."""
    if not url.startswith("https://"):
        if context is not None or anchors or credentials is not None:
            raise PolicyError("TLCP settings need an https:// IMS URL")
        return None
    if context is not None:
        if anchors or credentials is not None:
            raise PolicyError("give either tlcp_context or anchors/client_credentials")
        return context
    if not anchors:
        raise PolicyError(
            "an https:// IMS URL needs the root CA to authenticate the server: preset it "
            "in the token (`mstcrypt token init --anchor root.pem`) or pass anchors"
        )
    from mstcrypt.protocols.tlcp import TLCPContext

    return TLCPContext(credentials=credentials, trust_anchors=list(anchors))

"""The IMS server (guide §7.5, Annex D): WebSocket delivery and HTTP history and blobs,
over :class:`mstcrypt.apps.im.service.ImsService`.

* Authentication: the §7.3 session token (``Authorization: Bearer``, also on the
  WebSocket upgrade, never in a URL) and the device id (``X-MST-Device``).
* Delivery: every accepted envelope is stored first (the database is the offline queue),
  then announced to every instance through the fan-out (Redis pub/sub, or in-process for
  one instance). Each connection delivers in position order per group: a notification
  that is the next position is sent as is, anything else makes the connection read what
  it missed from the database — so a lost notification (a Redis restart) delays but
  never loses a message, and a reconnecting device gets its queue from its last ack.
* Back-pressure: each connection has a bounded queue; a client that does not keep up is
  disconnected (close code 1013) and catches up from its ack when it returns.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from mstcrypt import __version__
from mstcrypt.apps.im.errors import ImError
from mstcrypt.apps.im.format import MAX_ENVELOPE
from mstcrypt.apps.im.service import MAX_BLOB, ImsService, Stored, check_device
from mstcrypt.apps.login.tokens import TokenError
from mstcrypt.errors import AuthenticationError, MstCryptError, PolicyError
from mstcrypt.kmc.context import NotFoundError
from mstcrypt.server.errors import status_of
from mstcrypt.server.ims_presence import LocalPresence, Presence, RedisPresence

__all__ = ["DEFAULT_QUEUE", "MAX_FRAME", "Fanout", "LocalFanout", "RedisFanout", "create_ims_app"]

log = logging.getLogger("mstcrypt.ims")

#: the largest WebSocket frame a client may send (a base64 envelope in JSON)
MAX_FRAME = MAX_ENVELOPE * 4 // 3 + 256
DEFAULT_QUEUE = 256
CHANNEL = "mstcrypt:im:fanout"


# -- fan-out -------------------------------------------------------------------------------
class Fanout:
    """Announces stored envelopes to every instance; ``on_message`` is called on each
    instance (including the sender's) and ``on_resync`` when notifications may have been
    lost (the connection to Redis came back)."""

    on_message: Callable[[dict[str, Any]], None] = staticmethod(lambda _m: None)
    on_resync: Callable[[], None] = staticmethod(lambda: None)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def publish(self, note: dict[str, Any]) -> None:
        raise NotImplementedError


class LocalFanout(Fanout):
    """One instance: notifications stay in the process."""

    async def publish(self, note: dict[str, Any]) -> None:
        self.on_message(note)


class RedisFanout(Fanout):
    """Redis pub/sub between instances. Publishing failures are not errors for the
    sender (the message is stored); the subscriber reconnects with back-off and then
    asks every connection to resynchronise from the database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._task: asyncio.Task[None] | None = None
        self._redis: Any = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    async def publish(self, note: dict[str, Any]) -> None:
        try:
            await self._redis.publish(CHANNEL, json.dumps(note))
        except Exception as exc:  # redis down: stored anyway; local delivery goes on
            log.warning("fan-out publish failed (%s); local delivery only", type(exc).__name__)
            self.on_message(note)

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        delay = 0.05
        first = True
        while True:
            pubsub = None
            try:
                client = aioredis.Redis.from_url(self.url, socket_connect_timeout=2)
                pubsub = client.pubsub()
                await pubsub.subscribe(CHANNEL)
                self.connected.set()
                if not first:
                    self.on_resync()
                first, delay = False, 0.05
                async for item in pubsub.listen():
                    if item.get("type") != "message":
                        continue
                    try:
                        self.on_message(json.loads(item["data"]))
                    except (ValueError, KeyError, TypeError):
                        log.warning("ignored a malformed fan-out notification")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()
                log.warning("fan-out subscriber lost Redis (%s); retrying", type(exc).__name__)
                first = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()


# -- connections ---------------------------------------------------------------------------
class Connection:
    """One WebSocket of one device: a bounded queue of frames, the last position sent
    per group, and a flag telling the writer to read missed messages from the store."""

    def __init__(self, member: str, device: str, queue_size: int) -> None:
        self.member, self.device = member, device
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(queue_size)
        self.sent: dict[str, int] = {}
        self.resync = asyncio.Event()
        self.overflow = asyncio.Event()

    def offer(self, frame: dict[str, Any] | None) -> bool:
        """Queue a frame; a full queue marks the client too slow (it is disconnected and
        catches up from its acknowledgement when it reconnects)."""
        try:
            self.queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            self.overflow.set()
            return False


class Hub:
    def __init__(self, service: ImsService, fanout: Fanout, queue_size: int) -> None:
        self.service, self.fanout, self.queue_size = service, fanout, queue_size
        self.conns: dict[str, set[Connection]] = {}
        self._members: dict[str, tuple[int, frozenset[str]]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        fanout.on_message = self._note_threadsafe
        fanout.on_resync = self.resync_all

    def _note_threadsafe(self, note: dict[str, Any]) -> None:
        self.on_note(note)

    def on_note(self, note: dict[str, Any]) -> None:
        """A stored message was announced: deliver it to the local connections of the
        group's members at its key version (membership is read from the database, off
        the event loop, when the version is new to this instance)."""
        cached = self._members.get(note["group"])
        if cached is not None and cached[0] == int(note["version"]):
            self._deliver(note, cached[1])
            return
        task = asyncio.get_running_loop().create_task(self._refresh_then_deliver(note))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _refresh_then_deliver(self, note: dict[str, Any]) -> None:
        try:
            current, members = await asyncio.to_thread(self.service.group_state, note["group"])
        except MstCryptError:
            return
        cached = self._members.get(note["group"])
        if cached is None or cached[0] <= current:
            self._members[note["group"]] = (current, frozenset(members))
        if current == int(note["version"]):
            self._deliver(note, frozenset(members))
        else:  # the group changed again since: its members read from the store
            self.resync_all()

    def _deliver(self, note: dict[str, Any], members: frozenset[str]) -> None:
        group, pos = note["group"], int(note["pos"])
        prev = int(note.get("prev", -1))
        frame = {"op": "msg", "group": group, "pos": pos, "envelope": note["envelope"]}
        for member in members:
            for conn in self.conns.get(member, ()):
                last = conn.sent.get(group)
                if last is not None and pos <= last:
                    continue
                if last == prev:  # the group's next message for this connection
                    if conn.offer(frame):
                        conn.sent[group] = pos
                else:  # not caught up yet, or a notification was missed: read the store
                    conn.resync.set()

    def resync_all(self) -> None:
        for conns in self.conns.values():
            for conn in conns:
                conn.resync.set()

    def add(self, conn: Connection) -> None:
        self.conns.setdefault(conn.member, set()).add(conn)

    def remove(self, conn: Connection) -> None:
        conns = self.conns.get(conn.member)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.conns[conn.member]


# -- group commit --------------------------------------------------------------------------
class Committer:
    """One writer thread that stores envelopes and acknowledgements in batches (one
    transaction, so one durable commit, for everything that arrived while the previous
    batch was written): with SQLite's synchronous commits this is what lets hundreds of
    senders through, and no request thread ever waits for the write lock."""

    def __init__(self, service: ImsService, max_batch: int = 256) -> None:
        self.service, self.max_batch = service, max_batch
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def _submit(self, item: tuple[Any, ...]) -> Any:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ims-commit", daemon=True)
                self._thread.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._q.put((*item, loop, fut))
        return await fut

    async def submit(self, env: Any, member: str, device: str) -> Stored:
        """Store one checked envelope; returns it with its position."""
        return cast(Stored, await self._submit(("store", (env, member, device))))

    async def ack(self, member: str, device: str, group: str, pos: int) -> int:
        """Acknowledge ``group`` up to ``pos`` for the device; the acknowledged position."""
        return cast(int, await self._submit(("ack", (member, device, group, pos))))

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._q.put(None)  # stop after this batch
                    break
                batch.append(item)
            stores = [b for b in batch if b[0] == "store"]
            acks = [b for b in batch if b[0] == "ack"]
            try:
                stored, acked = self.service.commit_batch(
                    [b[1] for b in stores], [b[1] for b in acks]
                )
                results: list[Any] = [*stored, *acked]
            except Exception as exc:  # the database failed: every waiting caller hears it
                log.error("storing a batch failed: %s", type(exc).__name__)
                err = exc if isinstance(exc, MstCryptError) else PolicyError("storage failed")
                results = [err] * len(batch)
            for (_kind, _args, loop, fut), r in zip([*stores, *acks], results, strict=True):
                loop.call_soon_threadsafe(_settle, fut, r)


def _settle(fut: asyncio.Future[Any], result: Any) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


# -- authentication ------------------------------------------------------------------------
async def _claims(get_login: Callable[[], Any], authorization: str | None) -> dict[str, Any]:
    """The claims of a valid §7.3 session token with a platform owner."""
    if not authorization or not authorization.startswith("Bearer "):
        raise AuthenticationError("a session token from certificate login is required")
    token = authorization[7:].strip()
    try:
        claims = await asyncio.to_thread(get_login().verify_session, token)
    except (TokenError, MstCryptError) as exc:
        raise AuthenticationError(f"session token refused: {exc}") from None
    if not isinstance(claims.get("owner"), str) or not claims["owner"]:
        raise AuthenticationError("this session has no platform owner")
    return dict(claims)


async def _caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_mst_device: Annotated[str | None, Header()] = None,
) -> tuple[dict[str, Any], str]:
    claims = await _claims(request.app.state.ims_login, authorization)
    return claims, check_device(x_mst_device or "")


#: (session claims, device id) of the caller of an /im route
Caller = Annotated[tuple[dict[str, Any], str], Depends(_caller)]


# -- the app -------------------------------------------------------------------------------
def create_ims_app(
    kmc: Any,
    *,
    blob_dir: str | os.PathLike[str],
    redis_url: str | None = None,
    login: Any = None,
    queue_size: int = DEFAULT_QUEUE,
    instance: str | None = None,
    login_server_name: str = "mstcrypt-login",
    presence_ttl: float = 30.0,
) -> FastAPI:
    """The IMS app over the platform database of ``kmc`` (membership and key versions
    come from the KMC's tables; sessions from the login service on the same database)."""
    service = ImsService(kmc, blob_dir)
    fanout: Fanout = RedisFanout(redis_url) if redis_url else LocalFanout()
    hub = Hub(service, fanout, queue_size)
    committer = Committer(service)
    name = instance or uuid.uuid4().hex[:8]
    presence: Presence = (
        RedisPresence(redis_url, name, presence_ttl) if redis_url else LocalPresence()
    )

    async def presence_changed(member: str, device: str, online: bool) -> None:
        """A ``presence`` frame to the connected members of every group of ``member``."""
        groups = await asyncio.to_thread(service.groups_of, member)
        for g in groups:
            frame = {
                "op": "presence",
                "group": g["group"],
                "member": member,
                "device": device,
                "online": online,
            }
            for m in g["members"]:
                for conn in list(hub.conns.get(m, ())):
                    conn.offer(frame)

    presence.on_change = presence_changed

    async def presence_snapshot(conn: Connection) -> None:
        """A newly connected device hears who is online in its groups now; changes after
        that come by :func:`presence_changed` (without this, a device that connected
        just after another never heard of it)."""
        groups = await asyncio.to_thread(service.groups_of, conn.member)
        online = await presence.online(sorted({m for g in groups for m in g["members"]}))
        for g in groups:
            for m in g["members"]:
                for d in online.get(m, []):
                    if (m, d) != (conn.member, conn.device):
                        conn.offer(
                            {
                                "op": "presence",
                                "group": g["group"],
                                "member": m,
                                "device": d,
                                "online": True,
                            }
                        )

    if login is None:
        from mstcrypt.apps.login.service import LoginService

        login_holder: list[Any] = []

        def get_login() -> Any:
            if not login_holder:
                login_holder.append(LoginService(kmc, server_name=login_server_name))
            return login_holder[0]
    else:

        def get_login() -> Any:
            return login

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        hub.loop = asyncio.get_running_loop()
        service.db.start_checkpointer()  # SQLite: WAL checkpoints off the commit path
        await fanout.start()
        await presence.start()
        try:
            yield
        finally:
            await presence.stop()
            await fanout.stop()
            await asyncio.to_thread(committer.stop)
            await asyncio.to_thread(service.db.stop_checkpointer)

    app = FastAPI(title="mstcrypt IMS", version=__version__, lifespan=lifespan)
    app.state.ims = service
    app.state.hub = hub
    app.state.presence = presence
    app.state.ims_login = get_login

    @app.exception_handler(MstCryptError)
    async def _typed(_req: Request, exc: MstCryptError) -> JSONResponse:
        body = {"error": type(exc).__name__, "detail": str(exc)}
        if isinstance(exc, ImError):
            body["code"] = exc.code
        return JSONResponse(body, status_code=status_of(exc))

    router = APIRouter(prefix="/im", tags=["im"])

    async def accept_and_publish(claims: dict[str, Any], device: str, raw: bytes) -> Stored:
        signer = await asyncio.to_thread(service.signing_key, str(claims.get("serial")))
        env = await asyncio.to_thread(service.check, claims["owner"], device, raw, signer)
        stored = await committer.submit(env, claims["owner"], device)
        await fanout.publish(
            {
                "group": stored.group,
                "pos": stored.pos,
                "prev": stored.prev,
                "version": stored.key_version,
                "envelope": base64.b64encode(stored.envelope).decode(),
                "from": name,
            }
        )
        return stored

    @router.get("/groups")
    async def groups(who: Caller) -> list[dict[str, Any]]:
        return await asyncio.to_thread(service.groups_of, who[0]["owner"], who[1])

    @router.post("/messages")
    async def send(request: Request, who: Caller) -> dict[str, Any]:
        raw = await _bounded_body(request, MAX_ENVELOPE)
        stored = await accept_and_publish(who[0], who[1], raw)
        return {"group": stored.group, "pos": stored.pos}

    @router.get("/groups/{group}/messages")
    async def history(
        group: str,
        who: Caller,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(
            service.history, who[0]["owner"], group, after=after, limit=limit
        )
        return [r.frame() for r in rows]

    @router.get("/groups/{group}/presence")
    async def group_presence(group: str, who: Caller) -> dict[str, Any]:
        """Which members of ``group`` are online, per device (members only)."""
        _current, members = await asyncio.to_thread(service.group_state, group)
        if who[0]["owner"] not in members:  # one answer for "no group" and "not a member"
            raise NotFoundError(f"{who[0]['owner']!r} is not a member of a group {group!r}")
        online = await presence.online(sorted(members))
        return {
            "group": group,
            "members": [
                {"member": m, "online": bool(ds), "devices": ds} for m, ds in online.items()
            ],
        }

    @router.get("/queue")
    async def queue(
        who: Caller, limit: Annotated[int, Query(ge=1, le=500)] = 100
    ) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(service.pending, who[0]["owner"], who[1], limit=limit)
        return [r.frame() for r in rows]

    @router.post("/ack")
    async def ack(body: dict[str, Any], who: Caller) -> dict[str, Any]:
        group, pos = body.get("group"), body.get("pos")
        if not isinstance(group, str) or type(pos) is not int:
            raise PolicyError("ack takes {'group': str, 'pos': int}")
        acked = await committer.ack(who[0]["owner"], who[1], group, pos)
        return {"group": group, "acked": acked}

    @router.put("/blobs/{blob_id}")
    async def upload(
        blob_id: str,
        request: Request,
        who: Caller,
        group: Annotated[str, Query(max_length=64)],
        offset: Annotated[int, Query(ge=0, le=MAX_BLOB)] = 0,
        final: bool = False,
    ) -> dict[str, Any]:
        """Append the body to the blob at ``offset`` (resume after a dropped upload by
        asking ``GET /im/blobs/{id}/status``); ``final`` completes it."""
        owner = who[0]["owner"]
        part = await asyncio.to_thread(service.blob_begin, owner, group, blob_id, offset)
        written = offset
        with part.open("ab") as f:
            async for chunk in request.stream():
                written += len(chunk)
                if written > MAX_BLOB:
                    raise PolicyError(f"a blob is at most {MAX_BLOB} bytes")
                f.write(chunk)
        if final:
            size = await asyncio.to_thread(service.blob_finish, owner, blob_id)
            return {"blob": blob_id, "size": size, "complete": True}
        return {"blob": blob_id, "size": written, "complete": False}

    @router.get("/blobs/{blob_id}/status")
    async def blob_status(blob_id: str, who: Caller) -> dict[str, Any]:
        return await asyncio.to_thread(service.blob_status, who[0]["owner"], blob_id)

    @router.get("/blobs/{blob_id}")
    async def download(blob_id: str, who: Caller) -> StreamingResponse:
        path, size = await asyncio.to_thread(service.blob_open, who[0]["owner"], blob_id)

        def chunks() -> Any:
            with Path(path).open("rb") as f:
                while block := f.read(64 * 1024):
                    yield block

        return StreamingResponse(
            chunks(),
            media_type="application/octet-stream",
            headers={"Content-Length": str(size)},
        )

    app.include_router(router)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        connected = getattr(fanout, "connected", None)
        return {
            "status": "ok",
            "instance": name,
            "fanout": "redis" if redis_url else "local",
            "redis": None if connected is None else connected.is_set(),
            "connections": sum(len(c) for c in hub.conns.values()),
        }

    @app.websocket("/im/ws")
    async def ws(websocket: WebSocket) -> None:
        try:
            claims = await _claims(get_login, websocket.headers.get("authorization"))
            device = check_device(websocket.headers.get("x-mst-device") or "")
        except MstCryptError as exc:
            await websocket.close(code=1008, reason=str(exc)[:120])
            return
        await websocket.accept()
        conn = Connection(claims["owner"], device, queue_size)
        hub.add(conn)
        conn.resync.set()  # start with the offline queue
        await presence.connected(conn.member, conn.device)
        await presence_snapshot(conn)
        tasks = {
            asyncio.create_task(
                _reader(websocket, conn, claims, device, accept_and_publish, committer.ack)
            ),
            asyncio.create_task(_writer(websocket, conn, service)),
            asyncio.create_task(conn.overflow.wait()),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hub.remove(conn)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(presence.disconnected(conn.member, conn.device), 5.0)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if conn.overflow.is_set() and websocket.client_state == WebSocketState.CONNECTED:
                # a client that does not read may never let the close frame out: bounded wait
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        websocket.close(code=1013, reason="client too slow: reconnect"), 2.0
                    )

    return app


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PolicyError(f"the body is larger than {limit} bytes")
    out = bytearray()
    async for chunk in request.stream():
        out += chunk
        if len(out) > limit:
            raise PolicyError(f"the body is larger than {limit} bytes")
    return bytes(out)


async def _reader(
    websocket: WebSocket,
    conn: Connection,
    claims: dict[str, Any],
    device: str,
    accept_and_publish: Callable[..., Any],
    ack: Callable[[str, str, str, int], Awaitable[int]],
) -> None:
    try:
        while True:
            text = await websocket.receive_text()
            if len(text) > MAX_FRAME:
                await websocket.close(code=1009, reason="frame too large")
                return
            reply = await _handle(text, claims, device, accept_and_publish, ack)
            if reply is not None and not conn.offer(reply):
                return
    except (WebSocketDisconnect, RuntimeError, KeyError):
        return


async def _handle(
    text: str,
    claims: dict[str, Any],
    device: str,
    accept_and_publish: Callable[..., Any],
    ack: Callable[[str, str, str, int], Awaitable[int]],
) -> dict[str, Any] | None:
    """One client frame: ``send`` (an envelope), ``ack`` or ``ping``; errors are answered
    as frames, the connection stays up."""
    try:
        try:
            frame = json.loads(text)
        except ValueError:
            raise PolicyError("a frame is a JSON object") from None
        if not isinstance(frame, dict):
            raise PolicyError("a frame is a JSON object")
        op, ref = frame.get("op"), frame.get("ref")
        if op == "send":
            raw = frame.get("envelope")
            if not isinstance(raw, str):
                raise PolicyError("send takes a base64 envelope")
            try:
                data = base64.b64decode(raw, validate=True)
            except ValueError:
                raise PolicyError("the envelope is not base64") from None
            stored = await accept_and_publish(claims, device, data)
            return {"op": "sent", "ref": ref, "group": stored.group, "pos": stored.pos}
        if op == "ack":
            group, pos = frame.get("group"), frame.get("pos")
            if not isinstance(group, str) or type(pos) is not int:
                raise PolicyError("ack takes a group and a pos")
            acked = await ack(claims["owner"], device, group, pos)
            return None if ref is None else {"op": "acked", "ref": ref, "acked": acked}
        if op == "ping":
            return {"op": "pong", "ref": ref}
        raise PolicyError(f"unknown op {op!r}")
    except MstCryptError as exc:
        out = {"op": "error", "error": type(exc).__name__, "detail": str(exc)}
        if isinstance(exc, ImError):
            out["code"] = exc.code
        if "ref" in locals():
            out["ref"] = ref
        return out


async def _writer(websocket: WebSocket, conn: Connection, service: ImsService) -> None:
    """Send queued frames; on a resync request, read what the device has not been sent
    from the store first (ordered, after its ack or what this connection sent)."""
    while True:
        if conn.resync.is_set():
            conn.resync.clear()
            rows, starts = await asyncio.to_thread(_missed, service, conn)
            for group, after in starts.items():
                conn.sent.setdefault(group, after)
            for r in rows:
                if r.pos > conn.sent[r.group]:
                    await websocket.send_text(json.dumps(r.frame()))
                    conn.sent[r.group] = r.pos
            continue
        get = asyncio.ensure_future(conn.queue.get())
        wait = asyncio.ensure_future(conn.resync.wait())
        try:
            done, _ = await asyncio.wait({get, wait}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the connection ends: leave no waiter behind
            get.cancel()
            wait.cancel()
            raise
        if get in done:
            wait.cancel()
            frame = get.result()
            if frame is None:
                return
            await websocket.send_text(json.dumps(frame))
        else:
            get.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await get
            if get.done() and not get.cancelled():  # a frame arrived at the same moment
                frame = get.result()
                if frame is not None:
                    await websocket.send_text(json.dumps(frame))


def _missed(service: ImsService, conn: Connection) -> tuple[list[Stored], dict[str, int]]:
    """What the connection has not been sent, per group after what it sent (or, first,
    after the device's ack), and where each group started."""
    from mstcrypt.apps.im.models import ImCursor

    out: list[Stored] = []
    starts: dict[str, int] = {}
    for g in service.groups_of(conn.member):
        group = g["group"]
        after = conn.sent.get(group)
        if after is None:
            with service.db.read() as s:
                cur = s.get(ImCursor, (conn.member, conn.device, group))
            after = cur.acked if cur else 0
        starts[group] = after
        while True:
            rows = service.history(conn.member, group, after=after, limit=500)
            out.extend(rows)
            if len(rows) < 500:
                break
            after = rows[-1].pos
    return out, starts


@contextlib.contextmanager
def running_ims(
    kmc: Any,
    *,
    blob_dir: str | os.PathLike[str],
    redis_url: str | None = None,
    port: int | None = None,
    queue_size: int = DEFAULT_QUEUE,
    instance: str | None = None,
    presence_ttl: float = 30.0,
) -> Any:
    """Start an IMS instance in this process (a uvicorn thread) on a loopback port and
    yield its ``http://`` URL (tests, the demo and the benchmark)."""
    import socket
    import threading
    import time

    import uvicorn

    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
    app = create_ims_app(
        kmc,
        blob_dir=blob_dir,
        redis_url=redis_url,
        queue_size=queue_size,
        instance=instance,
        presence_ttl=presence_ttl,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ws_max_size=MAX_FRAME,
            ws="websockets-sansio",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise PolicyError("the IMS did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)

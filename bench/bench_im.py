"""End-to-end secure messaging throughput with many connected clients, crypto on vs off.

    .venv/bin/python bench/bench_im.py [--clients 1000] [--group-size 10] [--seconds 20]

Set-up (not timed): a KMC on SQLite, ``--clients`` members enrolled and logged in (§7.3
session tokens), groups of ``--group-size`` created by the KMC, each member's KDK and
group key fetched and unwrapped, one IMS instance in a separate process (so the server
and the 1000 clients do not share one interpreter), and every client connected over a
WebSocket.

Timed: one sender per group sends in a closed loop (the next message when the server
confirmed the last); a message counts when *every* member of its group has received and
opened it. With crypto on, that is the SDK's path: the sender seals (fresh SK, SM4-GCM,
SM2 signature), the server parses and verifies the signature against the session's
certificate and stores, every receiver verifies the signature and decrypts. With crypto
off, the same envelope bytes travel (structure checked, stored, fanned out) but nobody
signs, verifies, encrypts or decrypts. Figures: messages/s and deliveries/s (wall), p50
and p99 latency from the start of sealing to each receiver's decrypted plaintext, and
the CPU seconds of the server and client processes; the crypto overhead is the ratio of
the two throughputs (target: crypto costs < 30 % of throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import secrets
import socket
import struct
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

MASTER = secrets.token_bytes(32)


def _server(url: str, master: bytes, port: int, blob_dir: str, crypto: bool) -> None:
    import uvicorn

    from mstcrypt.apps.im.service import ImsService
    from mstcrypt.kmc.db import Database
    from mstcrypt.kmc.service import Kmc
    from mstcrypt.module.sscc import SoftKeyStore
    from mstcrypt.server.ims import MAX_FRAME, create_ims_app

    if not crypto:  # the baseline: no signature verification on the server either
        ImsService.signing_key = lambda self, serial: None  # type: ignore[assignment,method-assign,return-value]
    kmc = Kmc(Database(url), SoftKeyStore(master), crl_base_url="http://b")
    app = create_ims_app(kmc, blob_dir=blob_dir, queue_size=1024, login_server_name="login.bench")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", ws_max_size=MAX_FRAME)


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def setup(n: int, size: int) -> dict[str, Any]:
    from mstcrypt.apps.login.service import LoginService
    from mstcrypt.crypto import sm4
    from mstcrypt.crypto.sm2 import SM2PrivateKey
    from mstcrypt.formats.envelope import open_enveloped_key
    from mstcrypt.kmc.db import Database
    from mstcrypt.kmc.service import Kmc
    from mstcrypt.module.sscc import SoftKeyStore
    from mstcrypt.pki import CRL, build_csr, name
    from mstcrypt.protocols.login import LoginClient

    url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    kmc = Kmc(Database(url), SoftKeyStore(MASTER), crl_base_url="http://b")
    kmc.create_schema()
    kmc.init_ca(actor="bench")
    login = LoginService(kmc, server_name="login.bench")
    chain = kmc.chain()
    crls = [CRL.from_der(kmc.crl()), CRL.from_der(kmc.crl("root"))]
    users = []
    t0 = time.perf_counter()
    for i in range(n):
        key = SM2PrivateKey.generate()
        code, _ = kmc.create_enrollment_code(owner=f"u{i}", subject={"CN": f"u{i}"}, actor="b")
        e = kmc.enroll(code, build_csr(name(CN=f"u{i}"), key.public_key(), key.sign).der)
        enc = open_enveloped_key(e.enveloped_key, key)
        client = LoginClient(
            expected_server_name="login.bench",
            certificate=e.sign_certificate,
            signer=key.sign,
            chain=chain[:-1],
            anchors=chain[-1:],
        )
        ch = login.challenge(source=f"10.{i // 250}.{i % 250}.1")
        token = login.respond(
            client.respond(ch, now=datetime.now(UTC), crls=crls).to_json(),
            source=f"10.{i // 250}.{i % 250}.1",
        )["session_token"]
        users.append({"name": f"u{i}", "key": key, "enc": enc, "token": token})
        if (i + 1) % 200 == 0:
            print(f"  enrolled and logged in {i + 1}/{n} ({time.perf_counter() - t0:.0f} s)")
    groups = []
    for gi in range(n // size):
        members = users[gi * size : (gi + 1) * size]
        gid = f"g{gi}"
        kmc.create_group(gid, [m["name"] for m in members], actor="bench")
        for m in members:
            d = kmc.kdk_delivery(m["name"], actor="bench")
            kdk = m["enc"].decrypt(base64.b64decode(d["ciphertext"]))
            g = kmc.groups.group_key_for(gid, m["name"])
            m["gk"] = sm4.gcm_decrypt(
                kdk,
                bytes.fromhex(g["nonce"]),
                bytes.fromhex(g["wrapped"]),
                f"{gid}|{g['version']}|{m['name']}".encode(),
            )
            m["group"], m["version"] = gid, g["version"]
        groups.append({"id": gid, "members": members})
    kmc.db.dispose()
    return {"url": url, "users": users, "groups": groups}


async def run(world: dict[str, Any], port: int, seconds: float, crypto: bool) -> dict[str, Any]:
    import websockets

    from mstcrypt.apps.im import Text, parse, seal
    from mstcrypt.apps.im.format import decrypt_verified, verify_envelope

    users, groups = world["users"], world["groups"]
    pub = {u["name"]: u["key"].public_key() for u in users}
    for u in users:
        u["device"] = secrets.token_bytes(16)
        u["seq"] = 0
    template: dict[str, bytes] = {}  # crypto off: one sealed envelope per sender, re-stamped
    latencies: list[float] = []
    pending: dict[bytes, list[Any]] = {}  # message id -> [remaining receivers, t0]
    done_msgs = 0
    deliveries = 0
    stop = asyncio.Event()
    sent_ok: dict[str, asyncio.Event] = {}
    errors: list[Any] = []

    def envelope(u: dict[str, Any], t0: float) -> tuple[bytes, bytes]:
        u["seq"] += 1
        text = Text(f"{t0:.9f} " + "x" * 80)
        if crypto:
            raw = seal(
                text,
                group=u["group"],
                key_version=u["version"],
                group_key=u["gk"],
                sender=u["name"],
                device=u["device"],
                sender_public=pub[u["name"]],
                sign=u["key"].sign,
                seq=u["seq"],
                timestamp_ms=int(time.time() * 1000),
            )
            return raw, parse(raw).message_id
        if u["name"] not in template:
            template[u["name"]] = seal(
                text,
                group=u["group"],
                key_version=u["version"],
                group_key=u["gk"],
                sender=u["name"],
                device=u["device"],
                sender_public=pub[u["name"]],
                sign=u["key"].sign,
                seq=1,
                timestamp_ms=0,
            )
        raw = bytearray(template[u["name"]])
        env_len = len(parse(bytes(raw)).header)
        mid = secrets.token_bytes(16)
        raw[env_len - 32 : env_len - 16] = mid
        raw[env_len - 16 : env_len - 8] = struct.pack(">Q", u["seq"])
        return bytes(raw), mid

    async def client(u: dict[str, Any], ready: asyncio.Event, counter: list[int]) -> None:
        nonlocal done_msgs, deliveries
        headers = {"Authorization": f"Bearer {u['token']}", "X-MST-Device": u["device"].hex()}
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/im/ws",
            additional_headers=headers,
            max_size=2**20,
            open_timeout=120,
            ping_interval=None,
        ) as ws:
            u["ws"] = ws
            counter[0] += 1
            if counter[0] == len(users):
                ready.set()
            unacked = 0
            async for text in ws:
                frame = json.loads(text)
                if frame["op"] in ("sent", "error"):
                    if frame["op"] == "error" and not errors:
                        errors.append(frame)
                        print(f"  server refused: {frame}")
                    sent_ok[u["name"]].set()
                    continue
                if frame["op"] != "msg":
                    continue
                raw = base64.b64decode(frame["envelope"])
                env = parse(raw)
                entry = pending.get(env.message_id)
                if entry is None:  # an earlier run's message from the offline queue
                    continue
                if crypto:
                    verify_envelope(env, pub[env.sender])
                    msg = decrypt_verified(env, u["gk"])
                    t0 = float(msg.content.text.split(" ", 1)[0])  # type: ignore[attr-defined]
                else:
                    t0 = entry[1]
                now = time.perf_counter()
                latencies.append(now - t0)
                deliveries += 1
                entry[0] -= 1
                if entry[0] == 0:
                    del pending[env.message_id]
                    done_msgs += 1
                unacked += 1
                if unacked >= 20:
                    await ws.send(
                        json.dumps({"op": "ack", "group": frame["group"], "pos": frame["pos"]})
                    )
                    unacked = 0

    async def sender(g: dict[str, Any]) -> None:
        try:
            await _sender(g)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bench bug must not pass as "0 messages/s"
            print(f"  sender failed: {type(exc).__name__}: {exc}")
            raise

    async def _sender(g: dict[str, Any]) -> None:
        u = g["members"][0]
        sent_ok[u["name"]] = asyncio.Event()
        while not stop.is_set():
            t0 = time.perf_counter()
            raw, mid = envelope(u, t0)
            pending[mid] = [len(g["members"]) - 1, t0]
            sent_ok[u["name"]].clear()
            await u["ws"].send(
                json.dumps({"op": "send", "envelope": base64.b64encode(raw).decode()})
            )
            await sent_ok[u["name"]].wait()

    ready = asyncio.Event()
    counter = [0]
    tasks = [asyncio.create_task(client(u, ready, counter)) for u in users]
    await asyncio.wait_for(ready.wait(), 300)
    await asyncio.sleep(1.0)  # offline queues drained
    latencies.clear()
    c0 = time.process_time()
    w0 = time.perf_counter()
    d0, m0 = deliveries, done_msgs
    senders = [asyncio.create_task(sender(g)) for g in groups]
    await asyncio.sleep(seconds)
    stop.set()
    wall = time.perf_counter() - w0
    cpu = time.process_time() - c0
    msgs, dels = done_msgs - m0, deliveries - d0
    lat = sorted(latencies)
    await asyncio.sleep(0.5)
    for t in senders + tasks:
        t.cancel()
    await asyncio.gather(*senders, *tasks, return_exceptions=True)
    return {
        "msgs": msgs / wall,
        "deliveries": dels / wall,
        "p50": lat[len(lat) // 2] * 1000 if lat else float("nan"),
        "p99": lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan"),
        "client_cpu": cpu,
        "wall": wall,
    }


def measure(world: dict[str, Any], seconds: float, crypto: bool) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    proc = ctx.Process(
        target=_server, args=(world["url"], MASTER, port, tempfile.mkdtemp(), crypto)
    )
    proc.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the IMS did not start") from None
            time.sleep(0.1)
    s0 = _cpu_of(proc.pid)
    r = asyncio.run(run(world, port, seconds, crypto))
    r["server_cpu"] = _cpu_of(proc.pid) - s0
    proc.terminate()
    proc.join(10)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--group-size", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.clients + 256)), hard))
    print(f"set-up: {args.clients} members, groups of {args.group_size} (not timed)")
    world = setup(args.clients, args.group_size)
    results = {}
    for crypto in (False, True):
        world = {**world, "users": [dict(u) for u in world["users"]]}
        world["groups"] = [
            {
                "id": g["id"],
                "members": world["users"][i * args.group_size : (i + 1) * args.group_size],
            }
            for i, g in enumerate(world["groups"])
        ]
        r = measure(world, args.seconds, crypto)
        results[crypto] = r
        print(
            f"crypto {'on ' if crypto else 'off'}: {r['msgs']:8.1f} messages/s end to end "
            f"({r['deliveries']:8.1f} deliveries/s), latency p50 {r['p50']:.1f} ms, "
            f"p99 {r['p99']:.1f} ms; CPU s: server {r['server_cpu']:.1f}, "
            f"clients {r['client_cpu']:.1f} in {r['wall']:.1f} s"
        )
    on, off = results[True], results[False]
    cost = 1 - on["msgs"] / off["msgs"] if off["msgs"] else float("nan")
    print(
        f"crypto costs {cost * 100:.1f} % of throughput (on/off = {on['msgs'] / off['msgs']:.2f}); "
        f"target < 30 %: {'met' if cost < 0.30 else 'NOT met'}"
    )
    per_on = on["server_cpu"] / max(on["msgs"] * on["wall"], 1)
    per_off = off["server_cpu"] / max(off["msgs"] * off["wall"], 1)
    print(
        f"server CPU per message: {per_on * 1e3:.2f} ms with crypto, {per_off * 1e3:.2f} ms "
        f"without (server-side crypto is {max(per_on - per_off, 0) / per_on * 100:.0f} % of it); "
        "all clients share this process, so receivers' crypto, which runs on each "
        "terminal, is serialised here"
    )
    print(
        "per message with crypto on: sender 1 SM2 sign + 2 SM4-GCM; server 1 SM2 verify; "
        f"each of {args.group_size - 1} receivers 1 SM2 verify + 2 SM4-GCM"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

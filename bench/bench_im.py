"""End-to-end secure messaging throughput with many connected clients, crypto on vs off.

    .venv/bin/python bench/bench_im.py [--clients 1000] [--group-size 10] [--seconds 20]
        [--client-procs 2] [--rounds 1]

Set-up (not timed): a KMC on SQLite, ``--clients`` members enrolled and logged in (§7.3
session tokens), groups of ``--group-size`` created by the KMC, each member's KDK and
group key fetched and unwrapped, one IMS instance in a separate process, the clients
forked into ``--client-procs`` processes (members dealt round-robin, so most messages
cross between processes, as between devices), every client connected over a WebSocket,
and all client processes released together at a barrier.

Timed: one sender per group sends in a closed loop (the next message when the server
confirmed the last); every delivery of a message sent in the window counts, and
messages/s = deliveries/s / (group size - 1). With crypto on, that is the SDK's path:
the sender seals (fresh SK, SM4-GCM, SM2 signature), the server parses and verifies the
signature against the session's certificate and stores, every receiver verifies the
signature and decrypts. With crypto off, the same work without cryptography: the sender
encodes the content and builds the same envelope layout with the content in the clear
where the ciphertext goes, the server parses, checks and stores it and fans it out,
every receiver parses it and decodes the content — but nobody signs, verifies, encrypts
or decrypts. Figures: messages/s and deliveries/s (wall), p50 and p99 latency from the
start of sealing to each receiver's decoded content, and the CPU seconds of the server
and client processes; the crypto overhead is the ratio of the two throughputs (target:
crypto costs < 30 % of throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import resource
import secrets
import socket
import statistics
import struct
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

MASTER = secrets.token_bytes(32)
#: crypto off: the length of the filler where a DER SM2 signature goes (a typical one)
FILLER_SIG = 71


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


async def run(
    world: dict[str, Any],
    port: int,
    seconds: float,
    crypto: bool,
    mine: set[str],
    barrier: Any,
    seq_base: int,
) -> dict[str, Any]:
    """One client process: the members named in ``mine`` connect, wait at ``barrier`` for
    the other client processes, then the senders among them send for ``seconds``; every
    delivery of a message sent in that window is counted, with its latency (the clock is
    CLOCK_MONOTONIC, shared by the processes)."""
    import websockets

    from mstcrypt.apps.im import Text, parse, seal
    from mstcrypt.apps.im.content import decode_content, encode_content
    from mstcrypt.apps.im.format import (
        KEY_SIZE,
        NONCE_SIZE,
        TAG_SIZE,
        _header,
        decrypt_verified,
        key_id,
        verify_envelope,
    )

    users = [u for u in world["users"] if u["name"] in mine]
    groups = [g for g in world["groups"] if g["members"][0]["name"] in mine]
    pub = {u["name"]: u["key"].public_key() for u in world["users"]}
    for u in users:
        u["seq"] = seq_base
    kid: dict[str, bytes] = {}  # crypto off: each sender's key id
    latencies: list[float] = []
    window = [float("inf"), float("inf")]  # counted: messages sent in [start, end)
    deliveries = 0
    stop = asyncio.Event()
    sent_ok: dict[str, asyncio.Event] = {}
    errors: list[Any] = []

    def envelope(u: dict[str, Any], t0: float) -> bytes:
        u["seq"] += 1
        text = Text(f"{t0:.9f} " + "x" * 80)
        if crypto:
            return seal(
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
        # the same envelope without cryptography: the content encoded and carried in
        # the clear where the ciphertext goes (tag-sized zeros after it), zero nonces
        # and wrapped key, and a signature-sized filler (the sender's real key id)
        if u["name"] not in kid:
            kid[u["name"]] = key_id(pub[u["name"]])
        header = _header(
            text.TYPE,
            u["group"].encode(),
            u["version"],
            u["name"].encode(),
            u["device"],
            kid[u["name"]],
            secrets.token_bytes(16),
            u["seq"],
            int(time.time() * 1000),
        )
        body = encode_content(text) + bytes(TAG_SIZE)
        signed = b"".join(
            (
                header,
                bytes(NONCE_SIZE),
                bytes(KEY_SIZE + TAG_SIZE),
                bytes(NONCE_SIZE),
                struct.pack(">I", len(body)),
                body,
            )
        )
        return signed + bytes([FILLER_SIG]) + bytes(FILLER_SIG)

    async def client(u: dict[str, Any], ready: asyncio.Event, counter: list[int]) -> None:
        nonlocal deliveries
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
                if env.sender == u["name"] or env.timestamp_ms < started_ms:
                    continue  # its own message echoed; an earlier run's from the queue
                if crypto:
                    verify_envelope(env, pub[env.sender])
                    content = decrypt_verified(env, u["gk"]).content
                else:  # the same decoding of the content, from the clear
                    content = decode_content(env.content_type, env.body[:-TAG_SIZE])
                t0 = float(content.text.split(" ", 1)[0])  # type: ignore[attr-defined]
                if window[0] <= t0 < window[1]:
                    latencies.append(time.monotonic() - t0)
                    deliveries += 1
                unacked += 1
                if unacked >= 20:
                    await ws.send(
                        json.dumps({"op": "ack", "group": frame["group"], "pos": frame["pos"]})
                    )
                    unacked = 0

    async def sender(g: dict[str, Any]) -> None:
        u = g["members"][0]
        sent_ok[u["name"]] = asyncio.Event()
        try:
            while not stop.is_set():
                raw = envelope(u, time.monotonic())
                sent_ok[u["name"]].clear()
                await u["ws"].send(
                    json.dumps({"op": "send", "envelope": base64.b64encode(raw).decode()})
                )
                await sent_ok[u["name"]].wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bench bug must not pass as "0 messages/s"
            print(f"  sender failed: {type(exc).__name__}: {exc}")
            raise

    started_ms = int(time.time() * 1000)
    ready = asyncio.Event()
    counter = [0]
    tasks = [asyncio.create_task(client(u, ready, counter)) for u in users]
    if users:
        await asyncio.wait_for(ready.wait(), 300)
    await asyncio.to_thread(barrier.wait)  # every client process connected
    await asyncio.sleep(1.0)  # offline queues drained
    start = time.monotonic()
    window[:] = [start, start + seconds]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    senders = [asyncio.create_task(sender(g)) for g in groups]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.sleep(2.0)  # the last messages of the window reach their readers
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    for t in senders + tasks:
        t.cancel()
    await asyncio.gather(*senders, *tasks, return_exceptions=True)
    return {
        "deliveries": deliveries,
        "latencies": latencies,
        "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        "errors": len(errors),
    }


def _client_proc(
    world: dict[str, Any], port: int, seconds: float, crypto: bool, mine: set[str],
    barrier: Any, seq_base: int, conn: Any,
) -> None:  # fmt: skip
    conn.send(asyncio.run(run(world, port, seconds, crypto, mine, barrier, seq_base)))
    conn.close()


def measure(
    world: dict[str, Any], seconds: float, crypto: bool, procs: int, seq_base: int
) -> dict[str, Any]:
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
    # the client processes are forked from this one (they inherit the enrolled world);
    # members are dealt round-robin, so most messages cross from one process to another
    fork = mp.get_context("fork")
    barrier = fork.Barrier(procs)
    names = [u["name"] for u in world["users"]]
    clients = []
    for i in range(procs):
        recv, send = fork.Pipe(duplex=False)
        p = fork.Process(
            target=_client_proc,
            args=(world, port, seconds, crypto, set(names[i::procs]), barrier, seq_base, send),
        )
        p.start()
        send.close()
        clients.append((p, recv))
    s0 = _cpu_of(proc.pid)
    parts = [recv.recv() for _p, recv in clients]
    for p, _recv in clients:
        p.join(30)
    server_cpu = _cpu_of(proc.pid) - s0
    proc.terminate()
    proc.join(10)
    lat = sorted(x for part in parts for x in part["latencies"])
    dels = sum(part["deliveries"] for part in parts)
    receivers = len(world["groups"][0]["members"]) - 1
    return {
        "msgs": dels / receivers / seconds,
        "deliveries": dels / seconds,
        "p50": lat[len(lat) // 2] * 1000 if lat else float("nan"),
        "p99": lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan"),
        "client_cpu": sum(part["cpu"] for part in parts),
        "server_cpu": server_cpu,
        "wall": seconds,
        "errors": sum(part["errors"] for part in parts),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--group-size", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument(
        "--client-procs", type=int, default=2, help="processes the clients are spread over"
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="off/on pairs, alternating (medians reported)"
    )
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.clients + 256)), hard))
    print(
        f"set-up: {args.clients} members, groups of {args.group_size}, clients in "
        f"{args.client_procs} processes (not timed)"
    )
    world = setup(args.clients, args.group_size)
    for u in world["users"]:
        u["device"] = secrets.token_bytes(16)  # one device each, kept across the runs
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    order = []
    for i in range(args.rounds):  # off on, on off, off on, ...: drift falls on both sides
        order += [False, True] if i % 2 == 0 else [True, False]
    for n, crypto in enumerate(order):
        r = measure(world, args.seconds, crypto, args.client_procs, (n + 1) * 10**7)
        results[crypto].append(r)
        print(
            f"crypto {'on ' if crypto else 'off'}: {r['msgs']:8.1f} messages/s end to end "
            f"({r['deliveries']:8.1f} deliveries/s), latency p50 {r['p50']:.1f} ms, "
            f"p99 {r['p99']:.1f} ms; CPU s: server {r['server_cpu']:.1f}, "
            f"clients {r['client_cpu']:.1f} in {r['wall']:.1f} s"
            + (f"; {r['errors']} refused" if r["errors"] else "")
        )

    def med(crypto: bool, key: str) -> float:
        return float(statistics.median(r[key] for r in results[crypto]))

    on, off = med(True, "msgs"), med(False, "msgs")
    cost = 1 - on / off if off else float("nan")
    label = f"medians of {args.rounds} rounds: " if args.rounds > 1 else ""
    print(
        f"{label}crypto costs {cost * 100:.1f} % of throughput (on/off = {on / off:.2f}; "
        f"p99 {med(True, 'p99'):.0f} / {med(False, 'p99'):.0f} ms); "
        f"target < 30 %: {'met' if cost < 0.30 else 'NOT met'}"
    )
    cpu_on = (med(True, "server_cpu") + med(True, "client_cpu")) / (on * args.seconds)
    cpu_off = (med(False, "server_cpu") + med(False, "client_cpu")) / (off * args.seconds)
    print(
        f"CPU per message (server + clients): {cpu_on * 1e3:.2f} ms with crypto, "
        f"{cpu_off * 1e3:.2f} ms without"
    )
    print(
        "per message with crypto on: sender 1 SM2 sign + 2 SM4-GCM; server 1 SM2 verify; "
        f"each of {args.group_size - 1} receivers 1 SM2 verify + 2 SM4-GCM"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Presence over Redis: two IMS instances (one in this process, one a real
``mstcrypt ims serve`` subprocess) on one Redis; members connected to different
instances see each other online; the subprocess is killed (no goodbye) and its members
go offline within the presence TTL; only members may ask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from im_helpers import Redis, World, free_port, world

from mstcrypt.apps.im.terminal import ImsError
from mstcrypt.server.ims import running_ims

TTL = 2.0


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("impresence")
    redis = Redis(tmp)
    redis.start()
    with world(tmp) as wd:
        for name in ("alice", "bob", "carol", "dave"):
            wd.enroll(name)
        with wd.admin() as a:
            a.create_group("office", ["alice", "bob", "carol"])
        kmc = wd.kmc()
        with running_ims(
            kmc, blob_dir=tmp / "blobs", redis_url=redis.url, instance="A", presence_ttl=TTL
        ) as a_url:
            wd.a, wd.redis = a_url, redis  # type: ignore[attr-defined]
            yield wd
        kmc.db.dispose()
    redis.stop()


def serve_b(w: World, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"),
        MSTCRYPT_DATA_DIR=str(w.settings.data_dir),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mstcrypt",
            "ims",
            "serve",
            "--port",
            str(port),
            "--blob-dir",
            str(tmp / "blobs"),
            "--redis",
            w.redis.url,  # type: ignore[attr-defined]
            "--presence-ttl",
            str(TTL),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).json().get("redis"):
                return proc, url
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "ims serve exited"
        assert time.monotonic() < deadline, "ims serve did not start"
        time.sleep(0.1)


class Listener:
    """A member's WebSocket in a thread, collecting the server's non-message frames."""

    def __init__(self, client: Any) -> None:
        self.client, self.frames = client, []  # type: ignore[var-annotated]
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=lambda: client.listen(
                timeout=60, stop=self.stop.is_set, on_frame=self.frames.append
            ),
            daemon=True,
        )
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)

    def saw(self, member: str, online: bool) -> bool:
        return any(
            f.get("op") == "presence" and f["member"] == member and f["online"] is online
            for f in list(self.frames)
        )


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, what
        time.sleep(0.1)
    return time.monotonic() - start


def online(client: Any) -> dict[str, list[str]]:
    return {m["member"]: m["devices"] for m in client.presence("office") if m["online"]}


def test_presence_across_instances_and_crash(w: World, tmp_path: Path) -> None:
    proc, b_url = serve_b(w, tmp_path)
    alice = w.im("alice", w.a, state=False)  # type: ignore[attr-defined]
    bob = w.im("bob", b_url, state=False)
    carol = w.im("carol", w.a, state=False)  # type: ignore[attr-defined]
    dave = w.im("dave", w.a, state=False)  # type: ignore[attr-defined]
    la = lb = None
    try:
        assert online(carol) == {}
        la = Listener(alice)  # on A
        lb = Listener(bob)  # on B
        wait_for(lambda: set(online(carol)) == {"alice", "bob"}, 10, "both online, seen from A")
        assert online(carol)["bob"] == [bob.device.hex()]
        # asked on B, the same answer
        bob_http = w.im("bob", b_url, state=False)
        wait_for(lambda: set(online(bob_http)) == {"alice", "bob"}, 10, "both online, from B")
        bob_http.close()
        # each was told of the other by a presence frame
        wait_for(lambda: la.saw("bob", True), 10, "alice told bob is online")
        wait_for(lambda: lb.saw("alice", True), 10, "bob told alice is online")
        # a non-member learns nothing (the same answer as for a group that does not exist)
        with pytest.raises(ImsError) as e:
            dave.presence("office")
        assert e.value.status == 404
        with pytest.raises(ImsError) as e2:
            dave.presence("no-such-group")
        assert e2.value.status == 404 and str(e2.value).split(":")[0] == str(e.value).split(":")[0]
        # a clean disconnect on A is announced at once
        lc = Listener(carol)
        wait_for(lambda: la.saw("carol", True), 10, "carol online")
        lc.close()
        wait_for(lambda: la.saw("carol", False), 10, "carol offline")
        # instance B crashes: nothing announced, its set expires
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        took = wait_for(lambda: "bob" not in online(carol), TTL * 3, "bob offline after the TTL")
        wait_for(lambda: la.saw("bob", False), TTL * 2, "alice told bob is offline")
        # the set's TTL from the last heartbeat, plus one heartbeat of A, plus polling
        print(f"bob offline {took:.2f} s after the crash (TTL {TTL} s)")
        assert took <= TTL * 4 / 3 + 1.0
        assert set(online(carol)) == {"alice"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for listener in (la, lb):
            if listener is not None:
                listener.close()
        for c in (alice, bob, carol, dave):
            c.close()


def test_presence_without_redis_is_local(w: World, tmp_path: Path) -> None:
    kmc = w.kmc()
    try:
        with running_ims(kmc, blob_dir=tmp_path / "blobs") as url:
            alice = w.im("alice", url, state=False)
            carol = w.im("carol", url, state=False)
            assert online(carol) == {}
            la = Listener(alice)
            wait_for(lambda: set(online(carol)) == {"alice"}, 10, "alice online (local)")
            la.close()
            wait_for(lambda: online(carol) == {}, 10, "alice offline (local)")
            alice.close()
            carol.close()
    finally:
        kmc.db.dispose()

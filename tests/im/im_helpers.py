"""Shared set-up of the IM tests: a platform (plain HTTP, in this process), members
enrolled into soft tokens and logged in, groups created by a registration officer, IMS
instances, and a redis-server on a free port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mstcrypt.apps.im.terminal import Identity, ImClient
from mstcrypt.cli.platform import running_platform
from mstcrypt.client import Client
from mstcrypt.module import SoftToken
from mstcrypt.server.config import Settings
from platform_helpers import add_operators, free_port

PIN, ADMIN_CODE = "246810", "admin-unlock-code"


@dataclass
class Member:
    name: str
    token: SoftToken
    session: str
    identity: Identity


@dataclass
class World:
    url: str
    settings: Settings
    ops: dict[str, str]
    root: Any
    tmp: Path
    members: dict[str, Member] = field(default_factory=dict)

    def client(self, **kw: Any) -> Client:
        return Client(self.url, anchors=[self.root], **kw)

    def admin(self) -> Client:
        return self.client(operator_token=self.ops["alice"])

    def enroll(self, name: str) -> Member:
        with self.admin() as a:
            code = a.create_enrollment_code(name, {"C": "CN", "O": "Example Unit", "CN": name})[
                "code"
            ]
        tok = SoftToken.init(self.tmp / f"{name}.tok", PIN, ADMIN_CODE, iterations=100_000)
        tok.login(PIN)
        with self.client() as c:
            c.enroll(code, tok)
            session = c.login(tok)["session_token"]
        m = Member(name, tok, session, Identity.from_token(tok, name))
        self.members[name] = m
        return m

    def im(self, name: str, ims_url: str, *, state: bool = True) -> ImClient:
        m = self.members[name]
        return ImClient(
            ims_url,
            identity=m.identity,
            platform=_Keys(self.client()),
            session_token=m.session,
            state_path=(self.tmp / f"{name}.imstate") if state else None,
        )

    def kmc(self) -> Any:
        return self.settings.kmc()


class _Keys:
    """The platform client as the SDK's PlatformKeys (kept open for the test)."""

    def __init__(self, c: Client) -> None:
        self.c = c

    def kdk(self, session_token: str) -> dict[str, Any]:
        return self.c.kdk(session_token)

    def group_key(
        self, session_token: str, group: str, version: int | None = None
    ) -> dict[str, Any]:
        return self.c.group_key(session_token, group, version)

    def signing_certificate(self, owner: str, key_id: bytes) -> Any:
        return self.c.signing_certificate(owner, key_id)


@contextlib.contextmanager
def world(tmp: Path, database_url: str | None = None) -> Iterator[World]:
    data_dir = tmp / "data"
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        checkpoint_seconds=3600,
        static_operators=True,
        crl_max_delay=0,
    )
    with running_platform(data_dir, settings, tls=False) as url:
        kmc = settings.kmc()
        try:
            ops = add_operators(kmc)
            root = kmc.chain()[-1]
        finally:
            kmc.db.dispose()
        yield World(url, settings, ops, root, tmp)


class Redis:
    def __init__(self, tmp: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (Debian package redis-server)")
        self.exe, self.tmp, self.port = exe, tmp, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

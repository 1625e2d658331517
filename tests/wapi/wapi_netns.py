"""Three network namespaces for WAPI on real frames: terminal <-veth-> AP <-veth-> ASU.
The terminal-AP link carries Ethernet (WAI 0x88B4, data 0x88B5); the AP-ASU link carries
UDP over IPv4. Everything is removed on close."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if shutil.which("ip") is None:
        return "iproute2 (ip) not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"wapiprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as e:
        return f"cannot create a network namespace: {e}"
    _ip("netns", "del", name)
    return None


class Topology:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000:x}"
        self.ns = {r: f"wapi-{r}-{tag}" for r in ("sta", "ap", "asu")}
        self.ifs = {"sta": f"ws{tag}", "ap": f"wa{tag}", "ap_up": f"wu{tag}", "asu": f"wz{tag}"}
        self.asu_ip = "10.88.0.1"
        created: list[str] = []
        try:
            for n in self.ns.values():
                _ip("netns", "add", n)
                created.append(n)
            _ip("link", "add", self.ifs["sta"], "type", "veth", "peer", "name", self.ifs["ap"])
            _ip("link", "add", self.ifs["asu"], "type", "veth", "peer", "name", self.ifs["ap_up"])
            for ifname, role in (("sta", "sta"), ("ap", "ap"), ("ap_up", "ap"), ("asu", "asu")):
                _ip("link", "set", self.ifs[ifname], "netns", self.ns[role])
            for ifname, role in (("sta", "sta"), ("ap", "ap"), ("ap_up", "ap"), ("asu", "asu")):
                self.run(role, "ip", "link", "set", self.ifs[ifname], "up")
                self.run(role, "ip", "link", "set", "lo", "up")
            self.run("asu", "ip", "addr", "add", f"{self.asu_ip}/24", "dev", self.ifs["asu"])
            self.run("ap", "ip", "addr", "add", "10.88.0.2/24", "dev", self.ifs["ap_up"])
        except BaseException:
            for n in created:
                subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)
            raise

    def cmd(self, role: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[role], *args]

    def run(self, role: str, *args: str) -> None:
        subprocess.run(self.cmd(role, *args), check=True, capture_output=True, timeout=30)

    def mstcrypt(self, role: str, *args: str) -> list[str]:
        return self.cmd(role, sys.executable, "-m", "mstcrypt", *args)

    def env(self, password: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
        env["MSTCRYPT_KEY_PASS"] = password
        return env

    def close(self) -> None:
        for n in self.ns.values():  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)

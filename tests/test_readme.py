"""Every command README.md shows keeps working: the shell blocks are extracted and run as
written, or checked against the real command line, and a README command that stops
working fails this test (finding 12 of issue 9).

README.md's fenced ``sh`` blocks, by section (``BLOCKS``; an unclassified block fails
:func:`test_every_readme_block_is_classified`):

* "Running the platform", "File encryption", "Electronic seals", "Encrypted mail" (its
  own SMTP server on port 2525) then "Trusted boot" (both its blocks; the second
  attests to the running platform): **run** as
  written, top to bottom, in
  one bash session (``set -euo pipefail``) in a temporary directory, with the venv's
  ``mstcrypt`` first on PATH and no ``MSTCRYPT_*`` variable inherited. A line ending in
  ``&`` starts a background server: the harness waits until its ``--port`` accepts a TCP
  connection before the next line and stops it (SIGTERM) at the end. The port is the
  README's, 8600: the test is skipped when something else listens there. The file block
  continues in the same session because its text says so (the platform still running,
  alice enrolled). Afterwards the artefacts are checked (session token, decrypted file).
* "Command line", the OpenSSL interoperability block: **run** as written in its own
  bash session (skipped without an OpenSSL 3 ``openssl`` with SM2).
* "Command line", the syntax summary, and "TLCP and the mobile access gateway":
  **checked** — each ``mstcrypt`` line's subcommand path and every option it names are
  looked up in the real CLI (typer/click introspection), and it may not pass more
  positional arguments than the command takes. The TLCP block needs a server
  certificate pair with PEM keys from some CA and a deployed gateway, which no
  ``mstcrypt`` command produces; the summary shows syntax (``[--pass P]``, ``a|b``, ``…``).
* the two install lines at the top: **checked** (they create a venv and run the whole
  suite; ``mstcrypt demo`` itself runs in ``test_client.test_cli_demo``).

Every executed block is checked as well. docs/*.md: every ``mstcrypt`` command in a shell
block or in inline code is **checked** the same way.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main

from mstcrypt.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
VENV_BIN = Path(sys.executable).parent
SHELLS = ("sh", "bash", "shell", "console")
PORT = 8600
SMTP_PORT = 2525  # the mail walkthrough's SMTP server

#: README section (heading without "## ", "" before the first) -> approach of each of its
#: sh blocks in order: "session" (the platform walkthrough, one bash session), "run" (a
#: bash session of its own), "check" (CLI introspection only)
BLOCKS: dict[str, list[str]] = {
    "": ["check", "check"],
    "Running the platform": ["session"],
    "TLCP and the mobile access gateway (guide 6.4)": ["check"],
    "File encryption (guide 7.6)": ["session"],
    "Command line": ["check", "run"],
    "WLAN access with WAPI (guide 6.3)": ["check"],
    "Voice call encryption (guide 7.1)": ["check"],
    "Electronic seals (guide 7.4)": ["session"],
    # run by tests/appsign/test_appsign_cli.py on an APK it builds and signs with apksigner
    "App signing (guide 6.2)": ["check"],
    "Encrypted mail (guide 7.2)": ["session"],
    # the first also runs alone in tests/boot/test_boot_readme.py
    "Trusted boot (guide 6.1)": ["session", "session"],
}


@dataclass
class Block:
    path: Path
    section: str
    index: int  # among the section's shell blocks
    line: int  # of the first line inside the fence (1-based)
    lines: list[str]

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line} ({self.section or 'top'})"


def shell_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    section, counts = "", dict[str, int]()
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        text = lines[i]
        if text.startswith("## "):
            section = text[3:].strip()
        fence = re.match(r"^```\s*(\w*)\s*$", text)
        if fence:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if fence.group(1) in SHELLS:
                n = counts.get(section, 0)
                counts[section] = n + 1
                blocks.append(Block(path, section, n, i + 2, lines[i + 1 : j]))
            i = j
        i += 1
    return blocks


def logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """(README line number, command) with backslash continuations joined."""
    buf, start = "", 0
    for n, text in enumerate(block.lines, start=block.line):
        if not buf:
            start = n
        if text.rstrip().endswith("\\"):
            buf += text.rstrip()[:-1] + " "
            continue
        buf += text
        if buf.strip():
            yield start, buf
        buf = ""
    if buf.strip():
        yield start, buf


# ------------------------------------------------------------ CLI introspection --------
# typer's click objects (typer bundles its own click): a group has ``commands``; a
# parameter's ``param_type_name`` is "option" or "argument"
Command = Any
CLI: Command = typer.main.get_command(app)
OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}
ELLIPSIS = {"...", "…"}


def invocations(command: str) -> Iterator[list[str]]:
    """The ``mstcrypt`` invocations in one shell command line: the words after
    ``mstcrypt`` (or ``.../mstcrypt``) up to the next shell operator. A line inside a
    multi-line quoted string (``python -c '...``) is split on blanks."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        words = command.split()
    segment: list[str] = []
    for w in [*words, ";"]:
        if w in OPERATORS or w.startswith((">", "2>")):
            if segment and (segment[0] == "mstcrypt" or segment[0].endswith("/mstcrypt")):
                yield segment[1:]
            segment = []
        else:
            segment.append(w)


def is_group(cmd: Command) -> bool:
    return hasattr(cmd, "commands")


def _options(cmd: Command) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in cmd.params:
        if p.param_type_name == "option":
            for name in (*p.opts, *p.secondary_opts):
                out[name] = p
    return out


def _strip(word: str) -> str:
    return word.strip("[]")


def check_invocation(words: list[str]) -> list[str]:
    """Problems of one ``mstcrypt`` invocation: unknown subcommands or options, more
    positional arguments than the command takes. ``a|b`` in a subcommand position
    stands for each alternative; ``[...]`` and ``…`` are syntax."""
    problems: list[str] = []
    paths: list[tuple[list[str], Command]] = [([], CLI)]
    rest = list(words)
    while rest and is_group(paths[0][1]):
        word = _strip(rest[0])
        if not word or word.startswith("-") or word in ELLIPSIS:
            break
        expanded = []
        for names, group in paths:
            for alt in word.split("|"):
                sub = group.commands.get(alt)
                if sub is None:
                    problems.append(f"`{' '.join(['mstcrypt', *names, alt])}`: no such command")
                else:
                    expanded.append(([*names, alt], sub))
        if problems:
            return problems
        paths = expanded
        rest = rest[1:]
    for names, cmd in paths:
        label = " ".join(["mstcrypt", *names])
        options = _options(cmd)
        positional = 0
        i = 0
        while i < len(rest):
            word = _strip(rest[i])
            i += 1
            if not word or word in ELLIPSIS:
                continue
            if word.startswith("-") and word != "-":
                name = word.split("=", 1)[0]
                opt = options.get(name)
                if opt is None and name != "--help":
                    problems.append(f"`{label}` has no option {name}")
                elif opt is not None and not opt.is_flag and "=" not in word:
                    i += 1  # its value
                continue
            positional += 1
        arguments = [p for p in cmd.params if p.param_type_name == "argument"]
        unlimited = any(a.nargs == -1 for a in arguments)
        if is_group(cmd) and positional:
            problems.append(f"`{label}` needs a subcommand, got {rest}")
        elif not unlimited and positional > sum(a.nargs for a in arguments):
            problems.append(
                f"`{label}` takes {sum(a.nargs for a in arguments)} argument(s), "
                f"the line gives {positional}: {rest}"
            )
    return problems


def check_block(block: Block) -> list[str]:
    problems = []
    for n, command in logical_lines(block):
        for words in invocations(command):
            problems += [f"{block.path.name}:{n}: {p}" for p in check_invocation(words)]
    return problems


def inline_commands(path: Path) -> Iterator[tuple[int, str]]:
    """`mstcrypt ...` in inline code (possibly wrapped over two lines)."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)
    for m in re.finditer(r"`(mstcrypt [^`]+)`", text):
        line = text.count("\n", 0, m.start()) + 1
        yield line, " ".join(m.group(1).replace("\\|", "|").split())


# ------------------------------------------------------------------ running ------------
PRELUDE = r"""
set -euo pipefail
__mst_bg=""
__mst_line=0
__mst_cleanup() {
    for p in $__mst_bg; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $__mst_bg; do wait "$p" 2>/dev/null || true; done
}
trap __mst_cleanup EXIT
trap 'echo "README line $__mst_line failed (exit $?): $BASH_COMMAND" >&2' ERR
__mst_wait_port() {  # port pid: until the port accepts a TCP connection
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        if ! kill -0 "$2" 2>/dev/null; then
            echo "README line $__mst_line: the background server exited" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "README line $__mst_line: port $1 did not open within 60 s" >&2
    return 1
}
"""


def session_script(blocks: list[Block]) -> str:
    out = [PRELUDE]
    for block in blocks:
        for n, command in logical_lines(block):
            words = shlex.split(command, comments=True)
            out.append(f"__mst_line={n}")
            out.append(command)
            if words and words[-1] == "&":
                port = next((words[k + 1] for k, w in enumerate(words[:-1]) if w == "--port"), None)
                assert port and port.isdigit(), f"{block.where}: a background line needs --port"
                out.append(f'__mst_bg="$__mst_bg $!"; __mst_wait_port {port} $!')
    return "\n".join(out) + "\n"


def run_session(blocks: list[Block], cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", COLUMNS="120", NO_COLOR="1")
    p = subprocess.run(
        ["bash", "-c", session_script(blocks)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert p.returncode == 0, (
        f"README commands failed (exit {p.returncode}):\n{p.stderr[-4000:]}\n{p.stdout[-2000:]}"
    )
    return p.stdout


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        # as servers bind (asyncio, uvicorn): connections of an earlier run left in
        # TIME_WAIT do not make the port busy, a listener does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def blocks_of(approach: str) -> list[Block]:
    return [
        b
        for b in shell_blocks(README)
        if BLOCKS.get(b.section, [])[b.index : b.index + 1] == [approach]
    ]


# ------------------------------------------------------------------ tests --------------
def test_every_readme_block_is_classified() -> None:
    found: dict[str, int] = {}
    for b in shell_blocks(README):
        found[b.section] = found.get(b.section, 0) + 1
    assert {s: len(a) for s, a in BLOCKS.items()} == found, (
        "README.md's sh blocks changed: classify each in BLOCKS (and the docstring)"
    )


@pytest.mark.parametrize("block", shell_blocks(README), ids=lambda b: f"line{b.line}")
def test_readme_commands_exist(block: Block) -> None:
    """Every block, run or not: subcommands and options exist as written."""
    assert not check_block(block), "\n".join(check_block(block))


def test_readme_inline_commands_exist() -> None:
    problems = []
    for n, command in inline_commands(README):
        problems += [f"README.md:{n}: {p}" for p in check_invocation(shlex.split(command)[1:])]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_commands_exist(doc: Path) -> None:
    problems = [p for b in shell_blocks(doc) for p in check_block(b)]
    for n, command in inline_commands(doc):
        problems += [f"{doc.name}:{n}: {p}" for p in check_invocation(shlex.split(command)[1:])]
    assert not problems, "\n".join(problems)


def test_readme_platform_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """ "Running the platform", "File encryption", "Electronic seals" and "Trusted
    boot", in one bash session."""
    blocks = blocks_of("session")
    assert [b.section for b in blocks] == [
        "Running the platform",
        "File encryption (guide 7.6)",
        "Electronic seals (guide 7.4)",
        "Encrypted mail (guide 7.2)",
        "Trusted boot (guide 6.1)",
        "Trusted boot (guide 6.1)",
    ]
    for port in (PORT, SMTP_PORT):
        if port_busy(port):
            pytest.skip(f"port {port}, which the README's commands use, is busy on this machine")
    out = run_session(blocks, tmp_path)
    # what the commands were for
    assert "audit chain OK" in out
    assert (tmp_path / "alice.session").read_text().startswith("MST1.")
    assert (tmp_path / "report.out").read_bytes() == (tmp_path / "report.txt").read_bytes()
    # the seal demo: a stamped PDF that verifies, its rendered page, a detected edit
    stamped = (tmp_path / "stamped.pdf").read_bytes()
    assert stamped.startswith((tmp_path / "contract.pdf").read_bytes())
    assert b"/GBT38540.SES_Signature" in stamped and "stamped.pdf: VALID" in out
    assert "tampered.pdf: NOT VALID" in out
    assert (tmp_path / "stamped.png").stat().st_size > 1000
    assert (tmp_path / "tampered.pdf").read_bytes() != stamped
    # mail: both recipients opened ann's message and its attachment; no plaintext stored
    for u in ("bob", "carol"):
        saved = list((tmp_path / f"received-{u}").rglob("q3.txt"))
        assert saved and saved[0].read_bytes() == (tmp_path / "q3.txt").read_bytes(), u
    assert not any(
        b"confidential" in f.read_bytes() for f in (tmp_path / "mail").rglob("*") if f.is_file()
    )
    # trusted boot: the chain, a block and a rollback refused, then attestation
    assert "block 200 refused" in out and "rollback refused" in out
    assert "verdict: trusted" in out and "verdict: modified" in out
    assert "kernel booted unapproved" in out
    assert not port_busy(PORT), "the README's server was not stopped"


def test_readme_openssl_interop_runs_as_written(tmp_path: Path, openssl: object) -> None:
    (block,) = blocks_of("run")
    assert any("openssl" in line for line in block.lines)
    run_session([block], tmp_path, timeout=120)
    assert (tmp_path / "sig.der").stat().st_size > 0

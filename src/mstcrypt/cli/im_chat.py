"""``mstcrypt im chat``: a prompt_toolkit prompt in front of
:class:`mstcrypt.apps.im.chat.ChatController`.

One thread owns the :class:`~mstcrypt.apps.im.terminal.ImClient`: it holds the
WebSocket (live messages, presence) and runs, between frames, the calls the prompt
asks for (sending, history, members). The prompt stays usable while messages arrive;
lines printed by the listener appear above it. A dropped connection is retried with
back-off; messages sent meanwhile go over HTTP and what arrived is fetched on
reconnecting (from the device's acknowledgement).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from mstcrypt.apps.im.chat import ChatController
from mstcrypt.apps.im.terminal import ImClient

__all__ = ["run_chat"]


def run_chat(im: ImClient, group: str | None, *, prompt_input: Any = None) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    jobs: queue.Queue[Callable[[], None]] = queue.Queue()
    stop = threading.Event()
    worker: threading.Thread | None = None

    def emit(line: str) -> None:
        print(line, flush=True)

    def run(fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is worker:
            return fn()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def job() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the prompt thread
                fut.set_exception(exc)

        jobs.put(job)
        return fut.result()

    ctrl = ChatController(im, emit, run=run)
    ready = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        # the scrollback first, then what the WebSocket brings (so nothing shows twice)
        try:
            emit("mstcrypt im chat: /help lists the commands, /quit leaves")
            ctrl.start(group)
        except BaseException as exc:  # re-raised on the prompt thread
            failure.append(exc)
            return
        finally:
            ready.set()
        delay = 0.5
        while not stop.is_set():
            started = time.monotonic()
            try:
                im.listen(
                    timeout=float("inf"),
                    on_message=ctrl.incoming,
                    on_frame=ctrl.frame,
                    stop=stop.is_set,
                    outbox=jobs,
                )
            except Exception as exc:  # the IMS is down or refused the connection
                emit(f"!! not connected to the IMS ({type(exc).__name__}); retrying")
            if stop.is_set():
                break
            if time.monotonic() - started > 10:
                delay = 0.5
            deadline = time.monotonic() + delay
            delay = min(delay * 2, 10.0)
            while time.monotonic() < deadline and not stop.is_set():
                with contextlib.suppress(queue.Empty):
                    jobs.get(timeout=0.1)()
        while True:  # nothing left waiting on the prompt side
            try:
                jobs.get_nowait()()
            except queue.Empty:
                break

    worker = threading.Thread(target=work, name="im-chat", daemon=True)
    worker.start()
    session: PromptSession[str] = PromptSession(input=prompt_input)
    try:
        with patch_stdout():
            ready.wait()
            if failure:
                raise failure[0]
            while True:
                try:
                    line = session.prompt(f"{ctrl.group or '-'}> ")
                except (EOFError, KeyboardInterrupt):
                    break
                if not ctrl.handle(line):
                    break
    finally:
        stop.set()
        worker.join(15)

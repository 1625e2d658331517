"""The operations console: operator sessions from certificate login
(:mod:`.sessions`), what the pages show (:mod:`.overview`), its templates and assets.

The routes are in :mod:`mstcrypt.server.routers.console`; the CLI step that logs in with
the operator's soft token is ``mstcrypt console open`` (:mod:`mstcrypt.cli.console_cmd`).
See docs/console.md.
"""

from mstcrypt.apps.console.errors import ConsoleAuthError, ConsoleLoginRequired, CsrfError
from mstcrypt.apps.console.sessions import ConsoleAuth, ConsolePolicy, ConsoleSession

__all__ = [
    "ConsoleAuth",
    "ConsoleAuthError",
    "ConsoleLoginRequired",
    "ConsolePolicy",
    "ConsoleSession",
    "CsrfError",
]

"""Backup and restore of the whole store.

Key blobs stay wrapped by the SS-CC; the export is further encrypted under a key derived
from the passphrase (PBKDF2-HMAC-SM3, 200,000 iterations, SM4-GCM). A restore goes into
an empty store in one transaction.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

from mstcrypt.crypto import sm4
from mstcrypt.crypto.sm3 import kdf, pbkdf2_hmac_sm3
from mstcrypt.errors import DecryptionError, KeyStoreError, PolicyError
from mstcrypt.kmc.context import KmcContext, aware
from mstcrypt.kmc.models import Base

__all__ = ["BackupService"]

MAGIC = b"MSTKMCB1"
ITERATIONS = 200_000


def _enc_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"$b": base64.b64encode(v).decode()}
    if isinstance(v, datetime):
        return {"$t": aware(v).isoformat()}
    return v


def _dec_value(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"$b"}:
        return base64.b64decode(v["$b"])
    if isinstance(v, dict) and set(v) == {"$t"}:
        return datetime.fromisoformat(v["$t"])
    return v


def _key(passphrase: str, salt: bytes) -> bytes:
    return kdf(pbkdf2_hmac_sm3(passphrase.encode(), salt, ITERATIONS, 32), 16)


class BackupService:
    def __init__(self, ctx: KmcContext, on_restore: Callable[[], None]) -> None:
        self.ctx = ctx
        self._on_restore = on_restore

    def backup(self, passphrase: str, *, actor: str) -> bytes:
        if len(passphrase) < 12:
            raise PolicyError("backup passphrase must be at least 12 characters")
        with self.ctx.unit(actor) as u:
            u.audit("kmc.backup", "kmc")
            tables: dict[str, list[dict[str, Any]]] = {}
            for table in Base.metadata.sorted_tables:
                rows = u.s.execute(table.select()).mappings().all()
                tables[table.name] = [{k: _enc_value(v) for k, v in r.items()} for r in rows]
        plain = json.dumps(
            {"format": "mstcrypt-kmc-backup", "version": 1, "tables": tables},
            separators=(",", ":"),
        ).encode()
        salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
        header = MAGIC + salt + nonce
        return header + sm4.gcm_encrypt(_key(passphrase, salt), nonce, plain, header)

    def restore(self, blob: bytes, passphrase: str, *, actor: str) -> int:
        """Restore into an empty store (one transaction). Returns the rows restored."""
        if len(blob) < 8 + 16 + 12 + 16 or blob[:8] != MAGIC:
            raise KeyStoreError("not an mstcrypt KMC backup")
        header, body = blob[:36], blob[36:]
        try:
            data = json.loads(
                sm4.gcm_decrypt(_key(passphrase, header[8:24]), header[24:36], body, header)
            )
        except DecryptionError:
            raise KeyStoreError("wrong backup passphrase or damaged backup") from None
        if data.get("format") != "mstcrypt-kmc-backup":
            raise KeyStoreError("not an mstcrypt KMC backup")
        n = 0
        with self.ctx.unit(actor) as u:
            for table in Base.metadata.sorted_tables:
                if table.name != "audit_head" and u.s.execute(table.select().limit(1)).first():
                    raise PolicyError("restore needs an empty store")
            for table in Base.metadata.sorted_tables:
                rows = [
                    {k: _dec_value(v) for k, v in r.items()}
                    for r in data["tables"].get(table.name, [])
                ]
                if table.name == "audit_head":
                    u.s.execute(table.delete())
                if rows:
                    u.s.execute(table.insert(), rows)
                    n += len(rows)
            u.s.flush()
            u.audit("kmc.restore", "kmc", rows=n)
        self._on_restore()
        return n

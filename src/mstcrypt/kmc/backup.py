"""Backup and restore of the whole store, streamed.

Key blobs stay wrapped by the SS-CC; the export is further encrypted under a key derived
from the passphrase (PBKDF2-HMAC-SM3, 200,000 iterations, SM4-GCM).

Format 2 (``MSTKMCB2``, written now), in bounded memory at both ends::

    header = "MSTKMCB2" ‖ salt (16) ‖ nonce prefix (7)
    chunk_i = SM4-GCM(key, prefix ‖ i (4 bytes, big-endian) ‖ last (1 byte: 1 or 0),
                      plaintext_i, AAD = header)

Every plaintext chunk but the last holds exactly 64 KiB; the last (flagged 1) holds
0..64 KiB, so a truncated, reordered or spliced stream fails authentication. The
plaintext is JSON lines: ``{"format": "mstcrypt-kmc-backup", "version": 2}``, then per
table ``{"table": name, "columns": [...]}``, one JSON array per row (bytes as base64,
timestamps as ISO 8601, by column type), ``{"end": name, "rows": n}``, and finally
``{"done": true, "rows": N}``. The backup reads one snapshot of the database table by
table, in batches, without a write lock.

Format 1 (``MSTKMCB1``: one SM4-GCM message over one JSON document, bytes as
``{"$b": base64}`` and timestamps as ``{"$t": iso}``) is still restored; as a single
GCM message it can only be authenticated whole, so it is read into memory.

A restore goes into an empty store in one transaction: a damaged backup leaves it empty.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import IO, Any

from sqlalchemy import DateTime, LargeBinary, Table
from sqlalchemy.exc import SQLAlchemyError

from mstcrypt.crypto import sm4
from mstcrypt.crypto.sm3 import kdf, pbkdf2_hmac_sm3
from mstcrypt.errors import DecryptionError, KeyStoreError, PolicyError
from mstcrypt.kmc.context import KmcContext, aware
from mstcrypt.kmc.models import Base

__all__ = ["CHUNK", "BackupService"]

MAGIC = b"MSTKMCB1"
MAGIC2 = b"MSTKMCB2"
ITERATIONS = 200_000
#: plaintext bytes per encrypted chunk of a format-2 backup
CHUNK = 64 * 1024
_TAG = 16
_HEADER2 = len(MAGIC2) + 16 + 7
#: rows read from, or inserted into, the database per batch
ROWS_PER_BATCH = 1000
_FORMAT = "mstcrypt-kmc-backup"


def _key(passphrase: str, salt: bytes) -> bytes:
    return kdf(pbkdf2_hmac_sm3(passphrase.encode(), salt, ITERATIONS, 32), 16)


def _damaged(what: str = "damaged backup") -> KeyStoreError:
    return KeyStoreError(f"wrong backup passphrase or {what}")


# -- format 1 (restore only) ---------------------------------------------------------------
def _dec_value_v1(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"$b"}:
        return base64.b64decode(v["$b"])
    if isinstance(v, dict) and set(v) == {"$t"}:
        return datetime.fromisoformat(v["$t"])
    return v


def _v1_tables(blob: bytes, passphrase: str) -> Iterator[tuple[str, list[str], Iterator[list]]]:
    header, body = blob[:36], blob[36:]
    if len(blob) < 36 + _TAG:
        raise KeyStoreError("not an mstcrypt KMC backup")
    try:
        data = json.loads(
            sm4.gcm_decrypt(_key(passphrase, header[8:24]), header[24:36], body, header)
        )
    except DecryptionError:
        raise _damaged() from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise KeyStoreError("not an mstcrypt KMC backup")
    for name, rows in (data.get("tables") or {}).items():
        columns = sorted({k for r in rows for k in r})
        yield (
            name,
            columns,
            iter([[_dec_value_v1(r.get(c)) for c in columns] for r in rows]),
        )


# -- format 2 --------------------------------------------------------------------------------
class _ChunkWriter:
    """Plaintext in, encrypted chunks out (STREAM construction over SM4-GCM)."""

    def __init__(self, key: bytes, header: bytes, prefix: bytes, chunk: int = CHUNK) -> None:
        self.key, self.header, self.prefix, self.chunk = key, header, prefix, chunk
        self.buf = bytearray()
        self.counter = 0

    def _seal(self, piece: bytes, last: bool) -> bytes:
        if self.counter >= 2**32:
            raise PolicyError("backup too large for one stream")
        nonce = self.prefix + self.counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        self.counter += 1
        return sm4.gcm_encrypt(self.key, nonce, piece, self.header)

    def write(self, data: bytes) -> Iterator[bytes]:
        self.buf += data
        while len(self.buf) > self.chunk:  # keep at least one byte for the last chunk
            piece = bytes(self.buf[: self.chunk])
            del self.buf[: self.chunk]
            yield self._seal(piece, False)

    def close(self) -> bytes:
        piece, self.buf = bytes(self.buf), bytearray()
        return self._seal(piece, True)


def _read_exact(src: IO[bytes], n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        part = src.read(n - len(out))
        if not part:
            break
        out += part
    return bytes(out)


def _chunks(src: IO[bytes], key: bytes, header: bytes, prefix: bytes) -> Iterator[bytes]:
    """Authenticated plaintext chunks of a format-2 stream, in order; the last one must
    be flagged last (truncation, reordering and trailing data fail)."""
    size = CHUNK + _TAG
    counter = 0
    cur = _read_exact(src, size)
    while True:
        nxt = _read_exact(src, size) if len(cur) == size else b""
        last = not nxt
        if len(cur) < _TAG:
            raise _damaged("truncated backup")
        nonce = prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        try:
            piece = sm4.gcm_decrypt(key, nonce, cur, header)
        except DecryptionError:
            raise _damaged("damaged or truncated backup" if counter else "damaged backup") from None
        counter += 1
        yield piece
        if last:
            return
        cur = nxt


def _lines(chunks: Iterator[bytes]) -> Iterator[Any]:
    buf = b""
    for piece in chunks:
        buf += piece
        *complete, buf = buf.split(b"\n")
        for line in complete:
            yield _json(line)
    if buf:
        yield _json(buf)


def _json(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise KeyStoreError("malformed backup content") from None


def _codecs(table: Table, columns: list[str]) -> list[Callable[[Any], Any]]:
    out: list[Callable[[Any], Any]] = []
    for c in columns:
        if c not in table.c:
            raise KeyStoreError(f"backup table {table.name} has an unknown column {c!r}")
        t = table.c[c].type
        if isinstance(t, LargeBinary):
            out.append(_b64)
        elif isinstance(t, DateTime):
            out.append(_datetime)
        else:
            out.append(_same)
    return out


def _same(v: Any) -> Any:
    return v


def _b64(v: Any) -> Any:
    if v is None:
        return None
    if not isinstance(v, str):
        raise KeyStoreError("malformed backup content")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise KeyStoreError("malformed backup content") from None


def _datetime(v: Any) -> Any:
    if v is None:
        return None
    if not isinstance(v, str):
        raise KeyStoreError("malformed backup content")
    try:
        return datetime.fromisoformat(v)
    except ValueError:
        raise KeyStoreError("malformed backup content") from None


def _enc(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, datetime):
        return aware(v).isoformat()
    return v


def _v2_tables(
    src: IO[bytes], header: bytes, passphrase: str
) -> Iterator[tuple[str, list[str], Iterator[list]]]:
    salt, prefix = header[8:24], header[24:31]
    lines = _lines(_chunks(src, _key(passphrase, salt), header, prefix))
    first = next(lines, None)
    if not isinstance(first, dict) or first.get("format") != _FORMAT or first.get("version") != 2:
        raise KeyStoreError("not an mstcrypt KMC backup")
    total = 0
    for item in lines:
        if isinstance(item, dict) and item.get("done") is True:
            if item.get("rows") != total or next(lines, None) is not None:
                raise KeyStoreError("malformed backup content")
            return
        if not isinstance(item, dict) or not isinstance(item.get("table"), str):
            raise KeyStoreError("malformed backup content")
        columns = item.get("columns")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise KeyStoreError("malformed backup content")
        table = Base.metadata.tables.get(item["table"])
        if table is None:
            raise KeyStoreError(f"backup has an unknown table {item['table']!r}")
        counted = [0]
        yield item["table"], columns, _rows(lines, item["table"], _codecs(table, columns), counted)
        total += counted[0]
    raise _damaged("truncated backup")


def _rows(
    lines: Iterator[Any], name: str, codecs: list[Callable[[Any], Any]], counted: list[int]
) -> Iterator[list[Any]]:
    """The decoded rows of table ``name`` up to its end marker (counted in ``counted``)."""
    for row in lines:
        if isinstance(row, list):
            if len(row) != len(codecs):
                raise KeyStoreError("malformed backup content")
            counted[0] += 1
            yield [f(v) for f, v in zip(codecs, row, strict=True)]
            continue
        if isinstance(row, dict) and row.get("end") == name:
            if row.get("rows") != counted[0]:
                raise KeyStoreError(f"backup table {name}: row count mismatch")
            return
        raise KeyStoreError("malformed backup content")
    raise _damaged("truncated backup")


class BackupService:
    def __init__(self, ctx: KmcContext, on_restore: Callable[[], None]) -> None:
        self.ctx = ctx
        self._on_restore = on_restore

    # -- backup ------------------------------------------------------------------------
    def backup_stream(self, passphrase: str, *, actor: str) -> Iterator[bytes]:
        """The encrypted backup (format 2), piece by piece. The passphrase is checked and
        the ``kmc.backup`` audit record committed now; the tables are then read, table by
        table in batches of rows, from one read-only snapshot (no write lock) as the
        pieces are consumed. Closing the iterator early ends the snapshot."""
        if len(passphrase) < 12:
            raise PolicyError("backup passphrase must be at least 12 characters")
        with self.ctx.unit(actor) as u:
            u.audit("kmc.backup", "kmc", format=2)
        salt, prefix = secrets.token_bytes(16), secrets.token_bytes(7)
        header = MAGIC2 + salt + prefix
        writer = _ChunkWriter(_key(passphrase, salt), header, prefix)
        return self._pieces(header, writer)

    def _pieces(self, header: bytes, writer: _ChunkWriter) -> Iterator[bytes]:
        yield header
        dump = json.dumps
        yield from writer.write(dump({"format": _FORMAT, "version": 2}).encode() + b"\n")
        total = 0
        with self.ctx.db.snapshot() as conn:
            for table in Base.metadata.sorted_tables:
                columns = [c.name for c in table.columns]
                yield from writer.write(
                    dump({"table": table.name, "columns": columns}).encode() + b"\n"
                )
                n = 0
                stmt = table.select().order_by(*table.primary_key.columns)
                result = conn.execute(stmt.execution_options(yield_per=ROWS_PER_BATCH))
                for batch in result.partitions():
                    lines = [dump([_enc(v) for v in row], separators=(",", ":")) for row in batch]
                    n += len(lines)
                    yield from writer.write(("\n".join(lines) + "\n").encode())
                total += n
                yield from writer.write(dump({"end": table.name, "rows": n}).encode() + b"\n")
        yield from writer.write(dump({"done": True, "rows": total}).encode() + b"\n")
        yield writer.close()

    def backup_to(self, out: IO[bytes], passphrase: str, *, actor: str) -> int:
        """Write the encrypted backup to ``out``; returns the bytes written."""
        n = 0
        for piece in self.backup_stream(passphrase, actor=actor):
            out.write(piece)
            n += len(piece)
        return n

    def backup(self, passphrase: str, *, actor: str) -> bytes:
        """The whole encrypted backup as bytes (small stores and tests; prefer
        :meth:`backup_to` or :meth:`backup_stream`)."""
        buf = io.BytesIO()
        self.backup_to(buf, passphrase, actor=actor)
        return buf.getvalue()

    # -- restore -----------------------------------------------------------------------
    def restore(self, blob: bytes, passphrase: str, *, actor: str) -> int:
        """Restore a backup held in memory into an empty store; see :meth:`restore_from`."""
        return self.restore_from(io.BytesIO(blob), passphrase, actor=actor)

    def restore_from(self, src: IO[bytes], passphrase: str, *, actor: str) -> int:
        """Restore into an empty store, in one transaction, reading ``src`` as a stream
        (format 2; format 1 is read whole). Returns the rows restored."""
        magic = _read_exact(src, len(MAGIC2))
        if magic == MAGIC2:
            header = magic + _read_exact(src, _HEADER2 - len(MAGIC2))
            if len(header) != _HEADER2:
                raise KeyStoreError("not an mstcrypt KMC backup")
            tables = _v2_tables(src, header, passphrase)
        elif magic == MAGIC:
            tables = _v1_tables(magic + src.read(), passphrase)
        else:
            raise KeyStoreError("not an mstcrypt KMC backup")
        known = {t.name: t for t in Base.metadata.sorted_tables}
        n = 0
        try:
            with self.ctx.unit(actor) as u:
                for table in Base.metadata.sorted_tables:
                    if table.name != "audit_head" and u.s.execute(table.select().limit(1)).first():
                        raise PolicyError("restore needs an empty store")
                seen: set[str] = set()
                for name, columns, rows in tables:
                    table = known.get(name)
                    if table is None or name in seen:
                        raise KeyStoreError(f"backup has an unknown or repeated table {name!r}")
                    seen.add(name)
                    if any(c not in table.c for c in columns):
                        raise KeyStoreError(f"backup table {name} has an unknown column")
                    if name == "audit_head":
                        u.s.execute(table.delete())
                    batch: list[dict[str, Any]] = []
                    for row in rows:
                        batch.append(dict(zip(columns, row, strict=True)))
                        if len(batch) >= ROWS_PER_BATCH:
                            u.s.execute(table.insert(), batch)
                            n += len(batch)
                            batch = []
                    if batch:
                        u.s.execute(table.insert(), batch)
                        n += len(batch)
                u.s.flush()
                u.audit("kmc.restore", "kmc", rows=n)
        except SQLAlchemyError as exc:
            raise KeyStoreError(
                f"the backup does not fit this store's schema ({type(exc).__name__})"
            ) from None
        self._on_restore()
        return n

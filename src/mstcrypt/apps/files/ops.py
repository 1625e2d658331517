"""Header-level operations (inspect, rewrap, escrow recovery) and whole-file operations
that replace files atomically (temporary file, fsync, rename, directory fsync)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mstcrypt.apps.files.errors import FileFormatError
from mstcrypt.apps.files.format import (
    MAGIC,
    FileKeys,
    Header,
    PayloadGeometry,
    Stanza,
    StanzaKind,
    check_wrapped,
    parse_header,
    read_header,
)
from mstcrypt.apps.files.recipients import (
    Identity,
    Recipient,
    RecipientLike,
    identities_of,
    recipient,
)
from mstcrypt.apps.files.stream import (
    DEFAULT_CHUNK_SIZE,
    Progress,
    _reader,
    decrypt,
    encrypt,
    open_header,
)
from mstcrypt.errors import PolicyError
from mstcrypt.module.base import KeyHandle

__all__ = [
    "FileInfo",
    "accept_reissued_stanza",
    "atomic_output",
    "decrypt_file",
    "decrypt_file_in_place",
    "encrypt_file",
    "encrypt_file_in_place",
    "inspect",
    "inspect_file",
    "recover_header",
    "reissue_stanza_for",
    "replace_header",
    "rewrap",
    "rewrap_file",
    "rewrap_header",
]

PathLike = str | os.PathLike[str]


# --- inspect ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileInfo:
    """What can be learned from a file without a key (nothing here is authenticated)."""

    header: Header
    payload_size: int | None
    geometry: PayloadGeometry | None

    def describe(self) -> dict[str, object]:
        out = self.header.describe()
        out["authenticated"] = False
        if self.geometry is not None:
            out["chunks"] = self.geometry.chunks
            out["plaintext_size"] = self.geometry.plaintext_size
        return out


def inspect(data: bytes | BinaryIO) -> Header:
    """Parse and check a header (§5 steps 1–13) from its bytes (a file prefix is fine)
    or from a binary stream positioned at the start. Needs no key; the header is *not*
    authenticated (that needs the FEK)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return parse_header(bytes(data))
    return read_header(_reader(data))


def inspect_file(path: PathLike) -> FileInfo:
    """:func:`inspect` plus the payload geometry from the file's length (the structural
    checks of steps 17–19; chunk tags are not checked)."""
    with open(path, "rb") as f:
        header = inspect(f)
        size = f.seek(0, os.SEEK_END) - header.size
    return FileInfo(header, size, PayloadGeometry.of(header.chunk_size, size))


# --- atomic replacement ------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: PathLike, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """Write ``path`` all-or-nothing: yields a temporary file in the same directory
    (``.NAME.<random>.mstcrypt-tmp``, mode 0600); on normal exit it is flushed, fsynced,
    given ``mode`` (if set), renamed over ``path`` and the directory fsynced. On an
    exception the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.mstcrypt-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f  # type: ignore[misc]
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o7777


# --- whole files ------------------------------------------------------------------------------


def encrypt_file(
    src: PathLike,
    dst: PathLike,
    recipients: Sequence[RecipientLike],
    *,
    escrow: RecipientLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> Header:
    """Encrypt the file ``src`` into ``dst`` (written atomically, mode 0600)."""
    with open(src, "rb") as fin, atomic_output(dst) as fout:
        return encrypt(
            fin, fout, recipients, escrow=escrow, chunk_size=chunk_size, progress=progress
        )


def encrypt_file_in_place(
    path: PathLike,
    recipients: Sequence[RecipientLike],
    *,
    escrow: RecipientLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
    allow_encrypted: bool = False,
) -> Header:
    """Replace an app's data file by its encryption, never leaving a half-written file:
    the ciphertext goes to a temporary file in the same directory that is fsynced and
    renamed over the original (whose permission bits it keeps). Refuses a file that is
    already encrypted unless ``allow_encrypted``."""
    path = Path(path)
    with open(path, "rb") as fin:
        if not allow_encrypted and fin.read(len(MAGIC)) == MAGIC:
            raise PolicyError(f"{path.name} is already an encrypted file")
        fin.seek(0)
        with atomic_output(path, mode=_mode_of(path)) as fout:
            return encrypt(
                fin, fout, recipients, escrow=escrow, chunk_size=chunk_size, progress=progress
            )


def decrypt_file(
    src: PathLike,
    dst: PathLike,
    module: object,
    handle: KeyHandle | None = None,
    *,
    progress: Progress | None = None,
) -> int:
    """Decrypt ``src`` into ``dst`` all-or-nothing: ``dst`` appears (mode 0600) only
    when every chunk authenticated. Returns the plaintext length."""
    with open(src, "rb") as fin, atomic_output(dst) as fout:
        return decrypt(fin, fout, module, handle, progress=progress)


def decrypt_file_in_place(
    path: PathLike,
    module: object,
    handle: KeyHandle | None = None,
    *,
    progress: Progress | None = None,
) -> int:
    """Replace an encrypted file by its plaintext, all-or-nothing."""
    path = Path(path)
    with open(path, "rb") as fin, atomic_output(path, mode=_mode_of(path)) as fout:
        return decrypt(fin, fout, module, handle, progress=progress)


# --- rewrap ---------------------------------------------------------------------------------


def _key_ids(values: Iterable[bytes | str | RecipientLike]) -> set[bytes]:
    out: set[bytes] = set()
    for v in values:
        if isinstance(v, bytes):
            kid = v
        elif isinstance(v, str):
            try:
                kid = bytes.fromhex(v)
            except ValueError:
                raise PolicyError(f"key id {v!r} is not hexadecimal") from None
        else:
            kid = recipient(v).key_id
        if len(kid) != 32:
            raise PolicyError("a key id is 32 bytes (64 hex characters)")
        out.add(kid)
    return out


def rewrap_header(
    header: Header | bytes,
    identity: object,
    handle: KeyHandle | None = None,
    *,
    add: Sequence[RecipientLike] = (),
    remove: Iterable[bytes | str | RecipientLike] = (),
    escrow: RecipientLike | None = None,
    remove_escrow: bool = False,
) -> Header:
    """A new header for the same payload: the FEK is recovered with ``identity`` (a
    module and handle, or an Identity), the old MAC is verified, recipients in
    ``remove`` (key ids, hex key ids, certificates, keys) are dropped, ``add`` are
    appended, the escrow stanza is replaced by ``escrow`` (or dropped with
    ``remove_escrow``), and a new MAC is computed."""
    if not isinstance(header, Header):
        header = parse_header(header)
    keys = open_header(header, identities_of(identity, handle))
    drop = _key_ids(remove)
    unknown = drop - {s.key_id for s in header.stanzas}
    if unknown:
        raise PolicyError(
            "not a recipient of this file: " + ", ".join(k.hex()[:16] + "…" for k in unknown)
        )
    stanzas = [
        s
        for s in header.stanzas
        if s.key_id not in drop
        and not (s.kind is StanzaKind.ESCROW and (escrow is not None or remove_escrow))
    ]
    present = {s.key_id for s in stanzas}
    new = [recipient(r) for r in add]
    if escrow is not None:
        new.append(recipient(escrow, escrow=True))
    for r in new:
        if r.key_id in present:
            raise PolicyError(f"key {r.key_id[:8].hex()}… is already a recipient of this file")
        present.add(r.key_id)
        stanzas.append(r.wrap(keys.fek))
    if not stanzas:
        raise PolicyError("a file must keep at least one recipient")
    return header.with_stanzas(stanzas, keys)


def _copy_payload(src: BinaryIO, dst: BinaryIO, offset: int) -> None:
    src.seek(offset)
    shutil.copyfileobj(src, dst, 1 << 20)


def rewrap(
    src: BinaryIO,
    dst: BinaryIO,
    identity: object,
    handle: KeyHandle | None = None,
    **changes: Any,
) -> Header:
    """Copy ``src`` to ``dst`` with a header from :func:`rewrap_header` (same keyword
    arguments); the payload bytes are copied unchanged, never decrypted."""
    header = read_header(_reader(src))
    new = rewrap_header(header, identity, handle, **changes)
    dst.write(new.raw)
    shutil.copyfileobj(src, dst, 1 << 20)
    return new


def _rewrite_header(path: Path, out: Path | None, build: Callable[[Header], Header]) -> Header:
    target = out or path
    with open(path, "rb") as fin:
        header = read_header(_reader(fin))
        new = build(header)
        mode = _mode_of(path) if out is None else None
        with atomic_output(target, mode=mode) as fout:
            fout.write(new.raw)
            _copy_payload(fin, fout, header.size)
    return new


def rewrap_file(
    path: PathLike,
    identity: object,
    handle: KeyHandle | None = None,
    *,
    out: PathLike | None = None,
    **changes: Any,
) -> Header:
    """:func:`rewrap` a file in place (atomically) or into ``out``."""
    return _rewrite_header(
        Path(path),
        Path(out) if out is not None else None,
        lambda h: rewrap_header(h, identity, handle, **changes),
    )


def replace_header(path: PathLike, new_header: Header | bytes) -> Header:
    """Install a header produced elsewhere (e.g. by the KMC's :func:`recover_header`)
    atomically. It must describe the same payload (suite, chunk size and salt); its MAC
    is checked by the next reader that opens it."""
    if not isinstance(new_header, Header):
        new_header = parse_header(new_header)
        if new_header.size != len(new_header.raw):  # pragma: no cover - parse guarantees
            raise PolicyError("header has trailing bytes")

    def build(old: Header) -> Header:
        if (old.suite, old.chunk_log2, old.salt) != (
            new_header.suite,
            new_header.chunk_log2,
            new_header.salt,
        ):
            raise PolicyError("the new header is for another file (suite, chunk size or salt)")
        return new_header

    return _rewrite_header(Path(path), None, build)


# --- escrow and recovery (KMC) ------------------------------------------------------------------


def reissue_stanza_for(
    escrowed: Header | bytes,
    recovery: Identity | object,
    new_recipient: RecipientLike,
    *,
    handle: KeyHandle | None = None,
) -> Stanza:
    """The KMC's recovery primitive: unwrap the FEK from an escrow stanza with the KMC
    file-recovery key (``recovery``: an Identity, e.g. ``KeyIdentity(key)`` inside the
    SS-CC, or a module and ``handle``) and return a recipient stanza wrapping it to
    ``new_recipient``. ``escrowed`` is the whole header (then its MAC is verified under
    the recovered FEK before anything is released) or the bare escrow ciphertext (DER
    SM2Cipher from the escrow stanza, as in ``POST /admin/file-recovery``)."""
    idents = identities_of(recovery, handle)
    target = recipient(new_recipient)
    if isinstance(escrowed, Header) or (isinstance(escrowed, bytes) and escrowed.startswith(MAGIC)):
        header = escrowed if isinstance(escrowed, Header) else parse_header(escrowed)
        escrow = header.escrow
        if escrow is None or all(escrow.key_id != i.key_id for i in idents):
            raise PolicyError("the file has no escrow stanza for this recovery key")
        keys = open_header(header, [i for i in idents if i.key_id == escrow.key_id])
        fek = keys.fek
    elif isinstance(escrowed, bytes):
        check_wrapped(escrowed, "escrow stanza")
        if len(idents) != 1:
            raise PolicyError("a bare escrow ciphertext needs exactly one recovery key")
        fek = idents[0].unwrap(escrowed)
    else:
        raise PolicyError("escrowed must be a Header, header bytes or the escrow ciphertext")
    return Recipient(target.public_key, target.certificate_fingerprint).wrap(fek)


def recover_header(
    header: Header | bytes,
    recovery: Identity | object,
    new_recipient: RecipientLike,
    *,
    handle: KeyHandle | None = None,
) -> Header:
    """Recovery done at the KMC from the whole header: verify it under the FEK from the
    escrow stanza and return it with a recipient stanza for ``new_recipient`` added (the
    terminal installs it with :func:`replace_header`)."""
    if not isinstance(header, Header):
        header = parse_header(header)
    escrow = header.escrow
    if escrow is None:
        raise PolicyError("the file has no escrow stanza")
    idents = [i for i in identities_of(recovery, handle) if i.key_id == escrow.key_id]
    if not idents:
        raise PolicyError("the file's escrow stanza is not for this recovery key")
    return rewrap_header(header, idents, add=[new_recipient])


def accept_reissued_stanza(
    header: Header | bytes,
    released: bytes | Stanza,
    module: object,
    handle: KeyHandle | None = None,
) -> Header:
    """The new terminal's side of recovery: ``released`` is the FEK SM2-encrypted to this
    terminal's key (the KMC's ``file_key_ciphertext``, or a :class:`Stanza`). The module
    decrypts it, the header MAC is verified under it, and a recipient stanza for this
    terminal's key is added (new MAC). Returns the new header; install it with
    :func:`replace_header`."""
    if not isinstance(header, Header):
        header = parse_header(header)
    wrapped = released.wrapped if isinstance(released, Stanza) else released
    if not isinstance(wrapped, bytes):
        raise PolicyError("released must be the DER SM2Cipher bytes or a Stanza")
    check_wrapped(wrapped, "released file key")
    for ident in identities_of(module, handle):
        try:
            fek = ident.unwrap(wrapped)
        except FileFormatError:
            continue
        if header.stanza_for(ident.key_id) is not None:
            raise PolicyError("this key is already a recipient of the file")
        keys = FileKeys(fek, header.salt)
        header.verify_mac(keys)
        stanza = Stanza(StanzaKind.RECIPIENT, ident.key_id, wrapped)
        return header.with_stanzas([*header.stanzas, stanza], keys)
    raise PolicyError("the released file key is not encrypted to any key of this module")

"""File encryption (T/ZSA 37-2020 §7.6): an app's data files encrypted under a fresh
random file key (FEK) that is SM2-encrypted to each reader's encryption key P_M in a
header of recipient stanzas (the guide's 文件标签), authenticated by HMAC-SM3, with an
SM4-GCM STREAM payload. The format is specified in ``docs/file-format.md``.

    from mstcrypt.apps import files

    with open("report.pdf", "rb") as src, open("report.pdf.mst", "wb") as dst:
        files.encrypt(src, dst, recipients=[alice_cert, bob_cert], escrow=kmc_key)
    with open("report.pdf.mst", "rb") as src, open("report.pdf", "wb") as dst:
        files.decrypt(src, dst, token, token.key("main", "enc"))
    with open("report.pdf.mst", "rb") as src:
        page = files.open_range(src, token, offset=1 << 20, length=4096)

Decryption goes through a :class:`~mstcrypt.module.CryptoModule`, so d_M never leaves
the module. Whole-file helpers (``encrypt_file_in_place`` …) replace files atomically.
"""

from mstcrypt.apps.files.errors import (
    FileError,
    FileFormatError,
    HeaderMacError,
    NoMatchingRecipientError,
    PayloadError,
    StanzaUnwrapError,
)
from mstcrypt.apps.files.format import MAGIC, Header, Stanza, StanzaKind
from mstcrypt.apps.files.ops import (
    FileInfo,
    accept_reissued_stanza,
    atomic_output,
    decrypt_file,
    decrypt_file_in_place,
    encrypt_file,
    encrypt_file_in_place,
    inspect,
    inspect_file,
    recover_header,
    reissue_stanza_for,
    replace_header,
    rewrap,
    rewrap_file,
    rewrap_header,
)
from mstcrypt.apps.files.recipients import (
    Identity,
    KeyIdentity,
    ModuleIdentity,
    Recipient,
)
from mstcrypt.apps.files.stream import (
    DEFAULT_CHUNK_SIZE,
    EncryptedFileReader,
    decrypt,
    encrypt,
    open_range,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAGIC",
    "EncryptedFileReader",
    "FileError",
    "FileFormatError",
    "FileInfo",
    "Header",
    "HeaderMacError",
    "Identity",
    "KeyIdentity",
    "ModuleIdentity",
    "NoMatchingRecipientError",
    "PayloadError",
    "Recipient",
    "Stanza",
    "StanzaKind",
    "StanzaUnwrapError",
    "accept_reissued_stanza",
    "atomic_output",
    "decrypt",
    "decrypt_file",
    "decrypt_file_in_place",
    "encrypt",
    "encrypt_file",
    "encrypt_file_in_place",
    "inspect",
    "inspect_file",
    "open_range",
    "recover_header",
    "reissue_stanza_for",
    "replace_header",
    "rewrap",
    "rewrap_file",
    "rewrap_header",
]

"""ZUC-128 stream cipher with the 128-EEA3 confidentiality and 128-EIA3 integrity modes.

Specifications: GB/T 33133.1 (GM/T 0001.1) = ETSI/SAGE 3GPP "Document 2: ZUC Specification"
v1.6 for the generator; GB/T 33133.2 / 33133.3 = 3GPP "Document 1" for 128-EEA3 / 128-EIA3
(lengths are in *bits*). ZUC-256 is not implemented.

Two backends compute the same function (tested against each other and every 3GPP vector):

* ``"native"``: our C core (``csrc/mst_zuc.c``), built by pip through cffi (API mode) into
  :mod:`mstcrypt.crypto._zuc_native` when a C compiler is present. Keystream, the EEA3 XOR
  and the EIA3 MAC all run in C, several hundred MB/s (EIA3 by carry-less multiplication
  where the CPU has PCLMULQDQ, word by word otherwise).
* ``"python"``: :mod:`mstcrypt.crypto._zuc_python`, a few MB/s, used when the extension was
  not built (no compiler at install time).

:data:`BACKEND` names the active one. The environment variable ``MSTCRYPT_ZUC_BACKEND``
(read at import) chooses: ``python`` forces the fallback, ``native`` makes a missing
extension an error (:class:`~mstcrypt.errors.BackendError` on import), unset or ``auto``
prefers native. Every entry point also takes ``backend="native"|"python"`` to pick one
explicitly (differential tests, benchmarks).
"""

from __future__ import annotations

import hmac
import os
from types import ModuleType
from typing import Final

from mstcrypt.crypto import _zuc_python
from mstcrypt.errors import (
    BackendError,
    DecodeError,
    PolicyError,
    UnsupportedError,
    VerificationError,
)

__all__ = [
    "BACKEND",
    "BACKENDS",
    "NATIVE_AVAILABLE",
    "ZUC128",
    "backend_info",
    "eea3",
    "eia3",
    "eia3_verify",
]

_native: ModuleType | None
_native_error: str | None
try:
    from mstcrypt.crypto import _zuc_native as _native  # type: ignore[attr-defined]

    _native_error = None
except ImportError as exc:  # the optional extension was not built (no C compiler)
    _native = None
    _native_error = str(exc) or type(exc).__name__

#: True when the C extension is importable.
NATIVE_AVAILABLE: Final[bool] = _native is not None
#: The backends usable in this process.
BACKENDS: Final[tuple[str, ...]] = ("native", "python") if NATIVE_AVAILABLE else ("python",)

ENV_VAR: Final = "MSTCRYPT_ZUC_BACKEND"


def _native_description() -> str:
    assert _native is not None
    eia3_how = "PCLMULQDQ" if _native.lib.mst_zuc_eia3_clmul() else "portable C"
    return f"C extension mstcrypt.crypto._zuc_native (EIA3: {eia3_how})"


def _choose_default() -> tuple[str, str]:
    wanted = os.environ.get(ENV_VAR, "").strip().lower()
    if wanted in ("", "auto"):
        if NATIVE_AVAILABLE:
            return "native", _native_description()
        return "python", f"native extension not built ({_native_error})"
    if wanted == "python":
        return "python", f"forced by {ENV_VAR}=python"
    if wanted == "native":
        if not NATIVE_AVAILABLE:
            raise BackendError(
                f"{ENV_VAR}=native but the native ZUC extension is not available "
                f"({_native_error}); reinstall mstcrypt with a C compiler and Python headers"
            )
        return "native", f"{_native_description()}, {ENV_VAR}=native"
    raise BackendError(f"{ENV_VAR} must be 'native', 'python' or 'auto', not {wanted!r}")


#: The active backend: ``"native"`` or ``"python"``.
BACKEND: Final[str]
_BACKEND_REASON: Final[str]
BACKEND, _BACKEND_REASON = _choose_default()

_MASK32 = 0xFFFFFFFF


def backend_info() -> str:
    """A one-line description of the active backend and why it was chosen."""
    return f"{BACKEND}: {_BACKEND_REASON}"


def _resolve(backend: str | None) -> str:
    if backend is None:
        return BACKEND
    if backend == "native":
        if not NATIVE_AVAILABLE:
            raise UnsupportedError(f"the native ZUC backend is not available ({_native_error})")
        return backend
    if backend == "python":
        return backend
    raise UnsupportedError(f"unknown ZUC backend {backend!r} (use 'native' or 'python')")


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise DecodeError(f"{what} must be a bytes-like object, not {type(value).__name__}")


def _check_key(key: object) -> bytes:
    key = _as_bytes(key, "ZUC-128 key")
    if len(key) != 16:
        raise DecodeError(f"ZUC-128 key must be 16 bytes, got {len(key)}")
    return key


class _NativeCore:
    """The C generator state (``mst_zuc_state``), with the same interface as the Python core."""

    __slots__ = ("_st",)

    def __init__(self, key: bytes, iv: bytes) -> None:
        assert _native is not None
        self._st = _native.ffi.new("mst_zuc_state *")
        _native.lib.mst_zuc_init(self._st, key, iv)

    def words(self, n: int) -> list[int]:
        assert _native is not None
        buf = _native.ffi.new("uint32_t[]", n)
        _native.lib.mst_zuc_words(self._st, buf, n)
        return list(buf)

    def block(self, nwords: int) -> bytes:
        assert _native is not None
        ffi = _native.ffi
        buf = ffi.new("uint8_t[]", nwords << 2)
        _native.lib.mst_zuc_keystream(self._st, buf, nwords)
        return ffi.buffer(buf)[:]


class ZUC128:
    """The ZUC-128 keystream generator (key and IV of 16 bytes each).

    The instance is a stream: :meth:`keystream` and :meth:`keystream_words` continue where the
    previous call stopped. Key-words are serialised big-endian (most significant byte first).
    """

    __slots__ = ("_backend", "_core", "_pending")

    KEY_SIZE = 16
    IV_SIZE = 16

    def __init__(self, key: bytes, iv: bytes, *, backend: str | None = None) -> None:
        """Load ``key`` and ``iv`` (16 bytes each) and run the initialisation stage.

        Raises :class:`~mstcrypt.errors.DecodeError` if either has the wrong length or type,
        :class:`~mstcrypt.errors.UnsupportedError` for an unknown or unavailable ``backend``.
        """
        name = _resolve(backend)
        key = _check_key(key)
        iv = _as_bytes(iv, "ZUC-128 IV")
        if len(iv) != self.IV_SIZE:
            raise DecodeError(f"ZUC-128 IV must be {self.IV_SIZE} bytes, got {len(iv)}")
        self._backend = name
        self._pending = b""
        self._core: _NativeCore | _zuc_python.Core = (
            _NativeCore(key, iv) if name == "native" else _zuc_python.Core(key, iv)
        )

    @property
    def backend(self) -> str:
        """``"native"`` or ``"python"``: the implementation behind this instance."""
        return self._backend

    def __repr__(self) -> str:
        return f"<ZUC128 backend={self._backend}>"

    def keystream_words(self, n: int) -> list[int]:
        """Return the next ``n`` 32-bit key-words.

        If a previous :meth:`keystream` call stopped inside a word, the unread bytes of that
        word are dropped so the result stays word aligned.
        """
        if not isinstance(n, int) or n < 0:
            raise PolicyError("number of key-words must be a non-negative integer")
        self._pending = b""
        return self._core.words(n)

    def keystream(self, nbytes: int) -> bytes:
        """Return the next ``nbytes`` keystream bytes (key-words serialised big-endian).

        Bytes of a partly used key-word are kept and returned first by the next call, so
        ``keystream(a) + keystream(b) == keystream(a + b)`` on equal fresh instances.
        """
        if not isinstance(nbytes, int) or nbytes < 0:
            raise PolicyError("keystream length must be a non-negative integer")
        pending = self._pending
        if nbytes <= len(pending):
            self._pending = pending[nbytes:]
            return pending[:nbytes]
        need = nbytes - len(pending)
        block = self._core.block((need + 3) >> 2)
        self._pending = block[need:]
        return pending + block[:need] if pending else block[:need]


def _check_params(count: int, bearer: int, direction: int, length_bits: int) -> None:
    if not isinstance(count, int) or not 0 <= count <= _MASK32:
        raise PolicyError("COUNT must be an integer in [0, 2^32)")
    if not isinstance(bearer, int) or not 0 <= bearer < 32:
        raise PolicyError("BEARER must be an integer in [0, 32)")
    if not isinstance(direction, int) or direction not in (0, 1):
        raise PolicyError("DIRECTION must be 0 or 1")
    if not isinstance(length_bits, int) or not 0 <= length_bits <= _MASK32:
        raise PolicyError("LENGTH must be an integer number of bits in [0, 2^32)")


def _check_data(data: object, length_bits: int, what: str) -> bytes:
    buf = _as_bytes(data, what)
    expected = (length_bits + 7) >> 3
    if len(buf) != expected:
        raise DecodeError(
            f"{what} must be exactly ceil(LENGTH/8) = {expected} bytes for LENGTH = "
            f"{length_bits} bits, got {len(buf)}"
        )
    return buf


def eea3(
    key: bytes,
    count: int,
    bearer: int,
    direction: int,
    data: bytes,
    length_bits: int,
    *,
    backend: str | None = None,
) -> bytes:
    """128-EEA3: encrypt or decrypt the first ``length_bits`` bits of ``data``.

    ``data`` must hold exactly ``ceil(length_bits / 8)`` bytes; the result has the same size,
    with the bits past ``length_bits`` set to zero. The operation is its own inverse.

    Raises :class:`~mstcrypt.errors.DecodeError` for a bad key or data length and
    :class:`~mstcrypt.errors.PolicyError` for COUNT/BEARER/DIRECTION/LENGTH out of range.
    """
    name = BACKEND if backend is None else _resolve(backend)
    _check_params(count, bearer, direction, length_bits)
    if type(key) is not bytes or len(key) != 16:  # the common case costs two tests
        key = _check_key(key)
    buf = data
    if type(buf) is not bytes or len(buf) != (length_bits + 7) >> 3:
        buf = _check_data(data, length_bits, "EEA3 data")
    if name == "python":
        return _zuc_python.eea3(key, count, bearer, direction, buf, length_bits)
    assert _native is not None
    nbytes = len(buf)
    if nbytes == 0:
        return b""
    out = bytearray(nbytes)
    ffi = _native.ffi
    _native.lib.mst_zuc_eea3(key, count, bearer, direction, buf, ffi.from_buffer(out), length_bits)
    return bytes(out)


def eia3(
    key: bytes,
    count: int,
    bearer: int,
    direction: int,
    message: bytes,
    length_bits: int,
    *,
    backend: str | None = None,
) -> bytes:
    """128-EIA3: the 4-byte MAC of the first ``length_bits`` bits of ``message``.

    ``message`` must hold exactly ``ceil(length_bits / 8)`` bytes; bits past ``length_bits``
    are ignored. Raises :class:`~mstcrypt.errors.DecodeError` or
    :class:`~mstcrypt.errors.PolicyError` like :func:`eea3`.
    """
    name = BACKEND if backend is None else _resolve(backend)
    _check_params(count, bearer, direction, length_bits)
    if type(key) is not bytes or len(key) != 16:
        key = _check_key(key)
    buf = message
    if type(buf) is not bytes or len(buf) != (length_bits + 7) >> 3:
        buf = _check_data(message, length_bits, "EIA3 message")
    if name == "python":
        tag = _zuc_python.eia3(key, count, bearer, direction, buf, length_bits)
    else:
        assert _native is not None
        tag = _native.lib.mst_zuc_eia3(key, count, bearer, direction, buf, length_bits)
    return tag.to_bytes(4, "big")


def eia3_verify(
    key: bytes,
    count: int,
    bearer: int,
    direction: int,
    message: bytes,
    length_bits: int,
    mac: bytes,
    *,
    backend: str | None = None,
) -> None:
    """Check a 128-EIA3 MAC in constant time.

    Raises :class:`~mstcrypt.errors.VerificationError` if it does not match,
    :class:`~mstcrypt.errors.DecodeError` if ``mac`` is not 4 bytes (or the message length is
    wrong) and :class:`~mstcrypt.errors.PolicyError` for out-of-range parameters.
    """
    mac = _as_bytes(mac, "EIA3 MAC")
    if len(mac) != 4:
        raise DecodeError(f"EIA3 MAC must be 4 bytes, got {len(mac)}")
    expected = eia3(key, count, bearer, direction, message, length_bits, backend=backend)
    if not hmac.compare_digest(expected, mac):
        raise VerificationError("EIA3 MAC does not match")

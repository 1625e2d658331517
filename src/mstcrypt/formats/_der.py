"""Helpers for strict DER parsing on top of asn1crypto."""

from __future__ import annotations

from typing import Any, TypeVar

from asn1crypto.core import Asn1Value

from mstcrypt.errors import DecodeError

T = TypeVar("T", bound=Asn1Value)


def _walk(value: Any) -> None:
    """Force asn1crypto to parse every nested value (it parses lazily)."""
    native = getattr(value, "native", None)
    del native


def load_strict(spec: type[T], data: bytes, what: str) -> T:
    """Parse ``data`` as exactly one DER value of type ``spec``.

    Raises DecodeError on malformed input, trailing bytes, or any non-canonical
    encoding (the value re-encoded with DER must equal the input)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what} must be bytes")
    data = bytes(data)
    if not data:
        raise DecodeError(f"{what} is empty")
    try:
        value = spec.load(data, strict=True)
        _walk(value)
        reencoded = value.dump(force=True)
    except DecodeError:
        raise
    except Exception as exc:  # asn1crypto raises ValueError/TypeError/OverflowError
        raise DecodeError(f"malformed {what}: {type(exc).__name__}") from None
    if reencoded != data:
        raise DecodeError(f"{what} is not canonical DER")
    return value


def dump(value: Asn1Value) -> bytes:
    return bytes(value.dump(force=True))


def pem_encode(der: bytes, label: str) -> bytes:
    import base64

    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n").encode()


def pem_decode(data: bytes | str, labels: tuple[str, ...]) -> tuple[str, bytes]:
    """Decode the first PEM block whose label is one of ``labels``. Returns (label, der)."""
    import base64
    import binascii

    text = data.decode("ascii", "replace") if isinstance(data, bytes | bytearray) else data
    for label in labels:
        begin = f"-----BEGIN {label}-----"
        end = f"-----END {label}-----"
        i = text.find(begin)
        if i < 0:
            continue
        j = text.find(end, i)
        if j < 0:
            raise DecodeError(f"PEM block {label!r} has no END line")
        body = text[i + len(begin) : j]
        if ":" in body:
            raise DecodeError(
                "legacy PEM encryption headers (Proc-Type/DEK-Info) are not supported; "
                "use PKCS#8 ENCRYPTED PRIVATE KEY"
            )
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError(f"PEM block {label!r} is not valid base64") from None
        return label, der
    raise DecodeError("no PEM block found; expected one of: " + ", ".join(labels))

"""Distinguished names: building them in a stable order and printing them.

:func:`name` builds an :class:`asn1crypto.x509.Name` with one attribute per RDN in the
order C, ST, L, O, OU, CN, serialNumber, emailAddress (most general first, as GM/T 0015
and OpenSSL write them). Values are UTF8String, except where X.520 / RFC 5280 require
another string type: countryName and serialNumber are PrintableString and
emailAddress is IA5String.

Names are compared with asn1crypto's ``Name.__eq__``, which applies the RFC 5280 §7.1
comparison (case folding, whitespace collapsing), so a PrintableString "CN=Root" written
by OpenSSL matches a UTF8String "CN=root" written here.
"""

from __future__ import annotations

from collections.abc import Iterable

from asn1crypto import x509

from mstcrypt.errors import PolicyError

__all__ = ["ATTRIBUTE_ORDER", "name", "name_to_str"]

#: Keyword → asn1crypto attribute type, in the order the attributes are written.
ATTRIBUTE_ORDER: tuple[tuple[str, str], ...] = (
    ("C", "country_name"),
    ("ST", "state_or_province_name"),
    ("L", "locality_name"),
    ("O", "organization_name"),
    ("OU", "organizational_unit_name"),
    ("CN", "common_name"),
    ("serial_number", "serial_number"),
    ("email", "email_address"),
)
_KEYWORDS = dict(ATTRIBUTE_ORDER)
# Upper bounds of RFC 5280 Appendix A.1 (ub-*), in characters.
_MAX_LEN = {
    "country_name": 2,
    "state_or_province_name": 128,
    "locality_name": 128,
    "organization_name": 64,
    "organizational_unit_name": 64,
    "common_name": 64,
    "serial_number": 64,
    "email_address": 255,
}
_PRINTABLE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")

# RFC 4514 short names, then the names OpenSSL prints for the other common attributes.
_SHORT = {
    "2.5.4.3": "CN",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.6": "C",
    "2.5.4.9": "STREET",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
    "2.5.4.5": "serialNumber",
    "1.2.840.113549.1.9.1": "emailAddress",
    "2.5.4.4": "SN",
    "2.5.4.42": "GN",
    "2.5.4.12": "title",
    "2.5.4.97": "organizationIdentifier",
}


def _value(attr_type: str, value: str) -> x509.DirectoryString | x509.EmailAddress:
    if attr_type == "email_address":
        if not value.isascii():
            raise PolicyError("emailAddress must be ASCII (IA5String)")
        return x509.EmailAddress(value)
    if attr_type in ("country_name", "serial_number"):
        if not set(value) <= _PRINTABLE:
            raise PolicyError(f"{attr_type} must use PrintableString characters")
        if attr_type == "country_name" and len(value) != 2:
            raise PolicyError("countryName must be a two-letter ISO 3166 code")
        return x509.DirectoryString(name="printable_string", value=value)
    return x509.DirectoryString(name="utf8_string", value=value)


def name(**attrs: str | Iterable[str]) -> x509.Name:
    """Build a distinguished name, e.g. ``name(C="CN", O="Example Org", OU="MST",
    CN="alice")``.

    Keywords: ``C, ST, L, O, OU, CN, serial_number, email``. A value may be a string or a
    sequence of strings (several OU values, say), each becoming its own RDN. Attributes
    are written in the fixed order above whatever order the keywords are given in.
    Raises PolicyError for an unknown keyword, an empty value or a value that its
    string type cannot hold.
    """
    unknown = set(attrs) - set(_KEYWORDS)
    if unknown:
        raise PolicyError(
            f"unknown name attribute(s) {sorted(unknown)}; expected {list(_KEYWORDS)}"
        )
    rdns = []
    for keyword, attr_type in ATTRIBUTE_ORDER:
        if keyword not in attrs:
            continue
        raw = attrs[keyword]
        values = [raw] if isinstance(raw, str) else list(raw)
        for value in values:
            if not isinstance(value, str) or not value.strip():
                raise PolicyError(f"name attribute {keyword} must be a non-empty string")
            limit = _MAX_LEN[attr_type]
            if len(value) > limit:
                raise PolicyError(f"name attribute {keyword} is longer than {limit} characters")
            rdns.append(
                x509.RelativeDistinguishedName(
                    [x509.NameTypeAndValue({"type": attr_type, "value": _value(attr_type, value)})]
                )
            )
    if not rdns:
        raise PolicyError("a name needs at least one attribute")
    return x509.Name(name="", value=x509.RDNSequence(rdns))


def _escape(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (i == 0 and ch in "# ") or (i == len(value) - 1 and ch == " "):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


def _attr_value(atv: x509.NameTypeAndValue) -> str:
    value = atv["value"]
    native = value.native
    if isinstance(native, str):
        return _escape(native)
    # Not a string type (or an unknown attribute): RFC 4514 §2.4 hex form.
    return "#" + value.dump().hex()


def name_to_str(n: x509.Name) -> str:
    """RFC 4514-style string of a name, most specific RDN first, e.g.
    ``CN=alice,OU=MST,O=Example Org,C=CN``. For display, logs and lookup keys (two
    names that compare equal under RFC 5280 may still print differently)."""
    if not isinstance(n, x509.Name):
        raise PolicyError("name_to_str expects an asn1crypto.x509.Name")
    parts = []
    for rdn in reversed(list(n.chosen)):
        atvs = []
        for atv in rdn:
            oid = atv["type"].dotted
            atvs.append(f"{_SHORT.get(oid, oid)}={_attr_value(atv)}")
        parts.append("+".join(atvs))
    return ",".join(parts)


_EQ_CACHE: dict[tuple[bytes, bytes], bool] = {}


def names_equal(a: x509.Name, b: x509.Name) -> bool:
    """RFC 5280 §7.1 name comparison, with a fast path for identical encodings and a
    bounded memo (asn1crypto's normalising comparison is slow and paths repeat)."""
    da, db = a.dump(), b.dump()
    if da == db:
        return True
    key = (da, db)
    hit = _EQ_CACHE.get(key)
    if hit is None:
        hit = bool(a == b)
        if len(_EQ_CACHE) > 4096:
            _EQ_CACHE.clear()
        _EQ_CACHE[key] = hit
    return hit

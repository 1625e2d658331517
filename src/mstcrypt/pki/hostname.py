"""Host names in certificates: checking the names a CA certifies, and matching a server
certificate against the name a client dialled (RFC 6125 §6, RFC 5280 §4.2.1.6).

Names a CA writes (:func:`dns_name`, :func:`ip_address`):

- a DNS name is written in its canonical form: lower case, A-labels (IDNA 2008 with the
  UTS #46 mapping, so ``Bücher.Example`` becomes ``xn--bcher-kva.example``), no trailing
  dot; each label 1..63 letters, digits and hyphens, not starting or ending with a
  hyphen; at most 253 characters; the last label not all digits (that is an IPv4
  literal written as a name); ``xn--`` labels must be valid A-labels. A wildcard is
  only ever the whole leftmost label, followed by at least two labels (``*.example.com``,
  never ``*.com``, ``f*.example.com`` or ``a.*.example.com``), and only where the caller
  allows one;
- an IP address is an IPv4 or IPv6 address without a zone index, in its compressed form.

Matching (:func:`match_hostname`), the reference identifier being the name dialled:

- an IP literal (``192.0.2.7``, ``2001:db8::7``, ``[2001:db8::7]``) matches only an
  iPAddress entry with the same octets — never a dNSName, never the CN;
- a DNS name is compared, in A-label form and ignoring ASCII case, with each dNSName
  entry; a wildcard entry matches exactly one whole leftmost label; an entry with a
  wildcard anywhere else, a partial-label wildcard or fewer than three labels matches
  nothing; a reference name that is not a valid host name matches nothing;
- the subject CN is consulted only when the certificate has **no subjectAltName
  extension at all** and the caller explicitly asks for it (``allow_common_name``):
  a certificate with any SAN is judged by its SANs alone (RFC 6125 §6.4.4).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import idna

from mstcrypt.errors import PolicyError

__all__ = [
    "IPAddress",
    "canonical_names",
    "dns_name",
    "ip_address",
    "match_hostname",
    "reference_identifier",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _labels_ok(labels: list[str]) -> bool:
    for label in labels:
        if not _LABEL.fullmatch(label):
            return False
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError):
                return False
    return True


def _to_ascii(value: str) -> str | None:
    """``value`` (one or more labels) in lower-case A-label form, or None."""
    if value.isascii():
        return value.lower()
    try:
        return idna.encode(value, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


def dns_name(value: str, *, allow_wildcard: bool = False, what: str = "DNS name") -> str:
    """The canonical form of DNS name ``value`` for a certificate (see the module
    documentation). Raises PolicyError naming what is wrong."""
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{what} must be a non-empty string")
    text = value.strip()
    if text.endswith("."):
        text = text[:-1]
    wildcard = text.startswith("*.")
    if "*" in (text[2:] if wildcard else text):
        raise PolicyError(
            f"{what} {value!r}: a wildcard may only be the whole leftmost label ('*.example.com')"
        )
    if wildcard and not allow_wildcard:
        raise PolicyError(f"{what} {value!r}: wildcard names are not allowed here")
    rest = _to_ascii(text[2:] if wildcard else text)
    if rest is None:
        raise PolicyError(f"{what} {value!r} is not a valid internationalised domain name")
    labels = rest.split(".")
    if not _labels_ok(labels):
        raise PolicyError(
            f"{what} {value!r}: labels are 1..63 letters, digits or hyphens, "
            "not starting or ending with a hyphen"
        )
    if labels[-1].isdigit():
        raise PolicyError(f"{what} {value!r} looks like an IP address; give it as one")
    if wildcard and len(labels) < 2:
        raise PolicyError(
            f"{what} {value!r}: a wildcard needs at least two labels after it ('*.example.com')"
        )
    out = ("*." if wildcard else "") + rest
    if len(out) > 253:
        raise PolicyError(f"{what} {value!r} is longer than 253 characters")
    return out


def ip_address(value: str, *, what: str = "IP address") -> IPAddress:
    """An IPv4 or IPv6 address (brackets around IPv6 accepted, no zone index). Raises
    PolicyError."""
    if not isinstance(value, str):
        raise PolicyError(f"{what} must be a string")
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        raise PolicyError(f"{what} {value!r}: a zone index cannot be certified")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise PolicyError(f"{what} {value!r} is not an IPv4 or IPv6 address") from None


def canonical_names(values: Sequence[str], *, allow_wildcard: bool = False) -> list[str]:
    """Host names for a certificate, each an IP address (compressed) or a DNS name
    (:func:`dns_name`), in the given order without repeats. PolicyError for a bad one."""
    if isinstance(values, str):
        raise PolicyError("host names must be given as a list of strings")
    out: list[str] = []
    for value in values:
        try:
            canon = str(ip_address(value))
        except PolicyError:
            canon = dns_name(value, allow_wildcard=allow_wildcard, what="host name")
        if canon not in out:
            out.append(canon)
    return out


def reference_identifier(host: str) -> IPAddress | str | None:
    """The name a client dialled, as an IP address or a lower-case A-label DNS name;
    None when it is neither (a wildcard, an empty label, bad IDNA, a zone index…)."""
    if not isinstance(host, str) or "%" in host:
        return None  # a zone index is local to the client, never certified
    text = host
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text.endswith("."):
        text = text[:-1]
    if not text or "*" in text or len(text) > 253:
        return None
    ascii_ = _to_ascii(text)
    if ascii_ is None:
        return None
    labels = ascii_.split(".")
    if not _labels_ok(labels) or labels[-1].isdigit():
        return None
    return ascii_


def _presented_matches(presented: str, reference: str) -> bool:
    """RFC 6125 §6.4.1 and §6.4.3 for one presented DNS identifier."""
    if not presented.isascii():
        return False  # dNSName is IA5String; a CN in UTF-8 is no host name
    p = presented.lower()
    if p.endswith("."):
        p = p[:-1]
    if "*" not in p:
        return p == reference
    labels = p.split(".")
    if labels[0] != "*" or "*" in ".".join(labels[1:]) or len(labels) < 3:
        return False  # partial, embedded or too-broad wildcards never match
    ref_labels = reference.split(".")
    return len(ref_labels) == len(labels) and ref_labels[1:] == labels[1:]


def match_hostname(cert: object, host: str, *, allow_common_name: bool = False) -> bool:
    """True when certificate ``cert`` (a :class:`mstcrypt.pki.Certificate`) is issued to
    ``host`` under RFC 6125 (see the module documentation). ``allow_common_name``: fall
    back to the subject CN when the certificate has no subjectAltName at all (off by
    default; only for legacy certificates)."""
    from mstcrypt.pki.cert import Certificate

    if not isinstance(cert, Certificate):
        raise PolicyError("match_hostname needs a Certificate")
    ref = reference_identifier(host)
    if ref is None:
        return False
    if not isinstance(ref, str):
        return ref in cert.ip_addresses
    if cert.has_subject_alt_name:
        return any(_presented_matches(d, ref) for d in cert.dns_names)
    if not allow_common_name:
        return False
    cns = cert.common_names
    # the most specific (last) CN, as RFC 2818 §3.1 did before SANs were mandatory
    return bool(cns) and _presented_matches(cns[-1], ref)

"""Certification path validation (RFC 5280 §6, simplified to what GM/T 0015 PKIs use).

:func:`validate_path` builds the path leaf → intermediates → anchor by name chaining
(issuer name == subject name under RFC 5280 §7.1 comparison, and AKI == SKI when both
are present), then checks, from the anchor down:

- the signature of every non-anchor certificate with its issuer's key (SM2-with-SM3,
  default ID);
- the validity period of every certificate, anchors included, at ``at``;
- that every issuing certificate below the anchor has basicConstraints CA:TRUE and
  keyCertSign; the anchor is trusted as given, except that constraints it states
  explicitly are honoured (basicConstraints CA:FALSE, a keyUsage without keyCertSign,
  a pathLenConstraint);
- pathLenConstraint of every CA (the number of non-self-issued intermediates below it);
- that every critical extension of a non-anchor certificate is understood
  (nameConstraints, policyConstraints, inhibitAnyPolicy are not implemented and fail);
- the leaf's required key usage (which must be asserted: a leaf without a keyUsage
  extension fails, as GM/T 0015 makes the extension mandatory) and extended key usage
  (a leaf without the EKU extension is unrestricted, RFC 5280 §4.2.1.12;
  anyExtendedKeyUsage is accepted);
- revocation of every non-anchor certificate against a complete CRL from its issuer:
  same issuer name, AKI equal to the issuer's SKI when both are present, signature
  verified with the issuer's key, issuer allowed to sign CRLs, thisUpdate not in the
  future, nextUpdate not passed, no unsupported critical extension; and against the
  issuer's delta CRLs given with it (RFC 5280 §5.2.4), each checked the same way and
  applicable only on top of a supplied complete CRL (its BaseCRLNumber at most that
  CRL's number: a delta on a newer base than any supplied complete CRL is
  ``crl_invalid``). A delta CRL alone is not a complete CRL. A delta entry revokes; a
  removeFromCRL entry in a delta newer than the complete CRL releases a certificateHold.
  CRLs may be strictly parsed :class:`~mstcrypt.pki.crl.CRL` objects or
  :class:`~mstcrypt.pki.crl_scan.CrlIndex` scans.

Reasons (CertificateError.reason): a certificate whose issuer name matches no known
certificate is ``unknown_issuer``, unless its authorityKeyIdentifier designates a known
certificate, which makes it ``name_chain`` (the key says one issuer, the name another).
A CRL whose issuer name matches but fails a check is ``crl_invalid`` (``crl_expired``
when only nextUpdate has passed). With several candidate paths the first one that
validates is returned; when none does, the error of the first candidate is raised.
``require_revocation_check`` only governs the absence of a CRL from an issuer: CRLs
that are supplied are always checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from mstcrypt.errors import PolicyError
from mstcrypt.pki import _common as c
from mstcrypt.pki.cert import Certificate
from mstcrypt.pki.crl import CRL, REMOVE_FROM_CRL, RevokedEntry
from mstcrypt.pki.crl_scan import CrlIndex
from mstcrypt.pki.errors import CertificateError

__all__ = ["MAX_CANDIDATE_PATHS", "MAX_PATH_LENGTH", "AnyCrl", "validate_path"]

#: What validate_path takes as a CRL: a strict parse or a status index.
AnyCrl = CRL | CrlIndex

#: Longest path considered (certificates, leaf and anchor included).
MAX_PATH_LENGTH = 10
#: At most this many candidate paths are built and tried (same-name CAs without key
#: identifiers could otherwise make path building exponential).
MAX_CANDIDATE_PATHS = 16


#: A CRL issued "in the future" by up to this much is accepted (clocks of the CA and the
#: validating party differ in practice).
CRL_CLOCK_SKEW = timedelta(minutes=5)


def _fail(reason: str, message: str, cert: Certificate | None) -> CertificateError:
    return CertificateError(reason, message, certificate=cert.subject_str if cert else None)


def _key_ids_match(child: Certificate, issuer: Certificate) -> bool:
    aki, ski = child.authority_key_id, issuer.subject_key_id
    return aki is None or ski is None or aki == ski


def _issuer_candidates(cert: Certificate, pool: Sequence[Certificate]) -> list[Certificate]:
    return [p for p in pool if cert.issued_by_name(p) and _key_ids_match(cert, p)]


def _no_issuer_error(
    cert: Certificate, anchors: Sequence[Certificate], intermediates: Sequence[Certificate]
) -> CertificateError:
    aki = cert.authority_key_id
    if aki is not None:
        for known in (*anchors, *intermediates):
            if known.subject_key_id == aki and not cert.issued_by_name(known):
                return _fail(
                    "name_chain",
                    f"issuer name {cert.issuer_str!r} does not match the subject "
                    f"{known.subject_str!r} of the certificate its key identifier designates",
                    cert,
                )
    return _fail(
        "unknown_issuer", f"no trusted or intermediate certificate is {cert.issuer_str!r}", cert
    )


def _build_paths(
    leaf: Certificate,
    anchors: Sequence[Certificate],
    intermediates: Sequence[Certificate],
) -> tuple[list[list[Certificate]], CertificateError | None]:
    """The paths leaf → … → anchor (depth-first, anchors tried first at each step, at
    most MAX_CANDIDATE_PATHS of them), and the error explaining the first dead end when
    there is none."""
    paths: list[list[Certificate]] = []
    errors: list[CertificateError] = []

    def walk(path: list[Certificate]) -> None:
        cert = path[-1]
        found = False
        for anchor in _issuer_candidates(cert, anchors):
            if anchor not in path:
                found = True
                paths.append([*path, anchor])
        for inter in _issuer_candidates(cert, intermediates):
            if inter in path or inter in anchors:
                continue
            found = True
            if len(paths) >= MAX_CANDIDATE_PATHS:
                return
            if len(path) + 2 > MAX_PATH_LENGTH:
                errors.append(_fail("path_length", "certification path too long", cert))
                continue
            walk([*path, inter])
        if not found:
            errors.append(_no_issuer_error(cert, anchors, intermediates))

    if leaf in anchors:
        return [[leaf]], None
    walk([leaf])
    return paths, (errors[0] if errors else None)


def _check_validity(cert: Certificate, at: datetime) -> None:
    if at < cert.not_before:
        raise _fail(
            "not_yet_valid", f"certificate is not valid before {cert.not_before.isoformat()}", cert
        )
    if at > cert.not_after:
        raise _fail("expired", f"certificate expired at {cert.not_after.isoformat()}", cert)


def _check_profile(cert: Certificate) -> None:
    if not 0 < cert.serial < 1 << 159:
        raise _fail("malformed", "serial number must be positive and at most 20 octets", cert)
    bad = cert.unsupported_critical_extensions
    if bad:
        raise _fail(
            "unsupported_critical_extension",
            f"critical extension(s) not understood: {', '.join(bad)}",
            cert,
        )


def _check_issuer(issuer: Certificate, is_anchor: bool) -> None:
    """``issuer`` signs certificates: CA and keyCertSign (anchors: only when stated)."""
    if is_anchor:
        if c.OID_BASIC_CONSTRAINTS in issuer.extensions and not issuer.is_ca:
            raise _fail("not_ca", "trust anchor states CA:FALSE", issuer)
        if issuer.key_usage and "key_cert_sign" not in issuer.key_usage:
            raise _fail("key_usage", "trust anchor key usage lacks keyCertSign", issuer)
        return
    if not issuer.is_ca:
        raise _fail("not_ca", "issuing certificate is not a CA (basicConstraints)", issuer)
    if "key_cert_sign" not in issuer.key_usage:
        raise _fail("key_usage", "issuing CA certificate lacks keyCertSign", issuer)


def _check_path_length(path: list[Certificate]) -> None:
    # path[0] is the certificate being processed, path[-1] the anchor. For the CA at
    # index j, the certificates between it and path[0] are path[1:j]; the non-self-issued
    # ones count (RFC 5280 6.1.4 (l), (m)).
    for j in range(1, len(path)):
        ca = path[j]
        if ca.path_len is None:
            continue
        below = sum(1 for x in path[1:j] if not x.is_self_issued())
        if below > ca.path_len:
            raise _fail(
                "path_length",
                f"pathLenConstraint {ca.path_len} allows fewer CAs below it than {below}",
                ca,
            )


def _check_crl(crl: AnyCrl, issuer: Certificate, issuer_is_anchor: bool, at: datetime) -> None:
    subject = issuer.subject_str
    if crl.unsupported_critical_extensions:
        raise CertificateError(
            "crl_invalid",
            "CRL has unsupported critical extension(s): "
            + ", ".join(crl.unsupported_critical_extensions),
            certificate=subject,
        )
    aki, ski = crl.authority_key_id, issuer.subject_key_id
    if aki is not None and ski is not None and aki != ski:
        raise CertificateError(
            "crl_invalid", "CRL authority key identifier is not the issuer's", certificate=subject
        )
    if issuer.key_usage and "crl_sign" not in issuer.key_usage:
        raise CertificateError(
            "crl_invalid", "CRL issuer's key usage lacks cRLSign", certificate=subject
        )
    if not issuer_is_anchor and not issuer.key_usage:
        raise CertificateError("crl_invalid", "CRL issuer asserts no cRLSign", certificate=subject)
    crl.verify_signature(issuer.public_key)  # crl_invalid
    if crl.this_update > at + CRL_CLOCK_SKEW:
        raise CertificateError(
            "crl_invalid", "CRL thisUpdate is in the future", certificate=subject
        )
    if crl.next_update is not None and at > crl.next_update:
        raise CertificateError(
            "crl_expired", f"CRL expired at {crl.next_update.isoformat()}", certificate=subject
        )


def _check_revocation(
    cert: Certificate,
    issuer: Certificate,
    issuer_is_anchor: bool,
    crls: Sequence[AnyCrl],
    at: datetime,
    required: bool,
) -> None:
    candidates = [x for x in crls if x.issued_by_name(issuer.subject)]
    complete = [x for x in candidates if not x.is_delta]
    deltas = [x for x in candidates if x.is_delta]
    if not complete:
        if required or deltas:
            why = "only delta CRLs" if deltas else "no CRL"
            raise _fail("crl_missing", f"{why} from {issuer.subject_str!r}", cert)
        return
    good: list[AnyCrl] = []
    errors: list[CertificateError] = []
    for crl in complete:
        try:
            _check_crl(crl, issuer, issuer_is_anchor, at)
        except CertificateError as exc:
            errors.append(exc)
        else:
            good.append(crl)
    if not good:
        # Prefer "expired" (a genuine CRL that is stale) over "invalid".
        errors.sort(key=lambda e: e.reason != "crl_expired")
        raise errors[0]
    # Any valid CRL that lists the certificate revokes it (the newest is checked first).
    good.sort(key=lambda x: (x.number if x.number is not None else -1, x.this_update), reverse=True)
    newest = good[0].number if good[0].number is not None else -1
    entry: RevokedEntry | None = None
    for crl in good:
        entry = crl.is_revoked(cert.serial)
        if entry is not None:
            break
    # Delta CRLs: every one given is checked; those newer than the complete CRL apply.
    applicable = []
    for delta in deltas:
        _check_crl(delta, issuer, issuer_is_anchor, at)
        base = delta.delta_base if delta.delta_base is not None else -1
        if base > newest:
            raise CertificateError(
                "crl_invalid",
                f"delta CRL {delta.number} updates complete CRL {base}, newer than the "
                f"complete CRL given ({newest})",
                certificate=issuer.subject_str,
            )
        if (delta.number if delta.number is not None else -1) > newest:
            applicable.append(delta)
    applicable.sort(key=lambda x: x.number if x.number is not None else -1)
    for delta in applicable:
        found = delta.is_revoked(cert.serial)
        if found is None:
            continue
        if found.reason != REMOVE_FROM_CRL:
            entry = found
        elif entry is not None and entry.reason == "certificate_hold":
            entry = None  # the hold was released
    if entry is not None:
        why = f" ({entry.reason})" if entry.reason else ""
        raise _fail("revoked", f"certificate revoked at {entry.revoked_at.isoformat()}{why}", cert)


def _check_leaf(leaf: Certificate, key_usage: frozenset[str], eku: str | None) -> None:
    missing = key_usage - leaf.key_usage
    if missing:
        raise _fail("key_usage", f"key usage lacks {', '.join(sorted(missing))}", leaf)
    if eku is not None and leaf.extended_key_usage:
        have = {c.eku_oid(e) for e in leaf.extended_key_usage}
        if c.eku_oid(eku) not in have and c.OID_ANY_EKU not in have:
            raise _fail("extended_key_usage", f"extended key usage lacks {eku}", leaf)


def _check_path(
    path: list[Certificate],
    crls: Sequence[AnyCrl],
    at: datetime,
    require_revocation_check: bool,
    key_usage: frozenset[str],
    eku: str | None,
) -> None:
    anchor = path[-1]
    _check_validity(anchor, at)
    # From the anchor down to the leaf.
    for i in range(len(path) - 2, -1, -1):
        cert, issuer = path[i], path[i + 1]
        issuer_is_anchor = i + 1 == len(path) - 1
        cert.verify_signature(issuer.public_key)
        _check_validity(cert, at)
        _check_profile(cert)
        _check_issuer(issuer, issuer_is_anchor)
        _check_path_length(path[i:])
        _check_revocation(cert, issuer, issuer_is_anchor, crls, at, require_revocation_check)
    _check_leaf(path[0], key_usage, eku)


def validate_path(
    leaf: Certificate,
    *,
    anchors: Sequence[Certificate],
    intermediates: Sequence[Certificate] = (),
    crls: Sequence[AnyCrl] = (),
    at: datetime | None = None,
    require_revocation_check: bool = True,
    key_usage: Iterable[str] = (),
    extended_key_usage: str | None = None,
) -> list[Certificate]:
    """Validate ``leaf`` up to one of ``anchors``; return the path, leaf first and anchor
    last. ``at`` defaults to now (an aware datetime). ``key_usage``: asn1crypto KeyUsage
    names the leaf must assert (e.g. ``{"digital_signature"}``); ``extended_key_usage``:
    one EKU name or dotted OID (e.g. ``"server_auth"``). Raises CertificateError with the
    reason (see the module documentation); PolicyError for invalid arguments.
    """
    if not isinstance(leaf, Certificate):
        raise PolicyError("leaf must be a Certificate")
    anchors = list(anchors)
    intermediates = list(intermediates)
    crls = list(crls)
    if not anchors:
        raise PolicyError("at least one trust anchor is needed")
    for x in (*anchors, *intermediates):
        if not isinstance(x, Certificate):
            raise PolicyError("anchors and intermediates must be Certificate objects")
    for x in crls:
        if not isinstance(x, CRL | CrlIndex):
            raise PolicyError("crls must be CRL or CrlIndex objects")
    # Not truncated: a certificate is expired one microsecond after its notAfter.
    when = datetime.now(UTC) if at is None else c.utc(at, "at", whole_seconds=False)
    ku = frozenset(key_usage)
    unknown = ku - c.KEY_USAGE_NAMES
    if isinstance(key_usage, str) or unknown:
        raise PolicyError(f"key_usage must be a set of names among {sorted(c.KEY_USAGE_NAMES)}")
    if extended_key_usage is not None:
        c.eku_oid(extended_key_usage)  # PolicyError when unknown

    paths, dead_end = _build_paths(leaf, anchors, intermediates)
    first: CertificateError | None = None
    for path in paths:
        try:
            _check_path(path, crls, when, require_revocation_check, ku, extended_key_usage)
        except CertificateError as exc:
            first = first or exc
            continue
        return path
    raise first or dead_end or _fail("unknown_issuer", "no certification path found", leaf)

"""A cache of validated certification paths.

A server or client that sees the same peer certificates again and again (every TLCP
handshake with the same terminal or gateway) need not rebuild and re-verify the same
path each time. :class:`ValidationCache` remembers *successful* validations of
:func:`mstcrypt.pki.validate_path` and answers a repeated question from memory only when
every input of the answer is the same:

- the key is SM3 over the exact DER of the leaf and of every intermediate offered, the
  DER of every trust anchor, every CRL (their DER digests, in order), the revocation
  policy (``require_revocation_check``) and the purpose (key usages and extended key
  usage). A different certificate with the same subject, another CRL set (a new CRL,
  one removed), other anchors or another purpose is another key;
- an entry also records the time window over which the answer cannot change: the
  intersection of the validity periods of every certificate on the path and, for every
  CRL from an issuer on the path, of the interval over which its time checks (thisUpdate
  not in the future, nextUpdate not passed) keep the result they had. A lookup at a time
  outside the window (a certificate expired since, a CRL gone stale) is a miss, and the
  full validation then fails with the usual reason. Entries also expire ``ttl`` after
  they were made;
- failures are never cached: a path that does not validate is validated again, in full,
  every time;
- when a lookup brings a CRL set other than the one of the previous lookup, every entry
  made under another CRL set is dropped (they could only be reached again if the old
  set came back).

The cache is bounded (least recently used entries go first) and thread-safe. It holds
public data only (certificates and digests).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import PolicyError
from mstcrypt.pki import _common as c
from mstcrypt.pki.cert import Certificate
from mstcrypt.pki.crl import CRL
from mstcrypt.pki.crl_scan import CrlIndex
from mstcrypt.pki.validate import CRL_CLOCK_SKEW, validate_path

__all__ = ["ValidationCache"]

_TICK = timedelta(microseconds=1)
_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Entry:
    path: tuple[Certificate, ...]
    crl_digest: bytes
    not_before: datetime  # the answer holds for not_before <= at <= not_after
    not_after: datetime


class _SetDigest:
    """SM3 over the DERs of a sequence of certificates or CRLs, recomputed only when the
    sequence holds other objects (compared by identity, so a list changed in place is
    seen; the objects are kept, so their ids cannot be reused). The objects and their
    digest are stored as one tuple, so concurrent callers never pair one set's objects
    with another set's digest."""

    __slots__ = ("_kind", "_memo", "_tag")

    def __init__(self, tag: bytes, kind: tuple[type, ...]) -> None:
        self._tag = tag
        self._kind = kind
        self._memo: tuple[tuple[object, ...], bytes] = ((), sm3(tag))

    def __call__(self, items: Sequence[Certificate] | Sequence[CRL | CrlIndex]) -> bytes:
        held, digest = self._memo
        if len(held) == len(items) and all(a is b for a, b in zip(held, items, strict=True)):
            return digest
        snapshot = tuple(items)
        if not all(isinstance(x, self._kind) for x in snapshot):
            kinds = " or ".join(k.__name__ for k in self._kind)
            raise PolicyError(f"{self._tag.decode()} must be {kinds} objects")
        digest = sm3(self._tag + b"".join(sm3(x.der) for x in snapshot))
        self._memo = (snapshot, digest)
        return digest


def _window(
    at: datetime, intervals: Iterable[tuple[datetime, datetime]]
) -> tuple[datetime, datetime]:
    """The largest interval around ``at`` over which ``at ∈ [a, b]`` keeps its truth
    value for every (a, b) given."""
    lo, hi = _MIN, _MAX
    for a, b in intervals:
        if at < a:
            hi = min(hi, a - _TICK)
        elif at > b:
            lo = max(lo, b + _TICK)
        else:
            lo, hi = max(lo, a), min(hi, b)
    return lo, hi


class ValidationCache:
    """Remembers successful path validations (see the module documentation).

    ``max_size`` entries at most (LRU); each entry is used for at most ``ttl`` (measured
    on the ``at`` times given to :meth:`validate`) and never outside the validity
    window of the certificates and CRLs it depends on. Share one cache between
    contexts that use the same CRLs (a new CRL set drops the entries of the others).
    """

    def __init__(self, *, max_size: int = 4096, ttl: timedelta = timedelta(minutes=15)) -> None:
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
            raise PolicyError("ValidationCache max_size must be a positive int")
        if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
            raise PolicyError("ValidationCache ttl must be a positive timedelta")
        self.max_size = max_size
        self.ttl = ttl
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._anchors = _SetDigest(b"anchors", (Certificate,))
        self._intermediates = _SetDigest(b"intermediates", (Certificate,))
        self._crls = _SetDigest(b"crls", (CRL, CrlIndex))
        self._crl_digest: bytes | None = None
        self._purposes: dict[tuple[frozenset[str], str | None, bool], bytes] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return (
            f"ValidationCache(entries={len(self._items)}, max_size={self.max_size}, "
            f"hits={self.hits}, misses={self.misses})"
        )

    def clear(self) -> None:
        """Forget every entry (for instance after changing trust settings by hand)."""
        with self._lock:
            self._items.clear()

    def validate(
        self,
        leaf: Certificate,
        *,
        anchors: Sequence[Certificate],
        intermediates: Sequence[Certificate] = (),
        crls: Sequence[CRL | CrlIndex] = (),
        at: datetime | None = None,
        require_revocation_check: bool = True,
        key_usage: Iterable[str] = (),
        extended_key_usage: str | None = None,
    ) -> list[Certificate]:
        """:func:`~mstcrypt.pki.validate_path` with the same arguments, result and
        errors, answered from the cache when the same question was answered
        successfully before and its answer still holds at ``at``."""
        if not isinstance(leaf, Certificate):
            raise PolicyError("leaf must be a Certificate")
        when = datetime.now(UTC) if at is None else c.utc(at, "at", whole_seconds=False)
        if isinstance(key_usage, str):
            raise PolicyError(f"key_usage must be a set of names among {sorted(c.KEY_USAGE_NAMES)}")
        ku = key_usage if isinstance(key_usage, frozenset) else frozenset(key_usage)
        # One snapshot of each set serves both the key and the validation.
        anchors, intermediates, crls = tuple(anchors), tuple(intermediates), tuple(crls)
        key, crl_digest = self._key(
            leaf, anchors, intermediates, crls, require_revocation_check, ku, extended_key_usage
        )
        with self._lock:
            if crl_digest != self._crl_digest:
                # The CRLs changed: nothing validated under another set is reused.
                if self._crl_digest is not None:
                    for k in [k for k, e in self._items.items() if e.crl_digest != crl_digest]:
                        del self._items[k]
                self._crl_digest = crl_digest
            entry = self._items.get(key)
            if entry is not None:
                if entry.not_before <= when <= entry.not_after:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return list(entry.path)
                del self._items[key]
            self.misses += 1
        path = validate_path(
            leaf,
            anchors=anchors,
            intermediates=intermediates,
            crls=crls,
            at=when,
            require_revocation_check=require_revocation_check,
            key_usage=ku,
            extended_key_usage=extended_key_usage,
        )
        lo, hi = _window(when, self._intervals(path, crls))
        entry = _Entry(tuple(path), crl_digest, max(lo, when - self.ttl), min(hi, when + self.ttl))
        with self._lock:
            if crl_digest == self._crl_digest:
                self._items[key] = entry
                self._items.move_to_end(key)
                while len(self._items) > self.max_size:
                    self._items.popitem(last=False)
        return path

    def _key(
        self,
        leaf: Certificate,
        anchors: Sequence[Certificate],
        intermediates: Sequence[Certificate],
        crls: Sequence[CRL | CrlIndex],
        require: bool,
        ku: frozenset[str],
        eku: str | None,
    ) -> tuple[bytes, bytes]:
        purpose = self._purposes.get((ku, eku, require))
        if purpose is None:
            if not all(isinstance(u, str) for u in ku):
                raise PolicyError(
                    f"key_usage must be a set of names among {sorted(c.KEY_USAGE_NAMES)}"
                )
            text = ",".join(sorted(ku)) + ";" + (c.eku_oid(eku) if eku is not None else "-")
            text += ";crl-required" if require else ";crl-optional"
            purpose = len(text).to_bytes(2, "big") + text.encode()
            if len(self._purposes) < 64:
                self._purposes[(ku, eku, require)] = purpose
        crl_digest = self._crls(crls)
        key = sm3(
            b"mstcrypt validated path v1\0"
            + purpose
            + self._anchors(anchors)
            + self._intermediates(intermediates)
            + crl_digest
            + leaf.der
        )
        return key, crl_digest

    @staticmethod
    def _intervals(
        path: Sequence[Certificate], crls: Sequence[CRL | CrlIndex]
    ) -> list[tuple[datetime, datetime]]:
        out = [(x.not_before, x.not_after) for x in path]
        for issuer in path[1:]:
            for crl in crls:
                if crl.issued_by_name(issuer.subject):
                    out.append((crl.this_update - CRL_CLOCK_SKEW, crl.next_update or _MAX))
        return out

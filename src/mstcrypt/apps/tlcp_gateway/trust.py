"""Where the gateway's trust anchors and CRLs come from, refreshed periodically.

A trust source is a callable (plain or coroutine function) returning a
:class:`TrustMaterial`. The gateway calls it every ``refresh_interval`` seconds and builds
new TLCP contexts from the result, so a terminal revoked at the KMC is refused within one
refresh interval. When a refresh fails the previous material stays in use (and the
CRLs' nextUpdate still bounds how long: an expired CRL fails validation).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mstcrypt.errors import PolicyError
from mstcrypt.formats._der import pem_decode
from mstcrypt.pki import CRL, Certificate, CrlIndex, load_certificates

if TYPE_CHECKING:
    from mstcrypt.kmc.service import Kmc

__all__ = [
    "TrustMaterial",
    "TrustSource",
    "file_trust_source",
    "kmc_trust_source",
    "load_crl",
    "load_crl_index",
]


@dataclass(frozen=True)
class TrustMaterial:
    """Trust anchors, intermediate CA certificates and CRLs for client certificates."""

    trust_anchors: tuple[Certificate, ...]
    intermediates: tuple[Certificate, ...] = ()
    crls: tuple[CRL | CrlIndex, ...] = ()

    def __post_init__(self) -> None:
        if not self.trust_anchors:
            raise PolicyError("trust material needs at least one trust anchor")
        object.__setattr__(self, "trust_anchors", tuple(self.trust_anchors))
        object.__setattr__(self, "intermediates", tuple(self.intermediates))
        object.__setattr__(self, "crls", tuple(self.crls))


TrustSource = Callable[[], TrustMaterial | Awaitable[TrustMaterial]]


def load_crl(data: bytes) -> CRL:
    """A CRL from DER or PEM bytes (the strict parse)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return CRL.from_pem(data)
    return CRL.from_der(data)


#: scanned CRLs by the SHA-256 of their DER, newest use last: a refresh that finds the
#: same CRL bytes reuses the index (and the signature check it remembers) instead of
#: scanning again; a handful covers a gateway's sources (issuing, root, deltas)
_INDEX_CACHE: OrderedDict[bytes, CrlIndex] = OrderedDict()
_INDEX_CACHE_SIZE = 8
_INDEX_LOCK = threading.Lock()


def load_crl_index(data: bytes) -> CrlIndex:
    """A CRL from DER or PEM bytes as a :class:`~mstcrypt.pki.CrlIndex`: framed and
    indexed by serial, not parsed entry by entry (a gateway refreshing a 100,000-entry
    CRL every minute would otherwise spend seconds on each refresh), and not scanned
    again while the bytes are unchanged. Validation checks its signature, issuer, times
    and critical extensions as for a strictly parsed CRL."""
    der = bytes(data)
    if der.lstrip().startswith(b"-----BEGIN"):
        _, der = pem_decode(der, ("X509 CRL",))
    key = hashlib.sha256(der).digest()
    with _INDEX_LOCK:
        hit = _INDEX_CACHE.get(key)
        if hit is not None:
            _INDEX_CACHE.move_to_end(key)
            return hit
    index = CrlIndex.from_der(der)
    with _INDEX_LOCK:
        _INDEX_CACHE[key] = index
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
    return index


def _fetch(url: str, timeout: float, max_bytes: int) -> bytes:
    if not url.lower().startswith(("http://", "https://")):
        raise PolicyError(f"CRL URL {url!r} must be http or https")
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - scheme checked
        data = resp.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PolicyError(f"CRL at {url} is larger than {max_bytes} bytes")
    return data


def file_trust_source(
    ca_files: Sequence[str | Path],
    intermediate_files: Sequence[str | Path] = (),
    crl_files: Sequence[str | Path] = (),
    crl_urls: Sequence[str] = (),
    *,
    timeout: float = 10.0,
    max_crl_bytes: int = 16 << 20,
    fetch: Callable[[str], bytes] | None = None,
) -> TrustSource:
    """A source that re-reads PEM CA files and CRL files (DER or PEM) and fetches CRLs
    from http(s) URLs (in a worker thread) at each refresh. ``fetch(url) -> bytes``
    replaces the default fetcher (urllib: plain HTTP or standard TLS), for example with
    one going through :mod:`mstcrypt.protocols.tlcp.http_client` when the CRLs are
    published over TLCP. A CRL is signed, so the channel it comes through needs no
    authentication."""

    def certs(files: Sequence[str | Path]) -> tuple[Certificate, ...]:
        return tuple(c for f in files for c in load_certificates(Path(f).read_bytes()))

    async def source() -> TrustMaterial:
        crls = [load_crl_index(Path(f).read_bytes()) for f in crl_files]
        for url in crl_urls:
            if fetch is None:
                data = await asyncio.to_thread(_fetch, url, timeout, max_crl_bytes)
            else:
                data = await asyncio.to_thread(fetch, url)
                if len(data) > max_crl_bytes:
                    raise PolicyError(f"CRL at {url} is larger than {max_crl_bytes} bytes")
            crls.append(load_crl_index(data))
        return TrustMaterial(certs(ca_files), certs(intermediate_files), tuple(crls))

    return source


def kmc_trust_source(kmc: Kmc) -> TrustSource:
    """A source reading the KMC directly (same process): its root as the anchor, the
    issuing CA as intermediate, and the newest CRL of both."""

    def source() -> TrustMaterial:
        issuing, root = kmc.chain()
        crls = (load_crl_index(kmc.crl("issuing")), load_crl_index(kmc.crl("root")))
        return TrustMaterial((root,), (issuing,), crls)

    return source


async def call_source(source: TrustSource) -> TrustMaterial:
    result: Any = source()
    if isinstance(result, Awaitable):
        result = await result
    if not isinstance(result, TrustMaterial):
        raise PolicyError("the trust source must return TrustMaterial")
    return result

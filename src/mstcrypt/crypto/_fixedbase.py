"""SM2 signature verification with precomputed multiples (fixed-base tables).

Verification computes s·G + t·P (GB/T 32918.2 §7.1 B6). Every input is public, so it
may use variable-time methods with tables: OpenSSL's windowed NAF multiplication uses a
precomputed table of a group's *generator*. This module keeps

* one curve object whose generator is G, with its table (built once per process);
* for public keys that verify again and again (a CA, an OCSP responder, a group
  member who sends many messages), a curve object whose generator is that key's point
  P, with its own table — built on a key's second verification, kept in a bounded LRU.

With both tables, s·G and t·P are each a table walk (about a fifth of a plain scalar
multiplication here); a key without a table uses the G table and a windowed NAF of P.

Signing never comes here: a signature's nonce is secret, and libcrypto's constant-time
ladder (EVP) signs. The curve objects are built with ``EC_GROUP_new_curve_GFp`` from the
domain parameters (the same field, so points of the two objects can be added), and
``EC_POINT_mul`` keeps its meaning whatever method libcrypto picks: a build where the
trick gives no speed still verifies correctly (the tests compare every result with
libcrypto's own SM2 verification).

``MSTCRYPT_SM2_VERIFY=evp`` in the environment turns this path off (diagnostics).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mstcrypt.crypto import _libcrypto as _lc
from mstcrypt.crypto.curve import GX, GY, SIZE, A, B, N, P

__all__ = ["enabled", "no_new_tables", "parse_der_signature", "stats", "verify"]

#: Public keys whose tables are kept (each about 40 KiB inside libcrypto).
TABLES = 256
#: A key gets its table on this verification (the table costs about two verifications).
BUILD_AT = 2
_COUNT_LIMIT = 8192

_lock = threading.Lock()
_local = threading.local()
_state: dict[str, Any] = {}
_tables: OrderedDict[bytes, Any] = OrderedDict()
_seen: dict[bytes, int] = {}
_building = True
_stats = {"table": 0, "generator_only": 0, "built": 0, "evicted": 0}


def enabled() -> bool:
    """False when turned off by MSTCRYPT_SM2_VERIFY=evp or unusable in this libcrypto."""
    if os.environ.get("MSTCRYPT_SM2_VERIFY", "").lower() == "evp":
        return False
    return _setup() is not None


def stats() -> dict[str, int]:
    """Counters: verifications with a key table, with the G table only, tables built
    and evicted (for ``mstcrypt speed`` and the tests)."""
    with _lock:
        return {**_stats, "cached": len(_tables)}


@contextmanager
def no_new_tables() -> Iterator[None]:
    """While inside, no key gets a table (keys that have one keep it): what a key's
    first verification costs, for ``mstcrypt speed``."""
    global _building
    with _lock:
        before, _building = _building, False
    try:
        yield
    finally:
        with _lock:
            _building = before


def _ctx() -> Any:
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        L = _lc.lib()
        ctx = L.BN_CTX_new()
        if ctx == _lc.ffi.NULL:
            raise _lc.fail("BN_CTX_new")
        ctx = _lc.ffi.gc(ctx, L.BN_CTX_free)
        _local.ctx = ctx
    return ctx


def _group_with_generator(point_raw: bytes) -> tuple[Any, Any] | None:
    """(curve object over sm2p256v1 whose generator is the point ``point_raw`` (04‖x‖y,
    already known to be on the curve), with its precomputed table; that point in it), or
    None on failure."""
    L, ffi = _lc.lib(), _lc.ffi
    ctx = _ctx()
    p, a, b = _state["p"], _state["a"], _state["b"]
    group = L.EC_GROUP_new_curve_GFp(p, a, b, ctx)
    if group == ffi.NULL:
        _lc.drain_errors()
        return None
    group = ffi.gc(group, L.EC_GROUP_free)
    gen = L.EC_POINT_new(group)
    if gen == ffi.NULL:
        _lc.drain_errors()
        return None
    gen = ffi.gc(gen, L.EC_POINT_free)
    if (
        L.EC_POINT_oct2point(group, gen, point_raw, len(point_raw), ctx) != 1
        or L.EC_GROUP_set_generator(group, gen, _state["n"], _state["one"]) != 1
        or L.EC_GROUP_precompute_mult(group, ctx) != 1
    ):
        _lc.drain_errors()
        return None
    return group, gen


def _setup() -> dict[str, Any] | None:
    if _state:
        return _state if _state.get("ok") else None
    with _lock:
        if _state:
            return _state if _state.get("ok") else None
        try:
            bn = _lc.bn_from_int
            _state.update(p=bn(P), a=bn(A), b=bn(B), n=bn(N), one=bn(1), zero=bn(0))
            g_raw = b"\x04" + GX.to_bytes(SIZE, "big") + GY.to_bytes(SIZE, "big")
            built = _group_with_generator(g_raw)
            if built is None:
                _state["ok"] = False
                return None
            _state.update(g=built[0], g_point=built[1], ok=True)
        except Exception:  # a libcrypto without the low-level EC API: EVP verifies
            _state.clear()
            _state["ok"] = False
            return None
    return _state


def _table_for(raw: bytes) -> Any:
    """The key's table if it has one; builds it on the key's BUILD_AT-th use."""
    t = _tables.get(raw)  # the common case takes no lock (each dict step is atomic)
    if t is not None:
        with contextlib.suppress(KeyError):  # evicted meanwhile by another thread
            _tables.move_to_end(raw)
        return t
    with _lock:
        t = _tables.get(raw)
        if t is not None:
            return t
        n = _seen.get(raw, 0) + 1
        if n < BUILD_AT or not _building:
            if len(_seen) >= _COUNT_LIMIT:
                _seen.clear()
            _seen[raw] = n
            return None
        _seen.pop(raw, None)
    entry = _group_with_generator(raw)  # outside the lock: about 0.6 ms
    if entry is None:
        return None
    with _lock:
        _tables[raw] = entry
        _stats["built"] += 1
        while len(_tables) > TABLES:
            _tables.popitem(last=False)
            _stats["evicted"] += 1
    return entry


def parse_der_signature(der: bytes) -> tuple[int, int] | None:
    """(r, s) of a canonical DER SM2Signature with r, s in [1, n-1]; None for anything
    else (the caller then asks the strict decoder for the reason)."""
    n = len(der)
    if n < 8 or n > 72 or der[0] != 0x30 or der[1] != n - 2:
        return None
    out = []
    i = 2
    for _ in range(2):
        if i + 2 > n or der[i] != 0x02:
            return None
        ln = der[i + 1]
        i += 2
        if ln < 1 or ln > 33 or i + ln > n:
            return None
        if der[i] & 0x80:
            return None  # negative
        if ln > 1 and der[i] == 0 and not der[i + 1] & 0x80:
            return None  # not minimal
        v = int.from_bytes(der[i : i + ln], "big")
        if not 1 <= v < N:
            return None
        out.append(v)
        i += ln
    if i != n:
        return None
    return out[0], out[1]


def _scratch(st: dict[str, Any]) -> tuple[Any, Any, Any, Any, Any]:
    """This thread's reusable BIGNUMs s, t, points r1, r2 and output buffer (points of
    one curve object serve every curve object here: same field, same method)."""
    sc = getattr(_local, "scratch", None)
    if sc is None:
        L, ffi = _lc.lib(), _lc.ffi
        g = st["g"]
        sc = (
            _lc.bn_from_int(1),
            _lc.bn_from_int(1),
            ffi.gc(L.EC_POINT_new(g), L.EC_POINT_free),
            ffi.gc(L.EC_POINT_new(g), L.EC_POINT_free),
            ffi.new("unsigned char[65]"),
        )
        if ffi.NULL in (sc[2], sc[3]):
            raise _lc.fail("EC_POINT_new")
        _local.scratch = sc
    return sc


def verify(public_raw: bytes, r: int, s: int, e: bytes) -> bool:
    """GB/T 32918.2 §7.1 B5–B7 for a key 04‖x‖y on the curve, r, s in [1, n-1] and the
    32-byte digest e. True when the signature verifies."""
    st = _state if _state.get("ok") else _setup()
    if st is None:
        raise RuntimeError("fixed-base verification is not available")
    t = (r + s) % N
    if t == 0:
        return False
    L = _lc.lib()
    ctx = _ctx()
    s_bn, t_bn, r1, r2, buf = _scratch(st)
    if L.BN_bin2bn(s.to_bytes(SIZE, "big"), SIZE, s_bn) == _lc.ffi.NULL:
        raise _lc.fail("BN_bin2bn")
    if L.BN_bin2bn(t.to_bytes(SIZE, "big"), SIZE, t_bn) == _lc.ffi.NULL:
        raise _lc.fail("BN_bin2bn")
    entry = _table_for(public_raw)
    g = st["g"]
    if entry is None:
        # s·G from the G table, t·P by windowed NAF
        if L.EC_POINT_oct2point(g, r2, public_raw, len(public_raw), ctx) != 1:
            _lc.drain_errors()
            return False
        if L.EC_POINT_mul(g, r1, s_bn, r2, t_bn, ctx) != 1:
            raise _lc.fail("EC_POINT_mul")
        result, group = r1, g
        _stats["generator_only"] += 1  # diagnostics: no lock (a rare lost count is fine)
    else:
        group, gpt = entry
        # s·G and t·P, each from its table (the zero-scalar term only selects the
        # table-driven method; it adds nothing), then added
        if L.EC_POINT_mul(g, r1, s_bn, st["g_point"], st["zero"], ctx) != 1:
            raise _lc.fail("EC_POINT_mul")
        if L.EC_POINT_mul(group, r2, t_bn, gpt, st["zero"], ctx) != 1:
            raise _lc.fail("EC_POINT_mul")
        if L.EC_POINT_add(group, r2, r2, r1, ctx) != 1:
            raise _lc.fail("EC_POINT_add")
        result = r2
        _stats["table"] += 1
    if L.EC_POINT_is_at_infinity(group, result) == 1:
        return False
    if L.EC_POINT_point2oct(group, result, 4, buf, 65, ctx) != 65:  # uncompressed
        raise _lc.fail("EC_POINT_point2oct")
    x1 = int.from_bytes(_lc.ffi.buffer(buf, 33)[1:], "big")
    return (int.from_bytes(e, "big") + x1) % N == r

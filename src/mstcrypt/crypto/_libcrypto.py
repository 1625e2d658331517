"""Binding to the system OpenSSL 3 libcrypto through cffi in ABI mode.

Only this module touches the native library. It is loaded once, lazily, and checked for
the SM2 capabilities mstcrypt needs; when they are missing the import fails with a
:class:`~mstcrypt.errors.BackendError` that names the library that was found.
"""

from __future__ import annotations

import ctypes.util
import os
import threading
from typing import Any

from cffi import FFI

from mstcrypt.errors import BackendError

_CDEF = """
typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_pkey_ctx_st EVP_PKEY_CTX;
typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;
typedef struct ossl_param_st OSSL_PARAM;
typedef struct ossl_param_bld_st OSSL_PARAM_BLD;
typedef struct bignum_st BIGNUM;
typedef struct bignum_ctx BN_CTX;
typedef struct ec_group_st EC_GROUP;
typedef struct ec_point_st EC_POINT;
typedef struct ECDSA_SIG_st ECDSA_SIG;

unsigned long OpenSSL_version_num(void);
int OPENSSL_init_crypto(uint64_t opts, const void *settings);
const char *OpenSSL_version(int type);

unsigned long ERR_get_error(void);
void ERR_error_string_n(unsigned long e, char *buf, size_t len);
void ERR_clear_error(void);

EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_name(OSSL_LIB_CTX *libctx, const char *name,
                                         const char *propquery);
EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_pkey(OSSL_LIB_CTX *libctx, EVP_PKEY *pkey,
                                         const char *propquery);
void EVP_PKEY_CTX_free(EVP_PKEY_CTX *ctx);
int EVP_PKEY_keygen_init(EVP_PKEY_CTX *ctx);
int EVP_PKEY_generate(EVP_PKEY_CTX *ctx, EVP_PKEY **ppkey);
void EVP_PKEY_free(EVP_PKEY *pkey);
int EVP_PKEY_fromdata_init(EVP_PKEY_CTX *ctx);
int EVP_PKEY_fromdata(EVP_PKEY_CTX *ctx, EVP_PKEY **ppkey, int selection, OSSL_PARAM params[]);
int EVP_PKEY_get_bn_param(const EVP_PKEY *pkey, const char *key_name, BIGNUM **bn);
int EVP_PKEY_get_octet_string_param(const EVP_PKEY *pkey, const char *key_name,
                                    unsigned char *buf, size_t max_buf_sz, size_t *out_len);
int EVP_PKEY_sign_init(EVP_PKEY_CTX *ctx);
int EVP_PKEY_sign(EVP_PKEY_CTX *ctx, unsigned char *sig, size_t *siglen,
                  const unsigned char *tbs, size_t tbslen);
int EVP_PKEY_verify_init(EVP_PKEY_CTX *ctx);
int EVP_PKEY_verify(EVP_PKEY_CTX *ctx, const unsigned char *sig, size_t siglen,
                    const unsigned char *tbs, size_t tbslen);
int EVP_PKEY_encrypt_init(EVP_PKEY_CTX *ctx);
int EVP_PKEY_encrypt(EVP_PKEY_CTX *ctx, unsigned char *out, size_t *outlen,
                     const unsigned char *in, size_t inlen);
int EVP_PKEY_decrypt_init(EVP_PKEY_CTX *ctx);
int EVP_PKEY_decrypt(EVP_PKEY_CTX *ctx, unsigned char *out, size_t *outlen,
                     const unsigned char *in, size_t inlen);

OSSL_PARAM_BLD *OSSL_PARAM_BLD_new(void);
void OSSL_PARAM_BLD_free(OSSL_PARAM_BLD *bld);
int OSSL_PARAM_BLD_push_utf8_string(OSSL_PARAM_BLD *bld, const char *key,
                                    const char *buf, size_t bsize);
int OSSL_PARAM_BLD_push_BN(OSSL_PARAM_BLD *bld, const char *key, const BIGNUM *bn);
int OSSL_PARAM_BLD_push_octet_string(OSSL_PARAM_BLD *bld, const char *key,
                                     const void *buf, size_t bsize);
OSSL_PARAM *OSSL_PARAM_BLD_to_param(OSSL_PARAM_BLD *bld);
void OSSL_PARAM_free(OSSL_PARAM *params);

BIGNUM *BN_new(void);
void BN_free(BIGNUM *a);
void BN_clear_free(BIGNUM *a);
BIGNUM *BN_bin2bn(const unsigned char *s, int len, BIGNUM *ret);
int BN_bn2binpad(const BIGNUM *a, unsigned char *to, int tolen);
int BN_num_bits(const BIGNUM *a);
BN_CTX *BN_CTX_new(void);
void BN_CTX_free(BN_CTX *c);

EC_GROUP *EC_GROUP_new_by_curve_name(int nid);
void EC_GROUP_free(EC_GROUP *group);
int EC_GROUP_precompute_mult(EC_GROUP *group, BN_CTX *ctx);
EC_POINT *EC_POINT_new(const EC_GROUP *group);
void EC_POINT_free(EC_POINT *point);
void EC_POINT_clear_free(EC_POINT *point);
int EC_POINT_copy(EC_POINT *dst, const EC_POINT *src);
int EC_POINT_oct2point(const EC_GROUP *group, EC_POINT *p, const unsigned char *buf,
                       size_t len, BN_CTX *ctx);
size_t EC_POINT_point2oct(const EC_GROUP *group, const EC_POINT *p, int form,
                          unsigned char *buf, size_t len, BN_CTX *ctx);
int EC_POINT_mul(const EC_GROUP *group, EC_POINT *r, const BIGNUM *n, const EC_POINT *q,
                 const BIGNUM *m, BN_CTX *ctx);
int EC_POINTs_mul(const EC_GROUP *group, EC_POINT *r, const BIGNUM *n, size_t num,
                  const EC_POINT *p[], const BIGNUM *m[], BN_CTX *ctx);
int EC_POINT_add(const EC_GROUP *group, EC_POINT *r, const EC_POINT *a, const EC_POINT *b,
                 BN_CTX *ctx);
int EC_POINT_invert(const EC_GROUP *group, EC_POINT *a, BN_CTX *ctx);
int EC_POINT_is_on_curve(const EC_GROUP *group, const EC_POINT *point, BN_CTX *ctx);
int EC_POINT_is_at_infinity(const EC_GROUP *group, const EC_POINT *p);
int EC_POINT_cmp(const EC_GROUP *group, const EC_POINT *a, const EC_POINT *b, BN_CTX *ctx);
EC_GROUP *EC_GROUP_new_curve_GFp(const BIGNUM *p, const BIGNUM *a, const BIGNUM *b, BN_CTX *ctx);
int EC_GROUP_set_generator(EC_GROUP *group, const EC_POINT *generator, const BIGNUM *order,
                           const BIGNUM *cofactor);

ECDSA_SIG *ECDSA_SIG_new(void);
void ECDSA_SIG_free(ECDSA_SIG *sig);
ECDSA_SIG *d2i_ECDSA_SIG(ECDSA_SIG **sig, const unsigned char **pp, long len);
int i2d_ECDSA_SIG(const ECDSA_SIG *sig, unsigned char **pp);
void ECDSA_SIG_get0(const ECDSA_SIG *sig, const BIGNUM **pr, const BIGNUM **ps);
int ECDSA_SIG_set0(ECDSA_SIG *sig, BIGNUM *r, BIGNUM *s);
"""

NID_SM2 = 1172
POINT_CONVERSION_COMPRESSED = 2
POINT_CONVERSION_UNCOMPRESSED = 4
EVP_PKEY_KEYPAIR = 0x87  # OSSL_KEYMGMT_SELECT_ALL_PARAMETERS | PRIVATE | PUBLIC
EVP_PKEY_PUBLIC_KEY = 0x86  # ALL_PARAMETERS | PUBLIC

ffi = FFI()
ffi.cdef(_CDEF)

_lock = threading.Lock()
_lib: Any = None


def _candidates() -> list[str]:
    env = os.environ.get("MSTCRYPT_LIBCRYPTO")
    if env:
        return [env]  # an explicit choice is never silently replaced
    names = ["libcrypto.so.3", "libcrypto.3.dylib"]
    found = ctypes.util.find_library("crypto")
    if found:
        names.append(found)
    return names


def _load() -> Any:
    errors: list[str] = []
    for name in _candidates():
        try:
            lib = ffi.dlopen(name)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
            continue
        try:
            version = int(lib.OpenSSL_version_num())
        except AttributeError:
            errors.append(f"{name}: not OpenSSL 3 (no OpenSSL_version_num)")
            continue
        if version < 0x30000000:
            errors.append(f"{name}: OpenSSL {version:#x} is older than 3.0")
            continue
        lib.OPENSSL_init_crypto(0x02, ffi.NULL)  # OPENSSL_INIT_LOAD_CRYPTO_STRINGS
        _check_sm2(lib, name)
        return lib
    raise BackendError(
        "mstcrypt needs the OpenSSL 3 libcrypto shared library with SM2 enabled "
        "(Debian package libssl3); set MSTCRYPT_LIBCRYPTO to its path. Tried: "
        + "; ".join(errors or ["nothing found"])
    )


def _check_sm2(lib: Any, name: str) -> None:
    group = lib.EC_GROUP_new_by_curve_name(NID_SM2)
    if group == ffi.NULL:
        lib.ERR_clear_error()
        raise BackendError(f"{name} was built without the SM2 curve (no-sm2)")
    lib.EC_GROUP_free(group)
    ctx = lib.EVP_PKEY_CTX_new_from_name(ffi.NULL, b"SM2", ffi.NULL)
    if ctx == ffi.NULL:
        lib.ERR_clear_error()
        raise BackendError(f"{name} has no SM2 key management (provider without SM2)")
    lib.EVP_PKEY_CTX_free(ctx)


def lib() -> Any:
    """Return the loaded libcrypto, loading it on first use."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                _lib = _load()
    return _lib


def openssl_version() -> str:
    return str(ffi.string(lib().OpenSSL_version(0)).decode("ascii"))


def drain_errors() -> str:
    """Pop the OpenSSL error queue and return the first reason (no secrets there)."""
    L = lib()
    first = ""
    buf = ffi.new("char[]", 256)
    while True:
        code = L.ERR_get_error()
        if code == 0:
            return first
        if not first:
            L.ERR_error_string_n(code, buf, 256)
            first = ffi.string(buf).decode("ascii", "replace")


def fail(what: str) -> BackendError:
    reason = drain_errors()
    return BackendError(f"libcrypto: {what} failed" + (f" ({reason})" if reason else ""))


def pkey_fromdata(key_type: bytes, params: Any, *, keypair: bool) -> Any:
    """An EVP_PKEY of ``key_type`` (b"SM2", b"EC") from an OSSL_PARAM array, which is
    freed here; the private key is included when ``keypair``."""
    L = lib()
    try:
        ctx = L.EVP_PKEY_CTX_new_from_name(ffi.NULL, key_type, ffi.NULL)
        if ctx == ffi.NULL:
            raise fail(f"EVP_PKEY_CTX_new_from_name({key_type.decode()})")
        ctx = ffi.gc(ctx, L.EVP_PKEY_CTX_free)
        if L.EVP_PKEY_fromdata_init(ctx) != 1:
            raise fail("EVP_PKEY_fromdata_init")
        out = ffi.new("EVP_PKEY **")
        selection = EVP_PKEY_KEYPAIR if keypair else EVP_PKEY_PUBLIC_KEY
        if L.EVP_PKEY_fromdata(ctx, out, selection, params) != 1:
            raise fail("EVP_PKEY_fromdata")
        return ffi.gc(out[0], L.EVP_PKEY_free)
    finally:
        L.OSSL_PARAM_free(params)


def bn_from_int(value: int) -> Any:
    """A new BIGNUM (garbage collected with BN_clear_free) holding a non-negative int."""
    L = lib()
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    bn = L.BN_bin2bn(raw, len(raw), ffi.NULL)
    if bn == ffi.NULL:
        raise fail("BN_bin2bn")
    return ffi.gc(bn, L.BN_clear_free)


def bn_to_int(bn: Any) -> int:
    L = lib()
    n = (L.BN_num_bits(bn) + 7) // 8
    buf = ffi.new("unsigned char[]", max(n, 1))
    if L.BN_bn2binpad(bn, buf, max(n, 1)) < 0:
        raise fail("BN_bn2binpad")
    return int.from_bytes(ffi.buffer(buf, max(n, 1))[:], "big")

"""Primitives: SM2 (sm2, sm2_kex), SM3 (sm3), SM4 (sm4), ZUC (zuc), randomness.

SM3/HMAC/PBKDF2 and SM4 come from pyca/cryptography; SM2 from OpenSSL 3 libcrypto via
cffi; ZUC from our own C core (cffi API mode, built at install time) with a pure-Python
fallback behind the same interface. Low-level curve arithmetic is in
:mod:`mstcrypt.crypto.hazmat.ec`.
"""

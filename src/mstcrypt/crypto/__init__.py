"""Primitives: SM2 (sm2, sm2_kex), SM3 (sm3), SM4 (sm4), ZUC (zuc), randomness.

SM3/HMAC/PBKDF2 and SM4 come from pyca/cryptography; SM2 from OpenSSL 3 libcrypto via
cffi; ZUC is a pure-Python implementation behind a stable interface. Low-level curve
arithmetic is in :mod:`mstcrypt.crypto.hazmat.ec`.
"""

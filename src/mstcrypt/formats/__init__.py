"""ASN.1 and byte formats: GM/T 0009 SM2Signature/SM2Cipher, GB/T 35276
SM2EnvelopedKey, PKCS#8 / SubjectPublicKeyInfo / PEM for SM2 keys.

Every parser is strict: exact lengths, canonical DER (re-encoding must give the same
bytes), no trailing bytes, integers in range, points on the curve. Failures raise
:class:`mstcrypt.errors.DecodeError` (or a subclass).
"""

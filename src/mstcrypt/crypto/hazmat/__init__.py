"""Low-level ("hazardous materials") primitives.

Use these only to build protocols that the recipes in :mod:`mstcrypt.crypto` do not
cover (SM2 key exchange variants, two-party signing). Every input is validated, but the
caller is responsible for the protocol's security.
"""

"""WLAN access (guide 6.3): WAPI between terminals (ASUE) and access points (AE) through
an authentication server (ASU) that trusts the platform CA and its CRL."""

from mstcrypt.apps.wapi.trust import PlatformValidator, verify_result_for

__all__ = ["PlatformValidator", "verify_result_for"]

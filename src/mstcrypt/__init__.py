"""mstcrypt: the cryptographic applications of T/ZSA 37-2020 on SM2, SM3, SM4 and ZUC."""

from __future__ import annotations

__version__ = "0.1.0"

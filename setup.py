"""Build hook only: the metadata lives in pyproject.toml.

``cffi_modules`` compiles the native ZUC core (csrc/) into ``mstcrypt.crypto._zuc_native``.
The extension is marked optional, so without a C compiler the install still succeeds and
``mstcrypt.crypto.zuc`` uses its pure-Python backend.
"""

from setuptools import setup

setup(cffi_modules=["csrc/build_zuc.py:ffibuilder"])

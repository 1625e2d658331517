"""cffi (API mode) builder of ``mstcrypt.crypto._zuc_native``: the ZUC-128 / 128-EEA3 /
128-EIA3 core in ``csrc/mst_zuc.c``. Used by ``setup.py`` through ``cffi_modules``; the
extension is optional, so a machine without a C compiler installs the pure-Python fallback.
"""

from __future__ import annotations

import pathlib
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

ffibuilder = FFI()
ffibuilder.cdef(
    """
    typedef struct { uint32_t s[16]; uint32_t r1, r2; } mst_zuc_state;
    void mst_zuc_init(mst_zuc_state *st, const uint8_t *key, const uint8_t *iv);
    void mst_zuc_words(mst_zuc_state *st, uint32_t *out, size_t n);
    void mst_zuc_keystream(mst_zuc_state *st, uint8_t *out, size_t nwords);
    void mst_zuc_eea3(const uint8_t *key, uint32_t count, uint32_t bearer, uint32_t direction,
                      const uint8_t *in, uint8_t *out, uint64_t length_bits);
    uint32_t mst_zuc_eia3(const uint8_t *key, uint32_t count, uint32_t bearer,
                          uint32_t direction, const uint8_t *msg, uint64_t length_bits);
    int mst_zuc_eia3_clmul(void);
    extern int mst_zuc_force_portable;
    """
)

# Paths relative to the project root (where setup.py runs), as setuptools requires.
_csrc = HERE.relative_to(ROOT).as_posix() if HERE.is_relative_to(ROOT) else str(HERE)
ffibuilder.set_source(
    "mstcrypt.crypto._zuc_native",
    '#include "mst_zuc.h"',
    sources=[f"{_csrc}/mst_zuc.c"],
    include_dirs=[_csrc],
    depends=[f"{_csrc}/mst_zuc.h"],
    extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
    # a failed compile (no compiler, no Python headers) leaves the pure-Python backend
    optional=True,
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(ROOT / "build" / "cffi"), verbose=True)

/* ZUC-128 keystream generator, 128-EEA3 and 128-EIA3 (GB/T 33133, 3GPP 35.221/35.222).
 * Part of mstcrypt; compiled into mstcrypt.crypto._zuc_native through cffi (API mode). */
#ifndef MST_ZUC_H
#define MST_ZUC_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t s[16]; /* LFSR cells s0..s15, 31 bits each, never 0 */
    uint32_t r1, r2; /* the finite state machine registers */
} mst_zuc_state;

void mst_zuc_init(mst_zuc_state *st, const uint8_t *key, const uint8_t *iv);
void mst_zuc_words(mst_zuc_state *st, uint32_t *out, size_t n);
void mst_zuc_keystream(mst_zuc_state *st, uint8_t *out, size_t nwords);
void mst_zuc_eea3(const uint8_t *key, uint32_t count, uint32_t bearer, uint32_t direction,
                  const uint8_t *in, uint8_t *out, uint64_t length_bits);
uint32_t mst_zuc_eia3(const uint8_t *key, uint32_t count, uint32_t bearer, uint32_t direction,
                      const uint8_t *msg, uint64_t length_bits);
/* 1 if mst_zuc_eia3 uses carry-less multiplication (x86 PCLMULQDQ) on this CPU. */
int mst_zuc_eia3_clmul(void);
/* Set non-zero to force the portable EIA3 (differential tests). */
extern int mst_zuc_force_portable;

#endif

/* ZUC-128 keystream generator with 128-EEA3 and 128-EIA3, written for mstcrypt from
 *   GB/T 33133.1-2016 (= GM/T 0001.1, = ETSI/SAGE "128-EEA3 & 128-EIA3, Document 2: ZUC
 *   specification" v1.6) for the generator and
 *   GB/T 33133.2 / 33133.3 (= 3GPP "Document 1: 128-EEA3 and 128-EIA3 specification") for
 *   the confidentiality and integrity algorithms.
 *
 * Implementation notes
 * - The LFSR is a ring of 16 cells: in round b (0..15) the spec's cell s_j is s[(b + j) & 15]
 *   and the new s_16 overwrites the old s_0 at s[b]. Sixteen rounds are written out with
 *   constant b, so the cells stay in fixed places and nothing is shifted; a run that stops
 *   after k < 16 rounds rotates the ring once to put s_0 back at s[0].
 * - The feedback sum 2^15 s15 + 2^17 s13 + 2^21 s10 + 2^20 s4 + (1 + 2^8) s0 (+ u) is formed
 *   in 64 bits and reduced mod 2^31 - 1 by folding the high bits twice, which lands in
 *   [1, 2^31 - 1] with 2^31 - 1 standing for zero, as the spec requires.
 * - The S-boxes are 256-byte tables indexed by state bytes, as in every table-based ZUC (their
 *   512 bytes stay in L1 cache); nothing branches on secret data.
 * - EIA3 uses carry-less multiplication (PCLMULQDQ, detected at run time on x86) to fold 64
 *   message bits per step, or a branch-free word-at-a-time loop elsewhere.
 * - EEA3 and EIA3 wipe their key-dependent state and keystream buffers before returning.
 */
#include "mst_zuc.h"

#include <string.h>

/* Table 3.1: S-box S0 (row = high nibble). */
static const uint8_t S0[256] = {
    0x3e, 0x72, 0x5b, 0x47, 0xca, 0xe0, 0x00, 0x33, 0x04, 0xd1, 0x54, 0x98, 0x09, 0xb9, 0x6d, 0xcb,
    0x7b, 0x1b, 0xf9, 0x32, 0xaf, 0x9d, 0x6a, 0xa5, 0xb8, 0x2d, 0xfc, 0x1d, 0x08, 0x53, 0x03, 0x90,
    0x4d, 0x4e, 0x84, 0x99, 0xe4, 0xce, 0xd9, 0x91, 0xdd, 0xb6, 0x85, 0x48, 0x8b, 0x29, 0x6e, 0xac,
    0xcd, 0xc1, 0xf8, 0x1e, 0x73, 0x43, 0x69, 0xc6, 0xb5, 0xbd, 0xfd, 0x39, 0x63, 0x20, 0xd4, 0x38,
    0x76, 0x7d, 0xb2, 0xa7, 0xcf, 0xed, 0x57, 0xc5, 0xf3, 0x2c, 0xbb, 0x14, 0x21, 0x06, 0x55, 0x9b,
    0xe3, 0xef, 0x5e, 0x31, 0x4f, 0x7f, 0x5a, 0xa4, 0x0d, 0x82, 0x51, 0x49, 0x5f, 0xba, 0x58, 0x1c,
    0x4a, 0x16, 0xd5, 0x17, 0xa8, 0x92, 0x24, 0x1f, 0x8c, 0xff, 0xd8, 0xae, 0x2e, 0x01, 0xd3, 0xad,
    0x3b, 0x4b, 0xda, 0x46, 0xeb, 0xc9, 0xde, 0x9a, 0x8f, 0x87, 0xd7, 0x3a, 0x80, 0x6f, 0x2f, 0xc8,
    0xb1, 0xb4, 0x37, 0xf7, 0x0a, 0x22, 0x13, 0x28, 0x7c, 0xcc, 0x3c, 0x89, 0xc7, 0xc3, 0x96, 0x56,
    0x07, 0xbf, 0x7e, 0xf0, 0x0b, 0x2b, 0x97, 0x52, 0x35, 0x41, 0x79, 0x61, 0xa6, 0x4c, 0x10, 0xfe,
    0xbc, 0x26, 0x95, 0x88, 0x8a, 0xb0, 0xa3, 0xfb, 0xc0, 0x18, 0x94, 0xf2, 0xe1, 0xe5, 0xe9, 0x5d,
    0xd0, 0xdc, 0x11, 0x66, 0x64, 0x5c, 0xec, 0x59, 0x42, 0x75, 0x12, 0xf5, 0x74, 0x9c, 0xaa, 0x23,
    0x0e, 0x86, 0xab, 0xbe, 0x2a, 0x02, 0xe7, 0x67, 0xe6, 0x44, 0xa2, 0x6c, 0xc2, 0x93, 0x9f, 0xf1,
    0xf6, 0xfa, 0x36, 0xd2, 0x50, 0x68, 0x9e, 0x62, 0x71, 0x15, 0x3d, 0xd6, 0x40, 0xc4, 0xe2, 0x0f,
    0x8e, 0x83, 0x77, 0x6b, 0x25, 0x05, 0x3f, 0x0c, 0x30, 0xea, 0x70, 0xb7, 0xa1, 0xe8, 0xa9, 0x65,
    0x8d, 0x27, 0x1a, 0xdb, 0x81, 0xb3, 0xa0, 0xf4, 0x45, 0x7a, 0x19, 0xdf, 0xee, 0x78, 0x34, 0x60,
};

/* Table 3.2: S-box S1. */
static const uint8_t S1[256] = {
    0x55, 0xc2, 0x63, 0x71, 0x3b, 0xc8, 0x47, 0x86, 0x9f, 0x3c, 0xda, 0x5b, 0x29, 0xaa, 0xfd, 0x77,
    0x8c, 0xc5, 0x94, 0x0c, 0xa6, 0x1a, 0x13, 0x00, 0xe3, 0xa8, 0x16, 0x72, 0x40, 0xf9, 0xf8, 0x42,
    0x44, 0x26, 0x68, 0x96, 0x81, 0xd9, 0x45, 0x3e, 0x10, 0x76, 0xc6, 0xa7, 0x8b, 0x39, 0x43, 0xe1,
    0x3a, 0xb5, 0x56, 0x2a, 0xc0, 0x6d, 0xb3, 0x05, 0x22, 0x66, 0xbf, 0xdc, 0x0b, 0xfa, 0x62, 0x48,
    0xdd, 0x20, 0x11, 0x06, 0x36, 0xc9, 0xc1, 0xcf, 0xf6, 0x27, 0x52, 0xbb, 0x69, 0xf5, 0xd4, 0x87,
    0x7f, 0x84, 0x4c, 0xd2, 0x9c, 0x57, 0xa4, 0xbc, 0x4f, 0x9a, 0xdf, 0xfe, 0xd6, 0x8d, 0x7a, 0xeb,
    0x2b, 0x53, 0xd8, 0x5c, 0xa1, 0x14, 0x17, 0xfb, 0x23, 0xd5, 0x7d, 0x30, 0x67, 0x73, 0x08, 0x09,
    0xee, 0xb7, 0x70, 0x3f, 0x61, 0xb2, 0x19, 0x8e, 0x4e, 0xe5, 0x4b, 0x93, 0x8f, 0x5d, 0xdb, 0xa9,
    0xad, 0xf1, 0xae, 0x2e, 0xcb, 0x0d, 0xfc, 0xf4, 0x2d, 0x46, 0x6e, 0x1d, 0x97, 0xe8, 0xd1, 0xe9,
    0x4d, 0x37, 0xa5, 0x75, 0x5e, 0x83, 0x9e, 0xab, 0x82, 0x9d, 0xb9, 0x1c, 0xe0, 0xcd, 0x49, 0x89,
    0x01, 0xb6, 0xbd, 0x58, 0x24, 0xa2, 0x5f, 0x38, 0x78, 0x99, 0x15, 0x90, 0x50, 0xb8, 0x95, 0xe4,
    0xd0, 0x91, 0xc7, 0xce, 0xed, 0x0f, 0xb4, 0x6f, 0xa0, 0xcc, 0xf0, 0x02, 0x4a, 0x79, 0xc3, 0xde,
    0xa3, 0xef, 0xea, 0x51, 0xe6, 0x6b, 0x18, 0xec, 0x1b, 0x2c, 0x80, 0xf7, 0x74, 0xe7, 0xff, 0x21,
    0x5a, 0x6a, 0x54, 0x1e, 0x41, 0x31, 0x92, 0x35, 0xc4, 0x33, 0x07, 0x0a, 0xba, 0x7e, 0x0e, 0x34,
    0x88, 0xb1, 0x98, 0x7c, 0xf3, 0x3d, 0x60, 0x6c, 0x7b, 0xca, 0xd3, 0x1f, 0x32, 0x65, 0x04, 0x28,
    0x64, 0xbe, 0x85, 0x9b, 0x2f, 0x59, 0x8a, 0xd7, 0xb0, 0x25, 0xac, 0xaf, 0x12, 0x03, 0xe2, 0xf2,
};

/* Section 3.5: the 15-bit key-loading constants d_0..d_15. */
static const uint32_t KD[16] = {
    0x44D7, 0x26BC, 0x626B, 0x135E, 0x5789, 0x35E2, 0x7135, 0x09AF,
    0x4D78, 0x2F13, 0x6BC4, 0x1AF1, 0x5E26, 0x3C4D, 0x789A, 0x47AC,
};

/* Non-zero: use the portable EIA3 even where PCLMULQDQ is available (tests). */
int mst_zuc_force_portable = 0;

#define P31 0x7FFFFFFFu
#define ROTL32(x, k) (((x) << (k)) | ((x) >> (32 - (k))))

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Clear secrets; the empty asm with a memory clobber keeps the compiler from dropping it. */
static void wipe(void *p, size_t n)
{
#if defined(__GNUC__) || defined(__clang__)
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#else
    volatile uint8_t *q = (volatile uint8_t *)p;
    while (n--)
        *q++ = 0;
#endif
}

/* S = (S0, S1, S0, S1) on the four bytes, most significant first (3.4.1). */
static inline uint32_t sbox(uint32_t x)
{
    return ((uint32_t)S0[x >> 24] << 24) | ((uint32_t)S1[(x >> 16) & 0xFF] << 16)
         | ((uint32_t)S0[(x >> 8) & 0xFF] << 8) | (uint32_t)S1[x & 0xFF];
}

/* The linear transforms L1 and L2 (3.4.2). */
static inline uint32_t l1(uint32_t x)
{
    return x ^ ROTL32(x, 2) ^ ROTL32(x, 10) ^ ROTL32(x, 18) ^ ROTL32(x, 24);
}

static inline uint32_t l2(uint32_t x)
{
    return x ^ ROTL32(x, 8) ^ ROTL32(x, 14) ^ ROTL32(x, 22) ^ ROTL32(x, 30);
}

/* LFSRWithInitialisationMode(u) / LFSRWithWorkMode (u = 0): the new cell s_16 (3.2). */
static inline uint32_t feedback(uint32_t s0, uint32_t s4, uint32_t s10, uint32_t s13,
                                uint32_t s15, uint32_t u)
{
    uint64_t v = ((uint64_t)s15 << 15) + ((uint64_t)s13 << 17) + ((uint64_t)s10 << 21)
               + ((uint64_t)s4 << 20) + ((uint64_t)s0 << 8) + s0 + u;
    v = (v & P31) + (v >> 31); /* < 2^31 + 2^22 */
    v = (v & P31) + (v >> 31); /* in [1, 2^31 - 1]: v > 0 since every cell is */
    return (uint32_t)v;
}

#define CELL(b, j) s[((b) + (j)) & 15]

/* Bit reorganisation (3.3) and the nonlinear function F (3.4): W = F(X0, X1, X2). */
#define FSM(b, W)                                                                         \
    do {                                                                                  \
        uint32_t x0_ = ((CELL(b, 15) & 0x7FFF8000u) << 1) | (CELL(b, 14) & 0xFFFFu);      \
        uint32_t w1_ = r1 + ((CELL(b, 11) << 16) | (CELL(b, 9) >> 15));                   \
        uint32_t w2_ = r2 ^ ((CELL(b, 7) << 16) | (CELL(b, 5) >> 15));                    \
        (W) = (x0_ ^ r1) + r2;                                                            \
        r1 = sbox(l1((w1_ << 16) | (w2_ >> 16)));                                         \
        r2 = sbox(l2((w2_ << 16) | (w1_ >> 16)));                                         \
    } while (0)

#define LFSR(b, u)                                                                        \
    (CELL(b, 0) = feedback(CELL(b, 0), CELL(b, 4), CELL(b, 10), CELL(b, 13), CELL(b, 15), \
                           (u)))

/* One working-stage round: key-word Z = F(X0, X1, X2) ^ X3, then LFSRWithWorkMode. */
#define WORK(b, Z)                                                                        \
    do {                                                                                  \
        uint32_t w_;                                                                      \
        FSM(b, w_);                                                                       \
        (Z) = w_ ^ ((CELL(b, 2) << 16) | (CELL(b, 0) >> 15));                             \
        LFSR(b, 0);                                                                       \
    } while (0)

#define INIT(b)                                                                           \
    do {                                                                                  \
        uint32_t w_;                                                                      \
        FSM(b, w_);                                                                       \
        LFSR(b, w_ >> 1);                                                                 \
    } while (0)

/* Put s_0 back at s[0] after k (mod 16) rounds. */
static inline void rotate(uint32_t *s, size_t k)
{
    uint32_t t[16];
    for (size_t j = 0; j < 16; j++)
        t[j] = s[(j + k) & 15];
    memcpy(s, t, sizeof(t));
    wipe(t, sizeof(t));
}

/* n key-words into out[], continuing the state (s, r1, r2). */
static inline void generate(uint32_t *restrict s, uint32_t *restrict r1p, uint32_t *restrict r2p,
                            uint32_t *restrict out, size_t n)
{
    uint32_t r1 = *r1p, r2 = *r2p;
    for (; n >= 16; n -= 16, out += 16) {
        WORK(0, out[0]);   WORK(1, out[1]);   WORK(2, out[2]);   WORK(3, out[3]);
        WORK(4, out[4]);   WORK(5, out[5]);   WORK(6, out[6]);   WORK(7, out[7]);
        WORK(8, out[8]);   WORK(9, out[9]);   WORK(10, out[10]); WORK(11, out[11]);
        WORK(12, out[12]); WORK(13, out[13]); WORK(14, out[14]); WORK(15, out[15]);
    }
    if (n) {
        for (size_t b = 0; b < n; b++)
            WORK(b, out[b]);
        rotate(s, n);
    }
    *r1p = r1;
    *r2p = r2;
}

void mst_zuc_init(mst_zuc_state *st, const uint8_t *key, const uint8_t *iv)
{
    uint32_t s[16];
    uint32_t r1 = 0, r2 = 0, discard;
    /* Key loading (3.5): s_i = k_i || d_i || iv_i. */
    for (int i = 0; i < 16; i++)
        s[i] = ((uint32_t)key[i] << 23) | (KD[i] << 8) | iv[i];
    /* Initialisation stage (3.6.1): 32 rounds feeding W >> 1 back into the LFSR. */
    for (int half = 0; half < 2; half++) {
        INIT(0);  INIT(1);  INIT(2);  INIT(3);  INIT(4);  INIT(5);  INIT(6);  INIT(7);
        INIT(8);  INIT(9);  INIT(10); INIT(11); INIT(12); INIT(13); INIT(14); INIT(15);
    }
    /* First working-stage round (3.6.2): F's output is discarded. */
    WORK(0, discard);
    (void)discard;
    rotate(s, 1);
    memcpy(st->s, s, sizeof(s));
    st->r1 = r1;
    st->r2 = r2;
    wipe(s, sizeof(s));
}

void mst_zuc_words(mst_zuc_state *st, uint32_t *out, size_t n)
{
    generate(st->s, &st->r1, &st->r2, out, n);
}

void mst_zuc_keystream(mst_zuc_state *st, uint8_t *out, size_t nwords)
{
    uint32_t z[16];
    while (nwords) {
        size_t n = nwords < 16 ? nwords : 16;
        generate(st->s, &st->r1, &st->r2, z, n);
        for (size_t i = 0; i < n; i++)
            store_be32(out + 4 * i, z[i]);
        out += 4 * n;
        nwords -= n;
    }
    wipe(z, sizeof(z));
}

void mst_zuc_eea3(const uint8_t *key, uint32_t count, uint32_t bearer, uint32_t direction,
                  const uint8_t *in, uint8_t *out, uint64_t length_bits)
{
    /* IV = COUNT || BEARER || DIRECTION || 0...0, twice (GB/T 33133.2, 3GPP Doc 1 3.3). */
    uint8_t iv[16] = {0};
    mst_zuc_state st;
    uint32_t z[16];
    size_t nbytes = (size_t)((length_bits + 7) >> 3);

    store_be32(iv, count);
    iv[4] = (uint8_t)(((bearer & 0x1F) << 3) | ((direction & 1) << 2));
    memcpy(iv + 8, iv, 8);
    mst_zuc_init(&st, key, iv);

    for (; nbytes >= 64; nbytes -= 64, in += 64, out += 64) {
        generate(st.s, &st.r1, &st.r2, z, 16);
        for (size_t i = 0; i < 16; i++)
            store_be32(out + 4 * i, load_be32(in + 4 * i) ^ z[i]);
    }
    if (nbytes) {
        generate(st.s, &st.r1, &st.r2, z, (nbytes + 3) >> 2);
        for (size_t i = 0; i < nbytes; i++)
            out[i] = in[i] ^ (uint8_t)(z[i >> 2] >> (24 - 8 * (i & 3)));
        out += nbytes;
    }
    if (length_bits & 7) /* bits past LENGTH are zero; out is one past the last byte */
        out[-1] &= (uint8_t)(0xFF << (8 - (length_bits & 7)));
    wipe(&st, sizeof(st));
    wipe(z, sizeof(z));
}

/* XOR of the 32-bit keystream windows z_{32j+i} (i = 0..31) selected by the bits of the
 * message word m, most significant first; k = k_j || k_{j+1}. */
static inline uint32_t mac_word(uint32_t m, uint64_t k)
{
    uint32_t t = 0;
    for (int i = 0; i < 32; i++)
        t ^= (uint32_t)(k >> (32 - i)) & ((uint32_t)0 - ((m >> (31 - i)) & 1));
    return t;
}

/* 128-EIA3, portable: one message word at a time against the 64-bit window k_j || k_{j+1}. */
static uint32_t eia3_words(mst_zuc_state *st, const uint8_t *msg, uint64_t length_bits)
{
    uint32_t k[17], t = 0, zl = 0, tail = (uint32_t)(length_bits & 31);
    size_t nw = (size_t)((length_bits + 31) >> 5); /* message words, the last maybe partial */
    size_t j = 0;

    generate(st->s, &st->r1, &st->r2, k, 1); /* k[0] is always key-word j */
    while (j < nw) {
        size_t cnt = nw - j < 16 ? nw - j : 16;
        generate(st->s, &st->r1, &st->r2, k + 1, cnt);
        for (size_t i = 0; i < cnt; i++, j++) {
            uint64_t win = ((uint64_t)k[i] << 32) | k[i + 1];
            uint32_t m;
            if (j + 1 < nw || tail == 0) {
                m = load_be32(msg + 4 * j);
            } else { /* last word, LENGTH not a multiple of 32 */
                uint8_t pad[4] = {0};
                memcpy(pad, msg + 4 * j, (tail + 7) >> 3);
                m = load_be32(pad) & ~(0xFFFFFFFFu >> tail);
                zl = (uint32_t)(win >> (32 - tail)); /* z_LENGTH */
            }
            t ^= mac_word(m, win);
        }
        k[0] = k[cnt];
    }
    if (tail == 0)
        zl = k[0]; /* z_LENGTH = k_{LENGTH/32} */
    t ^= zl;
    generate(st->s, &st->r1, &st->r2, k + 1, 1);
    t ^= k[1]; /* z_{32(L-1)} = k_{nw+1} */
    wipe(k, sizeof(k));
    return t;
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MST_ZUC_CLMUL 1
#include <emmintrin.h>
#include <wmmintrin.h>

static inline uint64_t rev64(uint64_t x)
{
    x = ((x >> 1) & 0x5555555555555555ULL) | ((x & 0x5555555555555555ULL) << 1);
    x = ((x >> 2) & 0x3333333333333333ULL) | ((x & 0x3333333333333333ULL) << 2);
    x = ((x >> 4) & 0x0F0F0F0F0F0F0F0FULL) | ((x & 0x0F0F0F0F0F0F0F0FULL) << 4);
    return __builtin_bswap64(x);
}

/* 128-EIA3 with carry-less multiplication, 64 message bits at a time.
 *
 * With m_i the message bits and k_t the keystream bits (both in stream order), bit j of
 * the 32-bit word XOR_{i : m_i = 1} z_i (counted from the most significant, j = 0..31) is
 * sum_i m_i k_{i+j}: a correlation. For one 64-bit chunk loaded big-endian, the register
 * as a polynomial over GF(2) is M(x) = sum_i m_i x^(63-i); with the keystream from the same
 * offset bit-reversed into K(x) = sum_t k_t x^t (t < 96), the coefficient of x^(63+j) in
 * M(x) K(x) is exactly sum_i m_i k_{i+j}. K is split into K_lo (t < 64) and K_hi (64 <= t
 * < 96); the products are linear, so they are XORed over all chunks and the 32 wanted
 * coefficients extracted once. The result has bit j at position j, so it is reversed into
 * the spec's bit order at the end. */
__attribute__((target("pclmul,sse2"))) static uint32_t eia3_clmul(mst_zuc_state *st,
                                                                   const uint8_t *msg,
                                                                   uint64_t length_bits)
{
    uint32_t w[20]; /* key-words base .. base + 2 cnt (+1) */
    __m128i acc_lo = _mm_setzero_si128(), acc_hi = _mm_setzero_si128();
    size_t nch = (size_t)((length_bits + 63) >> 6); /* 64-bit chunks, the last maybe partial */
    size_t nw = (size_t)((length_bits + 31) >> 5);
    size_t done = 0, base = 0, cnt = 0, j;
    uint32_t b = (uint32_t)(length_bits & 31), zl, t;
    uint64_t lo, hi;

    generate(st->s, &st->r1, &st->r2, w, 1);
    while (done < nch) {
        if (cnt) { /* carry the last word of the previous group */
            w[0] = w[2 * cnt];
            base += 2 * cnt;
        }
        cnt = nch - done < 8 ? nch - done : 8;
        generate(st->s, &st->r1, &st->r2, w + 1, 2 * cnt);
        for (size_t i = 0; i < cnt; i++, done++) {
            uint64_t m, bits = length_bits - 64 * (uint64_t)done;
            if (bits >= 64) {
                m = ((uint64_t)load_be32(msg + 8 * done) << 32) | load_be32(msg + 8 * done + 4);
            } else { /* last chunk: zero-pad and drop the bits past LENGTH */
                uint8_t pad[8] = {0};
                memcpy(pad, msg + 8 * done, (size_t)((bits + 7) >> 3));
                m = ((uint64_t)load_be32(pad) << 32) | load_be32(pad + 4);
                m &= ~0ULL << (64 - bits);
            }
            __m128i mv = _mm_cvtsi64_si128((long long)m);
            __m128i klo = _mm_cvtsi64_si128(
                (long long)rev64(((uint64_t)w[2 * i] << 32) | w[2 * i + 1]));
            __m128i khi = _mm_cvtsi64_si128((long long)rev64((uint64_t)w[2 * i + 2] << 32));
            acc_lo = _mm_xor_si128(acc_lo, _mm_clmulepi64_si128(mv, klo, 0x00));
            acc_hi = _mm_xor_si128(acc_hi, _mm_clmulepi64_si128(mv, khi, 0x00));
        }
    }
    /* coefficients 63..94 of acc_lo + x^64 acc_hi */
    lo = (uint64_t)_mm_cvtsi128_si64(acc_lo);
    hi = (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(acc_lo, acc_lo));
    t = (uint32_t)((lo >> 63) | (hi << 1)) ^ (uint32_t)((uint64_t)_mm_cvtsi128_si64(acc_hi) << 1);
    t = (uint32_t)(rev64(t) >> 32);

    /* w[0 .. 2 cnt] hold key-words base .. base + 2 cnt = 2 nch; one more reaches nw + 1. */
    generate(st->s, &st->r1, &st->r2, w + 2 * cnt + 1, 1);
    j = (size_t)(length_bits >> 5);
    zl = b ? (w[j - base] << b) | (w[j + 1 - base] >> (32 - b)) : w[j - base]; /* z_LENGTH */
    t ^= zl ^ w[nw + 1 - base]; /* z_{32(L-1)} = k_{nw+1} */
    wipe(w, sizeof(w));
    return t;
}

static int have_clmul(void)
{
    static int cached = -1; /* a racing first call computes the same value */
    if (cached < 0)
        cached = __builtin_cpu_supports("pclmul") ? 1 : 0;
    return cached;
}
#endif

uint32_t mst_zuc_eia3(const uint8_t *key, uint32_t count, uint32_t bearer, uint32_t direction,
                      const uint8_t *msg, uint64_t length_bits)
{
    /* IV of GB/T 33133.3 / 3GPP Doc 1 4.3. */
    uint8_t iv[16] = {0};
    mst_zuc_state st;
    uint32_t t;

    store_be32(iv, count);
    iv[4] = (uint8_t)((bearer & 0x1F) << 3);
    memcpy(iv + 8, iv, 8);
    iv[8] ^= (uint8_t)((direction & 1) << 7);
    iv[14] ^= (uint8_t)((direction & 1) << 7);
    mst_zuc_init(&st, key, iv);
#ifdef MST_ZUC_CLMUL
    if (have_clmul() && !mst_zuc_force_portable)
        t = eia3_clmul(&st, msg, length_bits);
    else
#endif
        t = eia3_words(&st, msg, length_bits);
    wipe(&st, sizeof(st));
    return t;
}

int mst_zuc_eia3_clmul(void)
{
#ifdef MST_ZUC_CLMUL
    return have_clmul() && !mst_zuc_force_portable;
#else
    return 0;
#endif
}

/* speedref: an independent measurement of libcrypto for bench/check_speed.py.
 *
 * It repeats what `openssl speed` times, with its own loop and clock, so the reference
 * figures that `mstcrypt speed` takes from `openssl speed` (or Tongsuo's) can be checked:
 *
 *   speedref cipher NAME SIZE SECONDS   EVP_EncryptUpdate of SIZE bytes on one context
 *                                       initialised once              (= speed -evp NAME)
 *   speedref aead NAME SIZE SECONDS     per message: key and 12-byte IV set again, 13 bytes
 *                                       of AAD, the data, the final block and tag
 *                                                                 (= speed -aead -evp NAME)
 *   speedref digest NAME SIZE SECONDS   EVP_Digest of SIZE bytes      (= speed -evp NAME)
 *   speedref sm2 sign|verify|encrypt|decrypt SECONDS
 *                                       SM2 with SM3 and the default ID; 32-byte messages
 *
 * Each test runs until it has used SECONDS of CPU time (CLOCK_PROCESS_CPUTIME_ID; at most
 * 5 x SECONDS of wall time) and prints one line:
 *   <ops per CPU-second> <bytes per CPU-second> <CPU seconds> <wall seconds>
 * Build: cc -O2 -o speedref speedref.c -lcrypto
 */
#include <openssl/evp.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double clock_of(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "speedref: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

typedef int (*op_fn)(void *arg);

static void run(op_fn op, void *arg, size_t size, double seconds)
{
    unsigned long long n = 0, batch = 1;
    double cpu0, wall0, cpu, wall;
    if (!op(arg)) /* warm-up */
        die("operation");
    cpu0 = clock_of(CLOCK_PROCESS_CPUTIME_ID);
    wall0 = clock_of(CLOCK_MONOTONIC);
    for (;;) {
        for (unsigned long long i = 0; i < batch; i++)
            if (!op(arg))
                die("operation");
        n += batch;
        cpu = clock_of(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
        wall = clock_of(CLOCK_MONOTONIC) - wall0;
        if (cpu >= seconds || wall >= 5 * seconds)
            break;
        if (cpu < seconds / 64 && batch < (1ULL << 20))
            batch *= 2;
    }
    printf("%.3f %.1f %.4f %.4f\n", (double)n / cpu, (double)n * (double)size / cpu, cpu, wall);
}

struct sym {
    EVP_CIPHER_CTX *ctx;
    const EVP_MD *md;
    unsigned char *in, *out, iv[32], key[64];
    size_t size;
};

static int op_cipher(void *a)
{
    struct sym *s = a;
    int outl;
    return EVP_EncryptUpdate(s->ctx, s->out, &outl, s->in, (int)s->size);
}

/* One message as `speed -aead` does it: IV length, key and IV, AAD, data, final (tag). */
static int op_aead(void *a)
{
    static const unsigned char aad[13] = {0xcc};
    struct sym *s = a;
    int outl, fin;
    return EVP_CIPHER_CTX_ctrl(s->ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL)
        && EVP_EncryptInit_ex2(s->ctx, NULL, s->key, s->iv, NULL)
        && EVP_EncryptUpdate(s->ctx, NULL, &outl, aad, (int)sizeof(aad))
        && EVP_EncryptUpdate(s->ctx, s->out, &outl, s->in, (int)s->size)
        && EVP_EncryptFinal_ex(s->ctx, s->out + outl, &fin);
}

static int op_digest(void *a)
{
    struct sym *s = a;
    unsigned int len;
    return EVP_Digest(s->in, s->size, s->out, &len, s->md, NULL);
}

static const char SM2_ID[] = "1234567812345678";

struct pk {
    EVP_PKEY *key;
    EVP_PKEY_CTX *enc, *dec;
    EVP_MD_CTX *sctx, *vctx; /* each with its own key context carrying the ID, as speed does */
    unsigned char msg[32], sig[128], ct[256], pt[64];
    size_t siglen, ctlen;
};

static int op_sign(void *a)
{
    struct pk *p = a;
    size_t len = sizeof(p->sig);
    int ok = EVP_DigestSignInit(p->sctx, NULL, EVP_sm3(), NULL, p->key)
        && EVP_DigestSign(p->sctx, p->sig, &len, p->msg, sizeof(p->msg));
    p->siglen = len;
    return ok;
}

static int op_verify(void *a)
{
    struct pk *p = a;
    return EVP_DigestVerifyInit(p->vctx, NULL, EVP_sm3(), NULL, p->key)
        && EVP_DigestVerify(p->vctx, p->sig, p->siglen, p->msg, sizeof(p->msg)) == 1;
}

/* A digest-sign/verify context whose key context (kept across inits) has the SM2 ID. */
static EVP_MD_CTX *sm2_md_ctx(EVP_PKEY *key)
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new(key, NULL);
    if (!m || !pctx || EVP_PKEY_CTX_set1_id(pctx, SM2_ID, 16) != 1)
        die("SM2 context");
    EVP_MD_CTX_set_pkey_ctx(m, pctx);
    return m;
}

static int op_encrypt(void *a)
{
    struct pk *p = a;
    size_t len = sizeof(p->ct);
    int ok = EVP_PKEY_encrypt_init(p->enc) > 0
        && EVP_PKEY_encrypt(p->enc, p->ct, &len, p->msg, sizeof(p->msg)) > 0;
    p->ctlen = len;
    return ok;
}

static int op_decrypt(void *a)
{
    struct pk *p = a;
    size_t len = sizeof(p->pt);
    return EVP_PKEY_decrypt_init(p->dec) > 0
        && EVP_PKEY_decrypt(p->dec, p->pt, &len, p->ct, p->ctlen) > 0 && len == 32;
}

static int usage(void)
{
    fprintf(stderr, "usage: speedref cipher|aead|digest NAME SIZE SECONDS\n"
                    "       speedref sm2 sign|verify|encrypt|decrypt SECONDS\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "sm2") == 0) {
        struct pk p;
        EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_from_name(NULL, "SM2", NULL);
        double seconds = atof(argv[3]);
        memset(&p, 0, sizeof(p));
        memset(p.msg, 0x5a, sizeof(p.msg));
        p.key = NULL;
        if (!kctx || EVP_PKEY_keygen_init(kctx) <= 0 || EVP_PKEY_generate(kctx, &p.key) <= 0)
            die("SM2 key generation");
        p.sctx = sm2_md_ctx(p.key);
        p.vctx = sm2_md_ctx(p.key);
        p.enc = EVP_PKEY_CTX_new(p.key, NULL);
        p.dec = EVP_PKEY_CTX_new(p.key, NULL);
        if (!p.enc || !p.dec || !op_sign(&p) || !op_encrypt(&p))
            die("SM2 set-up");
        if (strcmp(argv[2], "sign") == 0)
            run(op_sign, &p, 0, seconds);
        else if (strcmp(argv[2], "verify") == 0)
            run(op_verify, &p, 0, seconds);
        else if (strcmp(argv[2], "encrypt") == 0)
            run(op_encrypt, &p, 0, seconds);
        else if (strcmp(argv[2], "decrypt") == 0)
            run(op_decrypt, &p, 0, seconds);
        else
            return usage();
        return 0;
    }
    if (argc == 5) {
        struct sym s;
        size_t size = strtoul(argv[3], NULL, 10);
        double seconds = atof(argv[4]);
        memset(&s, 0, sizeof(s));
        s.size = size;
        s.in = calloc(size + 64, 1);
        s.out = calloc(size + 128, 1);
        if (!s.in || !s.out || size == 0)
            die("allocation");
        if (strcmp(argv[1], "digest") == 0) {
            s.md = EVP_MD_fetch(NULL, argv[2], NULL);
            if (!s.md)
                die(argv[2]);
            run(op_digest, &s, size, seconds);
            return 0;
        }
        EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, argv[2], NULL);
        if (!c)
            die(argv[2]);
        s.ctx = EVP_CIPHER_CTX_new();
        if (!s.ctx || !EVP_EncryptInit_ex2(s.ctx, c, s.key, s.iv, NULL))
            die("cipher set-up");
        if (strcmp(argv[1], "cipher") == 0)
            run(op_cipher, &s, size, seconds);
        else if (strcmp(argv[1], "aead") == 0)
            run(op_aead, &s, size, seconds);
        else
            return usage();
        return 0;
    }
    return usage();
}

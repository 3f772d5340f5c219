// OpenSSL's ChaCha20 (RFC 8439) and ChaCha20-Poly1305, for the two places where Coffer's cost is the cipher's speed:
// secure aggregation's mask expansion (the same keystream as libsodium's crypto_stream_chacha20_ietf_xor_ic, 2.1x its
// speed here: 4.7-5.0 against 2.3-2.4 GB/s a core, 8 KiB pieces, 2026-12-04) and sealed files' chunks (the same bytes
// as libsodium's XChaCha20-Poly1305-IETF, 2.4x its speed: 3.5-3.6 against 1.46 GB/s a core, 64 KiB chunks,
// 2026-12-06). OpenSSL has AVX-512 paths and libsodium 1.0.18 stops at AVX2. libcrypto is loaded on first use, as
// OpenBLAS is (2.6-3 ms with the fetches), so a command that seals or opens little does not pay for loading it.
//
// The cipher is fetched from a library context of Coffer's own, and libcrypto is told not to read openssl.cnf: a host
// configuration that restricts the default context (default_properties = fips=yes, where ChaCha20 is not approved) or
// loads engines does not apply. Only Coffer uses this libcrypto in its processes (the TLS stack is BoringSSL's).
// Without that, the first EVP_CipherInit_ex (its engine lookup) ran OPENSSL_init_crypto's defaults, which read and
// applied the host's openssl.cnf.
#include "coffer_libcrypto.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

typedef struct coffer_evp_cipher_ctx coffer_evp_cipher_ctx;
typedef struct coffer_evp_cipher coffer_evp_cipher;
typedef struct coffer_ossl_lib_ctx coffer_ossl_lib_ctx;

#define COFFER_OPENSSL_INIT_NO_LOAD_CONFIG 0x00000080L
#define COFFER_OPENSSL_INIT_NO_ATEXIT 0x00080000L

struct coffer_libcrypto {
    const coffer_evp_cipher *chacha20;  // NULL when unavailable; `failure` says why
    coffer_evp_cipher_ctx *(*ctx_new)(void);
    void (*ctx_free)(coffer_evp_cipher_ctx *);
    int (*init)(coffer_evp_cipher_ctx *, const coffer_evp_cipher *, void *, const unsigned char *, const unsigned char *);
    int (*update)(coffer_evp_cipher_ctx *, unsigned char *, int *, const unsigned char *, int);
    const coffer_evp_cipher *aead;  // ChaCha20-Poly1305; NULL when unavailable
    int (*cipher_init)(coffer_evp_cipher_ctx *, const coffer_evp_cipher *, void *, const unsigned char *, const unsigned char *, int);
    int (*cipher_update)(coffer_evp_cipher_ctx *, unsigned char *, int *, const unsigned char *, int);
    int (*cipher_final)(coffer_evp_cipher_ctx *, unsigned char *, int *);
    int (*ctrl)(coffer_evp_cipher_ctx *, int, int, void *);
    int aead_ready;  // set, with release order, once `aead` may be used
    char failure[256];
};

// One table for the process: in a header's inline functions, each object file that used them had a copy of its own
// (four in the release binary), and the one loaded was not the one a chunk asked about.
static struct coffer_libcrypto table;

static void coffer_libcrypto_load(void) {
    struct coffer_libcrypto *t = &table;
    void *handle = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        snprintf(t->failure, sizeof t->failure, "cannot load OpenSSL's libcrypto (install libssl3): %s", dlerror());
        return;
    }
    int (*init_crypto)(uint64_t, const void *) = (int (*)(uint64_t, const void *))dlsym(handle, "OPENSSL_init_crypto");
    coffer_ossl_lib_ctx *(*lib_ctx_new)(void) = (coffer_ossl_lib_ctx * (*)(void)) dlsym(handle, "OSSL_LIB_CTX_new");
    const coffer_evp_cipher *(*fetch)(coffer_ossl_lib_ctx *, const char *, const char *) =
        (const coffer_evp_cipher *(*)(coffer_ossl_lib_ctx *, const char *, const char *))dlsym(handle, "EVP_CIPHER_fetch");
    unsigned long (*error)(void) = (unsigned long (*)(void))dlsym(handle, "ERR_get_error");
    void (*error_string)(unsigned long, char *, size_t) = (void (*)(unsigned long, char *, size_t))dlsym(handle, "ERR_error_string_n");
    t->ctx_new = (coffer_evp_cipher_ctx * (*)(void)) dlsym(handle, "EVP_CIPHER_CTX_new");
    t->ctx_free = (void (*)(coffer_evp_cipher_ctx *))dlsym(handle, "EVP_CIPHER_CTX_free");
    t->init = (int (*)(coffer_evp_cipher_ctx *, const coffer_evp_cipher *, void *, const unsigned char *,
                       const unsigned char *))dlsym(handle, "EVP_EncryptInit_ex");
    t->update = (int (*)(coffer_evp_cipher_ctx *, unsigned char *, int *, const unsigned char *, int))dlsym(handle, "EVP_EncryptUpdate");
    if (!init_crypto || !lib_ctx_new || !fetch || !error || !error_string || !t->ctx_new || !t->ctx_free || !t->init ||
        !t->update) {
        snprintf(t->failure, sizeof t->failure, "OpenSSL's libcrypto lacks the EVP functions of OpenSSL 3");
        return;
    }
    // Nor does it register OPENSSL_cleanup with atexit: an exiting process need not free OpenSSL's tables, and in a fork
    // of the runner it would run after the fork has reported its exit status.
    if (init_crypto(COFFER_OPENSSL_INIT_NO_LOAD_CONFIG | COFFER_OPENSSL_INIT_NO_ATEXIT, NULL) != 1) {
        snprintf(t->failure, sizeof t->failure, "OpenSSL's libcrypto did not initialize");
        return;
    }
    coffer_ossl_lib_ctx *context = lib_ctx_new();
    const coffer_evp_cipher *cipher = context ? fetch(context, "ChaCha20", NULL) : NULL;
    if (!cipher) {
        char reason[200] = "out of memory";
        unsigned long code = error();
        if (code) error_string(code, reason, sizeof reason);
        snprintf(t->failure, sizeof t->failure, "OpenSSL's ChaCha20 is unavailable: %s", reason);
        return;
    }
    t->chacha20 = cipher;  // published to other threads by pthread_once
    t->cipher_init = (int (*)(coffer_evp_cipher_ctx *, const coffer_evp_cipher *, void *, const unsigned char *,
                              const unsigned char *, int))dlsym(handle, "EVP_CipherInit_ex");
    t->cipher_update = (int (*)(coffer_evp_cipher_ctx *, unsigned char *, int *, const unsigned char *, int))dlsym(handle, "EVP_CipherUpdate");
    t->cipher_final = (int (*)(coffer_evp_cipher_ctx *, unsigned char *, int *))dlsym(handle, "EVP_CipherFinal_ex");
    t->ctrl = (int (*)(coffer_evp_cipher_ctx *, int, int, void *))dlsym(handle, "EVP_CIPHER_CTX_ctrl");
    if (t->cipher_init && t->cipher_update && t->cipher_final && t->ctrl) {
        t->aead = fetch(context, "ChaCha20-Poly1305", NULL);
        // One initialization now, of a context then freed: the first EVP_CipherInit_ex in a process sets up OpenSSL's
        // engine tables, which a process forking commands (`coffer runner`) then does once for all of its forks.
        coffer_evp_cipher_ctx *ctx = t->aead ? t->ctx_new() : NULL;
        if (ctx) {
            static const unsigned char zeros[32];
            if (t->cipher_init(ctx, t->aead, NULL, zeros, zeros, 1) != 1) t->aead = NULL;
            t->ctx_free(ctx);
        }
        // Read without the once by coffer_xchacha20poly1305_ready(), from any thread.
        if (t->aead) __atomic_store_n(&t->aead_ready, 1, __ATOMIC_RELEASE);
    }
}

int coffer_chacha20_available(char *reason, size_t size) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, coffer_libcrypto_load);
    if (table.chacha20) return 0;
    snprintf(reason, size, "%s", table.failure);
    return -1;
}

void *coffer_chacha20_new(void) {
    char reason[256];
    if (coffer_chacha20_available(reason, sizeof reason) != 0) return NULL;
    const struct coffer_libcrypto *lib = &table;
    coffer_evp_cipher_ctx *ctx = lib->ctx_new();
    if (ctx && lib->init(ctx, lib->chacha20, NULL, NULL, NULL) != 1) {
        lib->ctx_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

void coffer_chacha20_free(void *ctx) { table.ctx_free((coffer_evp_cipher_ctx *)ctx); }

int coffer_chacha20_keystream(void *ctx, unsigned char *out, size_t count, const unsigned char *key, uint32_t counter) {
    static const unsigned char zeros[16384];
    const struct coffer_libcrypto *lib = &table;
    // EVP_chacha20's 16-byte IV: the block counter (32-bit little-endian), then the 96-bit nonce.
    unsigned char iv[16] = {0};
    iv[0] = (unsigned char)counter;
    iv[1] = (unsigned char)(counter >> 8);
    iv[2] = (unsigned char)(counter >> 16);
    iv[3] = (unsigned char)(counter >> 24);
    if (lib->init((coffer_evp_cipher_ctx *)ctx, NULL, NULL, key, iv) != 1) return -1;
    while (count > 0) {
        int piece = count < sizeof zeros ? (int)count : (int)sizeof zeros, written = 0;
        if (lib->update((coffer_evp_cipher_ctx *)ctx, out, &written, zeros, piece) != 1 || written != piece) return -1;
        out += piece;
        count -= (size_t)piece;
    }
    return 0;
}

void coffer_libcrypto_preload(void) {
    char reason[256];
    (void)coffer_chacha20_available(reason, sizeof reason);
}

int coffer_xchacha20poly1305_ready(void) { return __atomic_load_n(&table.aead_ready, __ATOMIC_ACQUIRE); }

#define COFFER_EVP_CTRL_AEAD_GET_TAG 0x10
#define COFFER_EVP_CTRL_AEAD_SET_TAG 0x11

/// Feeds `length` bytes to `ctx` (associated data when `out` is NULL), in pieces of at most 2^30 bytes: EVP takes an
/// `int` length, and a whole number of 64-byte blocks per piece keeps the keystream where one call would leave it.
/// Returns 1, or 0 when OpenSSL failed.
static int coffer_aead_update(coffer_evp_cipher_ctx *ctx, unsigned char *out, const unsigned char *in, size_t length) {
    for (size_t at = 0; at < length;) {
        int piece = length - at < (1u << 30) ? (int)(length - at) : (1 << 30), written = 0;
        if (table.cipher_update(ctx, out ? out + at : NULL, &written, in + at, piece) != 1 || (out && written != piece)) return 0;
        at += (size_t)piece;
    }
    return 1;
}

int coffer_xchacha20poly1305(int encrypt, unsigned char *out, unsigned char tag[16], const unsigned char *in, size_t length,
                             const unsigned char *ad, size_t ad_length, const unsigned char nonce[24],
                             const unsigned char key[32]) {
    const struct coffer_libcrypto *lib = &table;
    unsigned char subkey[32], iv[12] = {0};
    memcpy(iv + 4, nonce + 16, 8);
    if (crypto_core_hchacha20(subkey, nonce, key, NULL) != 0) return -2;
    coffer_evp_cipher_ctx *ctx = lib->ctx_new();
    int result = -2, written = 0;
    if (!ctx) goto done;
    if (lib->cipher_init(ctx, lib->aead, NULL, subkey, iv, encrypt) != 1) goto done;
    if (!coffer_aead_update(ctx, NULL, ad, ad_length) || !coffer_aead_update(ctx, out, in, length)) goto done;
    if (encrypt) {
        if (lib->cipher_final(ctx, out + length, &written) != 1 || lib->ctrl(ctx, COFFER_EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1) goto done;
        result = 0;
    } else {
        // Load-bearing: OpenSSL 3.0 finalizes a decryption given no tag as a success, whatever the ciphertext.
        if (lib->ctrl(ctx, COFFER_EVP_CTRL_AEAD_SET_TAG, 16, tag) != 1) goto done;
        result = lib->cipher_final(ctx, out + length, &written) == 1 ? 0 : -1;
        if (result != 0) sodium_memzero(out, length);
    }
done:
    if (result == -2 && !encrypt) sodium_memzero(out, length);
    if (ctx) lib->ctx_free(ctx);
    sodium_memzero(subkey, sizeof subkey);
    return result;
}

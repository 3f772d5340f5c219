#ifndef COFFER_CLIBCRYPTO_SHIM_H
#define COFFER_CLIBCRYPTO_SHIM_H
// OpenSSL's ChaCha20 (RFC 8439), for secure aggregation's mask expansion only: the same keystream as libsodium's
// crypto_stream_chacha20_ietf_xor_ic, 2.1x its speed on this machine (4.7-5.0 against 2.3-2.4 GB/s a core, 8 KiB
// pieces, 2026-12-04), because OpenSSL has an AVX-512 path and libsodium 1.0.18 stops at AVX2. Masks are most of what
// secure aggregation costs. libcrypto is loaded on first use, as OpenBLAS is, so no other command pays for loading it.
//
// The cipher is fetched from a library context of Coffer's own, which reads no openssl.cnf: a host configuration that
// restricts the default context (default_properties = fips=yes, where ChaCha20 is not approved) does not apply to it,
// and nothing else in the process that uses libcrypto sees a change.
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct coffer_evp_cipher_ctx coffer_evp_cipher_ctx;
typedef struct coffer_evp_cipher coffer_evp_cipher;
typedef struct coffer_ossl_lib_ctx coffer_ossl_lib_ctx;

struct coffer_libcrypto {
    const coffer_evp_cipher *chacha20;  // NULL when unavailable; `failure` says why
    coffer_evp_cipher_ctx *(*ctx_new)(void);
    void (*ctx_free)(coffer_evp_cipher_ctx *);
    int (*init)(coffer_evp_cipher_ctx *, const coffer_evp_cipher *, void *, const unsigned char *, const unsigned char *);
    int (*update)(coffer_evp_cipher_ctx *, unsigned char *, int *, const unsigned char *, int);
    char failure[256];
};

// Function-local statics: Swift's importer emits those of inline functions, not file-scope ones.
static inline struct coffer_libcrypto *coffer_libcrypto_table(void) {
    static struct coffer_libcrypto table;
    return &table;
}

static inline void coffer_libcrypto_load(void) {
    struct coffer_libcrypto *t = coffer_libcrypto_table();
    void *handle = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        snprintf(t->failure, sizeof t->failure, "cannot load OpenSSL's libcrypto (install libssl3): %s", dlerror());
        return;
    }
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
    if (!lib_ctx_new || !fetch || !error || !error_string || !t->ctx_new || !t->ctx_free || !t->init || !t->update) {
        snprintf(t->failure, sizeof t->failure, "OpenSSL's libcrypto lacks the EVP functions of OpenSSL 3");
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
}

/// 0 when OpenSSL's ChaCha20 can be used; else -1, with the reason (one line) in `reason`.
static inline int coffer_chacha20_available(char *reason, size_t size) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, coffer_libcrypto_load);
    if (coffer_libcrypto_table()->chacha20) return 0;
    snprintf(reason, size, "%s", coffer_libcrypto_table()->failure);
    return -1;
}

static inline void coffer_chacha20_refused(const char *what) {
    fprintf(stderr, "coffer: %s\n", what);
    exit(70);
}

/// A ChaCha20 context. It holds the last key given to it (and, after a length that is not whole 64-byte blocks, the
/// rest of a block of keystream) until it is freed, when OpenSSL cleanses it. Callers check
/// ``coffer_chacha20_available`` first, where they can report an error; here an unavailable cipher ends the process.
static inline void *coffer_chacha20_new(void) {
    char reason[256];
    if (coffer_chacha20_available(reason, sizeof reason) != 0) coffer_chacha20_refused(reason);
    const struct coffer_libcrypto *lib = coffer_libcrypto_table();
    coffer_evp_cipher_ctx *ctx = lib->ctx_new();
    if (!ctx || lib->init(ctx, lib->chacha20, NULL, NULL, NULL) != 1) coffer_chacha20_refused("OpenSSL's ChaCha20 failed (out of memory?)");
    return ctx;
}

static inline void coffer_chacha20_free(void *ctx) { coffer_libcrypto_table()->ctx_free((coffer_evp_cipher_ctx *)ctx); }

/// Writes `count` bytes of the ChaCha20 keystream under `key` (32 bytes) and a 12-byte nonce of zeros, from 64-byte
/// block `counter` on, to `out`; as crypto_stream_chacha20_ietf_xor_ic over zeros. The caller keeps `counter` plus the
/// blocks below 2^32 (OpenSSL's counter is 32 bits too) and passes a context from ``coffer_chacha20_new``.
static inline void coffer_chacha20_keystream(void *ctx, unsigned char *out, size_t count, const unsigned char *key,
                                             uint32_t counter) {
    static const unsigned char zeros[16384];
    const struct coffer_libcrypto *lib = coffer_libcrypto_table();
    // EVP_chacha20's 16-byte IV: the block counter (32-bit little-endian), then the 96-bit nonce.
    unsigned char iv[16] = {0};
    iv[0] = (unsigned char)counter;
    iv[1] = (unsigned char)(counter >> 8);
    iv[2] = (unsigned char)(counter >> 16);
    iv[3] = (unsigned char)(counter >> 24);
    if (lib->init((coffer_evp_cipher_ctx *)ctx, NULL, NULL, key, iv) != 1) coffer_chacha20_refused("OpenSSL's ChaCha20 failed");
    while (count > 0) {
        int piece = count < sizeof zeros ? (int)count : (int)sizeof zeros, written = 0;
        if (lib->update((coffer_evp_cipher_ctx *)ctx, out, &written, zeros, piece) != 1 || written != piece)
            coffer_chacha20_refused("OpenSSL's ChaCha20 failed");
        out += piece;
        count -= (size_t)piece;
    }
}

#endif

#ifndef COFFER_CLIBCRYPTO_SHIM_H
#define COFFER_CLIBCRYPTO_SHIM_H
// OpenSSL's ChaCha20 (RFC 8439), for secure aggregation's mask expansion only: the same keystream as libsodium's
// crypto_stream_chacha20_ietf_xor_ic, 2.1x its speed on this machine (4.7-5.0 against 2.3-2.4 GB/s a core, 8 KiB
// pieces, 2026-12-04), because OpenSSL has an AVX-512 path and libsodium 1.0.18 stops at AVX2. Masks are most of what
// secure aggregation costs. libcrypto is loaded on first use, as OpenBLAS is, so no other command pays for loading it.
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct coffer_evp_cipher_ctx coffer_evp_cipher_ctx;
typedef struct coffer_evp_cipher coffer_evp_cipher;

struct coffer_libcrypto {
    const coffer_evp_cipher *(*chacha20)(void);
    coffer_evp_cipher_ctx *(*ctx_new)(void);
    void (*ctx_free)(coffer_evp_cipher_ctx *);
    int (*init)(coffer_evp_cipher_ctx *, const coffer_evp_cipher *, void *, const unsigned char *, const unsigned char *);
    int (*update)(coffer_evp_cipher_ctx *, unsigned char *, int *, const unsigned char *, int);
};

static inline void *coffer_libcrypto_symbol(void *handle, const char *name) {
    void *symbol = dlsym(handle, name);
    if (!symbol) {
        fprintf(stderr, "coffer: libcrypto has no %s\n", name);
        exit(70);
    }
    return symbol;
}

static inline const struct coffer_libcrypto *coffer_libcrypto(void) {
    static struct coffer_libcrypto table;
    static int loaded;
    if (__atomic_load_n(&loaded, __ATOMIC_ACQUIRE)) return &table;
    void *handle = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        fprintf(stderr, "coffer: cannot load OpenSSL's libcrypto (install libssl3): %s\n", dlerror());
        exit(70);
    }
    // Two threads may fill the table at once; they write the same values.
    table.chacha20 = (const coffer_evp_cipher *(*)(void))coffer_libcrypto_symbol(handle, "EVP_chacha20");
    table.ctx_new = (coffer_evp_cipher_ctx * (*)(void)) coffer_libcrypto_symbol(handle, "EVP_CIPHER_CTX_new");
    table.ctx_free = (void (*)(coffer_evp_cipher_ctx *))coffer_libcrypto_symbol(handle, "EVP_CIPHER_CTX_free");
    table.init = (int (*)(coffer_evp_cipher_ctx *, const coffer_evp_cipher *, void *, const unsigned char *,
                          const unsigned char *))coffer_libcrypto_symbol(handle, "EVP_EncryptInit_ex");
    table.update = (int (*)(coffer_evp_cipher_ctx *, unsigned char *, int *, const unsigned char *,
                            int))coffer_libcrypto_symbol(handle, "EVP_EncryptUpdate");
    __atomic_store_n(&loaded, 1, __ATOMIC_RELEASE);
    return &table;
}

static inline void coffer_chacha20_refused(void) {
    fprintf(stderr, "coffer: OpenSSL's ChaCha20 failed (out of memory?)\n");
    exit(70);
}

/// A ChaCha20 context. Its state holds the last key given to it, the only copy of a mask seed outside sodium memory;
/// OpenSSL cleanses it when the context is freed.
static inline void *coffer_chacha20_new(void) {
    const struct coffer_libcrypto *lib = coffer_libcrypto();
    coffer_evp_cipher_ctx *ctx = lib->ctx_new();
    if (!ctx || lib->init(ctx, lib->chacha20(), NULL, NULL, NULL) != 1) coffer_chacha20_refused();
    return ctx;
}

static inline void coffer_chacha20_free(void *ctx) { coffer_libcrypto()->ctx_free((coffer_evp_cipher_ctx *)ctx); }

/// Writes `count` bytes of the ChaCha20 keystream under `key` (32 bytes) and a 12-byte nonce of zeros, from 64-byte
/// block `counter` on, to `out`; as crypto_stream_chacha20_ietf_xor_ic over zeros. The caller keeps `counter` plus the
/// blocks below 2^32 (OpenSSL's counter is 32 bits too).
static inline void coffer_chacha20_keystream(void *ctx, unsigned char *out, size_t count, const unsigned char *key,
                                            uint32_t counter) {
    static const unsigned char zeros[16384];
    const struct coffer_libcrypto *lib = coffer_libcrypto();
    // EVP_chacha20's 16-byte IV: the block counter (32-bit little-endian), then the 96-bit nonce.
    unsigned char iv[16] = {0};
    iv[0] = (unsigned char)counter;
    iv[1] = (unsigned char)(counter >> 8);
    iv[2] = (unsigned char)(counter >> 16);
    iv[3] = (unsigned char)(counter >> 24);
    if (lib->init((coffer_evp_cipher_ctx *)ctx, NULL, NULL, key, iv) != 1) coffer_chacha20_refused();
    while (count > 0) {
        int piece = count < sizeof zeros ? (int)count : (int)sizeof zeros, written = 0;
        if (lib->update((coffer_evp_cipher_ctx *)ctx, out, &written, zeros, piece) != 1 || written != piece)
            coffer_chacha20_refused();
        out += piece;
        count -= (size_t)piece;
    }
}

#endif

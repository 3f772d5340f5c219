#ifndef COFFER_LIBCRYPTO_H
#define COFFER_LIBCRYPTO_H
// OpenSSL's ChaCha20 and ChaCha20-Poly1305, loaded on first use (libcrypto.c says why and what it costs).
#include <stddef.h>
#include <stdint.h>

/// 0 when OpenSSL's ChaCha20 can be used; else -1, with the reason (one line) in `reason`.
int coffer_chacha20_available(char *reason, size_t size);

/// A ChaCha20 context, or NULL when OpenSSL's ChaCha20 is unavailable or cannot make one (out of memory): the caller
/// then computes the same bytes with libsodium. It holds the last key given to it (and, after a length that is not
/// whole 64-byte blocks, the rest of a block of keystream) until it is freed, when OpenSSL cleanses it.
void *coffer_chacha20_new(void);

/// Writes `count` bytes of the ChaCha20 keystream under `key` (32 bytes) and a 12-byte nonce of zeros, from 64-byte
/// block `counter` on, to `out`; as crypto_stream_chacha20_ietf_xor_ic over zeros. The caller keeps `counter` plus the
/// blocks below 2^32 (OpenSSL's counter is 32 bits too) and passes a context from ``coffer_chacha20_new``. Returns 0,
/// or -1 when OpenSSL failed on the way (out of memory), `out` then partly written: the caller computes the bytes
/// again with libsodium, never ending the process (a coordinator serving a federation, a training run).
int coffer_chacha20_keystream(void *ctx, unsigned char *out, size_t count, const unsigned char *key, uint32_t counter);

/// Frees a context from ``coffer_chacha20_new`` (OpenSSL cleanses it).
void coffer_chacha20_free(void *ctx);

/// Loads libcrypto and fetches its ciphers, once (later calls return at once): for a thread of its own, so that the
/// threads that seal or open never wait for it, or for a process about to fork (`coffer runner`).
void coffer_libcrypto_preload(void);

/// Whether ``coffer_xchacha20poly1305`` can be used now (libcrypto loaded, its ChaCha20-Poly1305 fetched). Never
/// loads anything.
int coffer_xchacha20poly1305_ready(void);

/// libsodium's crypto_aead_xchacha20poly1305_ietf_encrypt_detached (`encrypt` 1: `tag` receives the tag) or
/// _decrypt_detached (`encrypt` 0: `tag` is the tag to check), through OpenSSL's ChaCha20-Poly1305, as libsodium
/// computes it: the subkey HChaCha20(key, nonce[0..16]) and the 96-bit nonce 0^32 || nonce[16..24]. The subkey (the
/// same for every chunk of a file: nonce[0..16] is its nonce prefix) is on the stack and in OpenSSL's context only for
/// the call, both wiped after it (OpenSSL cleanses a context it frees), as libsodium wipes its own copy. `out` must not
/// overlap `in` (a caller seals again with libsodium after a -2). Returns 0; -1 when the tag does not verify (`out` is then zeroed: OpenSSL decrypts
/// before it checks, and no unauthenticated byte is left behind); -2 when OpenSSL failed (out of memory), for the
/// caller to use libsodium instead. Call only once ``coffer_xchacha20poly1305_ready`` says so.
int coffer_xchacha20poly1305(int encrypt, unsigned char *out, unsigned char tag[16], const unsigned char *in, size_t length,
                             const unsigned char *ad, size_t ad_length, const unsigned char nonce[24],
                             const unsigned char key[32]);

#endif

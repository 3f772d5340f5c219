/* ChaCha20 keystream throughput on this machine as MaskExpander computes it (8 KiB pieces through the shim
 * Sources/CLibcrypto/libcrypto.c, OpenSSL's libcrypto), on THREADS threads at once: the floor of secure aggregation's mask
 * expansion. With a third argument, `sodium`, libsodium's crypto_stream_chacha20_ietf_xor_ic instead (what the masks
 * were computed with before 2026-12-04; the same bytes).
 * Usage: keystream THREADS SECONDS [sodium]; prints the bytes per second of all threads together. Built by fl_bench.py. */
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coffer_libcrypto.h"

static double seconds;
static int use_sodium;
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *expand(void *out) {
    static const unsigned char nonce[12] = {0};
    unsigned char key[32], piece[8192];
    randombytes_buf(key, sizeof key);
    void *cipher = coffer_chacha20_new();
    double start = now(), bytes = 0;
    for (uint32_t counter = 0; now() - start < seconds; counter += 128) {
        for (int i = 0; i < 64; i++) {
            if (use_sodium) {
                memset(piece, 0, sizeof piece);
                crypto_stream_chacha20_ietf_xor_ic(piece, piece, sizeof piece, nonce, counter, key);
            } else {
                coffer_chacha20_keystream(cipher, piece, sizeof piece, key, counter);
            }
            bytes += sizeof piece;
        }
    }
    coffer_chacha20_free(cipher);
    *(double *)out = bytes / (now() - start);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4 || sodium_init() < 0) return 2;
    use_sodium = argc == 4 && strcmp(argv[3], "sodium") == 0;
    int threads = atoi(argv[1]);
    seconds = atof(argv[2]);
    pthread_t ids[64];
    double rates[64];
    if (threads < 1 || threads > 64) return 2;
    for (int i = 0; i < threads; i++) pthread_create(&ids[i], NULL, expand, &rates[i]);
    double total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ids[i], NULL);
        total += rates[i];
    }
    printf("%.0f\n", total);
    return 0;
}

/* ChaCha20 keystream throughput of libsodium on this machine, as MaskExpander uses it (8 KiB pieces through
 * crypto_stream_chacha20_ietf_xor_ic), on THREADS threads at once: the floor of secure aggregation's mask expansion.
 * Usage: keystream THREADS SECONDS; prints the bytes per second of all threads together. Built by fl_bench.py. */
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double seconds;
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *expand(void *out) {
    static const unsigned char nonce[12] = {0};
    unsigned char key[32], piece[8192];
    randombytes_buf(key, sizeof key);
    double start = now(), bytes = 0;
    for (uint32_t counter = 0; now() - start < seconds; counter += 128) {
        for (int i = 0; i < 64; i++) {
            memset(piece, 0, sizeof piece);
            crypto_stream_chacha20_ietf_xor_ic(piece, piece, sizeof piece, nonce, counter, key);
            bytes += sizeof piece;
        }
    }
    *(double *)out = bytes / (now() - start);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3 || sodium_init() < 0) return 2;
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

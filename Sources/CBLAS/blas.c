// OpenBLAS is loaded on first use, not linked: its constructor starts a worker thread per core that busy-yields
// for about 0.1 s, which on a two-core machine takes a core from every command (push, pull, infer) whether or not
// it multiplies a matrix. Only `coffer train`, `predict` and inference pay for it now.
//
// One copy of the handle and the functions for the whole process, loaded once: this file is compiled once, where a
// header of static inline functions gave every Swift module that called them a copy of their statics of its own.
#include "coffer_blas.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static struct {
    void (*sgemm)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint, blasint, float,
                  const float *, blasint, const float *, blasint, float, float *, blasint);
    void (*set_threads)(int);
} blas;  // published to other threads by pthread_once

static void *coffer_blas_symbol(void *handle, const char *name) {
    void *symbol = dlsym(handle, name);
    if (!symbol) {
        fprintf(stderr, "coffer: OpenBLAS has no %s\n", name);
        exit(70);
    }
    return symbol;
}

static void coffer_blas_load(void) {
    void *handle = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        fprintf(stderr, "coffer: cannot load OpenBLAS (install libopenblas0): %s\n", dlerror());
        exit(70);
    }
    *(void **)&blas.sgemm = coffer_blas_symbol(handle, "cblas_sgemm");
    *(void **)&blas.set_threads = coffer_blas_symbol(handle, "openblas_set_num_threads");
}

static void coffer_blas_ready(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, coffer_blas_load);
}

void coffer_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE transA, enum CBLAS_TRANSPOSE transB, blasint m, blasint n,
                  blasint k, float alpha, const float *a, blasint lda, const float *b, blasint ldb, float beta, float *c,
                  blasint ldc) {
    coffer_blas_ready();
    blas.sgemm(order, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void coffer_blas_set_threads(int threads) {
    coffer_blas_ready();
    blas.set_threads(threads);
}

#ifndef COFFER_CBLAS_SHIM_H
#define COFFER_CBLAS_SHIM_H
// OpenBLAS is loaded on first use, not linked: its constructor starts a worker thread per core that busy-yields
// for about 0.1 s, which on a two-core machine takes a core from every command (push, pull, infer) whether or not
// it multiplies a matrix. Only `coffer train`, `predict` and inference pay for it now.
#include <cblas.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static inline void *coffer_blas_symbol(const char *name) {
    static void *library;
    void *handle = __atomic_load_n(&library, __ATOMIC_ACQUIRE);
    if (!handle) {
        handle = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
        if (!handle) {
            fprintf(stderr, "coffer: cannot load OpenBLAS (install libopenblas0): %s\n", dlerror());
            exit(70);
        }
        __atomic_store_n(&library, handle, __ATOMIC_RELEASE);
    }
    void *symbol = dlsym(handle, name);
    if (!symbol) {
        fprintf(stderr, "coffer: OpenBLAS has no %s\n", name);
        exit(70);
    }
    return symbol;
}

typedef void (*coffer_sgemm_function)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint,
                                      blasint, float, const float *, blasint, const float *, blasint, float, float *,
                                      blasint);

/// cblas_sgemm from the OpenBLAS loaded on first use.
static inline void coffer_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE transA, enum CBLAS_TRANSPOSE transB,
                                blasint m, blasint n, blasint k, float alpha, const float *a, blasint lda,
                                const float *b, blasint ldb, float beta, float *c, blasint ldc) {
    static coffer_sgemm_function function;
    coffer_sgemm_function f = __atomic_load_n(&function, __ATOMIC_ACQUIRE);
    if (!f) {
        f = (coffer_sgemm_function)coffer_blas_symbol("cblas_sgemm");
        __atomic_store_n(&function, f, __ATOMIC_RELEASE);
    }
    f(order, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

typedef void (*coffer_sgemv_function)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, blasint, blasint, float, const float *,
                                      blasint, const float *, blasint, float, float *, blasint);

/// cblas_sgemv from the OpenBLAS loaded on first use.
static inline void coffer_sgemv(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE trans, blasint m, blasint n, float alpha,
                                const float *a, blasint lda, const float *x, blasint incx, float beta, float *y,
                                blasint incy) {
    static coffer_sgemv_function function;
    coffer_sgemv_function f = __atomic_load_n(&function, __ATOMIC_ACQUIRE);
    if (!f) {
        f = (coffer_sgemv_function)coffer_blas_symbol("cblas_sgemv");
        __atomic_store_n(&function, f, __ATOMIC_RELEASE);
    }
    f(order, trans, m, n, alpha, a, lda, x, incx, beta, y, incy);
}

/// openblas_set_num_threads from the OpenBLAS loaded on first use.
static inline void coffer_blas_set_threads(int threads) {
    ((void (*)(int))coffer_blas_symbol("openblas_set_num_threads"))(threads);
}
#endif

#ifndef COFFER_BLAS_H
#define COFFER_BLAS_H
// OpenBLAS's sgemm and thread count, loaded on first use (blas.c says why).
#include <cblas.h>

/// cblas_sgemm from the OpenBLAS loaded on first use.
void coffer_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE transA, enum CBLAS_TRANSPOSE transB, blasint m, blasint n,
                  blasint k, float alpha, const float *a, blasint lda, const float *b, blasint ldb, float beta, float *c,
                  blasint ldc);

/// openblas_set_num_threads from the OpenBLAS loaded on first use.
void coffer_blas_set_threads(int threads);

#endif

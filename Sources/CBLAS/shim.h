#ifndef COFFER_CBLAS_SHIM_H
#define COFFER_CBLAS_SHIM_H
#include <cblas.h>
#endif

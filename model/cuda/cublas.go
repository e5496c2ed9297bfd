//go:build cuda

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <cublas_v2.h>

// The shim takes types and enum values from cublas_api.h but resolves the
// functions with dlopen, so the binary runs against whatever libcublas
// (11 or 12) the host has, found on the loader path or named by
// FUSIONRAG_CUBLAS.
typedef cublasStatus_t (*fr_create_fn)(cublasHandle_t*);
typedef cublasStatus_t (*fr_destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*fr_gemmex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                       const void*, const void*, cudaDataType, int, const void*, cudaDataType, int,
                                       const void*, void*, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
typedef cublasStatus_t (*fr_version_fn)(cublasHandle_t, int*);

static void* fr_lib;
static fr_create_fn fr_create;
static fr_destroy_fn fr_destroy;
static fr_gemmex_fn fr_gemmex;
static fr_version_fn fr_version;

// fr_cublas_open returns NULL on success, else a message (static or from
// dlerror, valid until the next dl call).
static const char* fr_cublas_open(const char* path) {
	if (fr_lib != NULL) return NULL;
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) return dlerror();
	fr_create = (fr_create_fn)dlsym(h, "cublasCreate_v2");
	fr_destroy = (fr_destroy_fn)dlsym(h, "cublasDestroy_v2");
	fr_gemmex = (fr_gemmex_fn)dlsym(h, "cublasGemmEx");
	fr_version = (fr_version_fn)dlsym(h, "cublasGetVersion_v2");
	if (fr_create == NULL || fr_destroy == NULL || fr_gemmex == NULL || fr_version == NULL) {
		dlclose(h);
		return "libcublas lacks cublasCreate_v2, cublasDestroy_v2, cublasGemmEx or cublasGetVersion_v2 (cuBLAS >= 11 needed)";
	}
	fr_lib = h;
	return NULL;
}

static int fr_cublas_create(cublasHandle_t* h) { return (int)fr_create(h); }
static int fr_cublas_destroy(cublasHandle_t h) { return (int)fr_destroy(h); }
static int fr_cublas_version(cublasHandle_t h, int* v) { return (int)fr_version(h, v); }

// fr_gemm: row-major out[m,n] = alpha * a[m,k] . w[n,k]^T + beta * out, as
// the column-major product out^T = w^T' . a' (cuBLAS sees w as [k, n] and a
// as [k, m], both column-major, and transposes w).
static int fr_gemm(cublasHandle_t h, int m, int n, int k, unsigned long long a, unsigned long long w, int ab_type,
                   unsigned long long out, float alpha, float beta) {
	return (int)fr_gemmex(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, (const void*)w, (cudaDataType)ab_type, k,
	                      (const void*)a, (cudaDataType)ab_type, k, &beta, (void*)out, CUDA_R_32F, n,
	                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

static int fr_type_f32(void) { return CUDA_R_32F; }
static int fr_type_f16(void) { return CUDA_R_16F; }
static int fr_type_bf16(void) { return CUDA_R_16BF; }
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"
)

// cublasCandidates are tried in order when FUSIONRAG_CUBLAS is unset.
var cublasCandidates = []string{"libcublas.so.12", "libcublas.so.11", "libcublas.so"}

var (
	cublasOnce sync.Once
	cublasErr  error
)

// openCublas loads libcublas once per process.
func openCublas() error {
	cublasOnce.Do(func() {
		paths := cublasCandidates
		if p := os.Getenv("FUSIONRAG_CUBLAS"); p != "" {
			paths = []string{p}
		}
		var msgs []string
		for _, p := range paths {
			cp := C.CString(p)
			msg := C.fr_cublas_open(cp)
			C.free(unsafe.Pointer(cp))
			if msg == nil {
				return
			}
			msgs = append(msgs, C.GoString(msg))
		}
		cublasErr = fmt.Errorf("cuda: cannot load cuBLAS (set FUSIONRAG_CUBLAS to libcublas.so's path or add its directory to LD_LIBRARY_PATH): %s",
			strings.Join(msgs, "; "))
	})
	return cublasErr
}

// cublas is a cuBLAS handle bound to the context current when it was made.
type cublas struct {
	h       C.cublasHandle_t
	abType  C.int
	version int
}

// newCublas creates a handle in the current context for GEMMs whose inputs
// are of type dt (output and accumulation are fp32).
func newCublas(dt DType) (*cublas, error) {
	if err := openCublas(); err != nil {
		return nil, err
	}
	b := &cublas{}
	switch dt {
	case BF16:
		b.abType = C.fr_type_bf16()
	case F16:
		b.abType = C.fr_type_f16()
	default:
		b.abType = C.fr_type_f32()
	}
	if st := C.fr_cublas_create(&b.h); st != 0 {
		return nil, fmt.Errorf("cuda: cublasCreate: status %d", int(st))
	}
	var v C.int
	if st := C.fr_cublas_version(b.h, &v); st == 0 {
		b.version = int(v)
	}
	return b, nil
}

// gemm computes out f32 [m, n] = a [m, k] · w [n, k]^T (+ out when
// accumulate); addresses are device pointers.
func (b *cublas) gemm(out, a, w uintptr, m, n, k int, accumulate bool) error {
	beta := C.float(0)
	if accumulate {
		beta = 1
	}
	if st := C.fr_gemm(b.h, C.int(m), C.int(n), C.int(k), C.ulonglong(a), C.ulonglong(w), b.abType,
		C.ulonglong(out), 1, beta); st != 0 {
		return fmt.Errorf("cuda: cublasGemmEx [%d,%d]x[%d,%d]^T: status %d", m, k, n, k, int(st))
	}
	return nil
}

var errCublasClosed = errors.New("cuda: cuBLAS handle closed")

func (b *cublas) close() error {
	if b == nil || b.h == nil {
		return errCublasClosed
	}
	st := C.fr_cublas_destroy(b.h)
	b.h = nil
	if st != 0 {
		return fmt.Errorf("cuda: cublasDestroy: status %d", int(st))
	}
	return nil
}

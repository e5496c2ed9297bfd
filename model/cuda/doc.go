// Package cuda is the GPU backend of package model: weights and KV in bf16 or
// fp16 (or fp32, for exactness checks) in device memory, PTX kernels for the
// non-GEMM parts of a Llama layer (embedding gather, RMSNorm, RoPE at
// arbitrary positions, SiLU-mul, and a tiled flash-style attention of a
// subset of queries over a KV cache, causal by position, GQA), and cuBLAS
// cublasGemmEx for the GEMMs, loaded with dlopen.
//
// The device code is built only with the build tag "cuda" (it needs
// gorgonia.org/cu, cuda.h and libcuda). Without the tag the package holds the
// device-independent parts: bf16/fp16 conversion, the forward pass written
// against the narrow ops interface, and a pure-Go implementation of those ops
// (hostOps) that mirrors the kernels, including their tiling, so the
// orchestration and the index math are tested on any machine.
//
// Importing the package with the tag registers the backend "cuda" with
// package model. Note that gorgonia.org/cu's init calls cuInit and ends the
// process when no GPU (or no driver) is present: the cuda build is for GPU
// hosts only.
//
// Regenerate the PTX after editing kernels/*.cu with
//
//	go generate ./model/cuda/
//
//go:generate sh kernels/gen.sh
package cuda

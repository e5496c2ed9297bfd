#!/usr/bin/env bash
# cuda-check.sh: build and run the checks of the CUDA backend (model/cuda).
#
#   scripts/cuda-check.sh build [DIR]  on a machine with Go and the CUDA
#                                      headers (installs them on Debian 12):
#                                      vets and builds the tagged code, checks
#                                      the committed PTX is current, writes
#                                      the test/benchmark binary and what it
#                                      needs into DIR (default ./cuda-check).
#   scripts/cuda-check.sh run [DIR]    on the GPU host, from DIR (or with DIR
#                                      given); needs the NVIDIA driver and
#                                      python3 with torch, no Go: differential
#                                      tests against the cpu backend, then the
#                                      Llama-3-8B-shaped benchmark and the
#                                      PyTorch SDPA baseline in the same run.
#                                      Finishes in under 10 minutes.
#   scripts/cuda-check.sh all [DIR]    both, on a GPU host with Go.
#
# Environment: FUSIONRAG_DATA (stories260K; default ../shared/data),
# FUSIONRAG_BENCH_TOKENS (default 4096,16384,32768), FUSIONRAG_CUBLAS (path
# of libcublas.so when it is not found on its own).
set -euo pipefail

mode=${1:-}
here=$(cd "$(dirname "$0")" && pwd)

build() {
	local out=$1
	cd "$here/.."
	if [ ! -f /usr/include/cuda.h ] && [ ! -f /usr/local/cuda/include/cuda.h ]; then
		# Debian 12: cuda.h, cuBLAS headers and the libcuda stub come from
		# non-free nvidia-cuda-dev (~2.8 GB installed); nvcc 11.8 from
		# nvidia-cuda-toolkit (only needed to regenerate the PTX).
		export DEBIAN_FRONTEND=noninteractive
		if [ -f /etc/apt/sources.list.d/debian.sources ]; then
			sed -i 's/^Components: main$/Components: main contrib non-free/' /etc/apt/sources.list.d/debian.sources
		fi
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends nvidia-cuda-dev nvidia-cuda-toolkit >/dev/null
	fi
	# Link against the driver stub (the GPU host's libcuda.so.1 is used at
	# run time): dpkg -L nvidia-cuda-dev | grep stubs.
	local stubs=""
	for d in /usr/lib/x86_64-linux-gnu/stubs /usr/local/cuda/lib64/stubs /usr/local/cuda/targets/x86_64-linux/lib/stubs; do
		if [ -f "$d/libcuda.so" ]; then stubs=$d; break; fi
	done
	if [ -z "$stubs" ]; then echo "cuda-check: no libcuda.so stub found" >&2; exit 1; fi
	export CGO_LDFLAGS="-L$stubs ${CGO_LDFLAGS:-}"
	export CGO_CFLAGS="-I/usr/local/cuda/include ${CGO_CFLAGS:-}"

	if command -v nvcc >/dev/null 2>&1; then
		# The committed PTX must be what the committed .cu compiles to.
		tmp=$(mktemp -d)
		cp model/cuda/kernels/*.cu model/cuda/kernels/*.cuh model/cuda/kernels/gen.sh "$tmp/"
		sh "$tmp/gen.sh"
		for f in model/cuda/kernels/*.cu; do
			f=$(basename "$f" .cu)
			if ! cmp -s "$tmp/$f.ptx" "model/cuda/kernels/$f.ptx"; then
				echo "cuda-check: model/cuda/kernels/$f.ptx is stale: run go generate ./model/cuda/" >&2
				exit 1
			fi
		done
		rm -rf "$tmp"
	fi
	go vet -tags cuda ./model/cuda/
	mkdir -p "$out"
	go test -c -tags cuda -o "$out/cuda.test" ./model/cuda/
	cp model/cuda/testdata/sdpa_prefill.py "$out/"
	cp "$here/cuda-check.sh" "$out/"
	# stories260K for the differential tests, into the bundle (never the repo).
	local data=${FUSIONRAG_DATA:-../shared/data}
	if [ -f "$data/models/stories260K/stories260K.bin" ]; then
		mkdir -p "$out/data/models/stories260K"
		cp "$data"/models/stories260K/{stories260K.bin,tok512.bin} "$out/data/models/stories260K/"
	else
		echo "cuda-check: WARNING: $data/models/stories260K missing; stories260K tests will skip" >&2
	fi
	# The whole module builds with the tag, and without it (unaffected).
	go build -tags cuda ./...
	go build ./...
	echo "cuda-check: built $out (copy it to the GPU host and run: ./cuda-check.sh run .)"
}

run() {
	local dir=$1
	cd "$dir"
	export FUSIONRAG_DATA=${FUSIONRAG_DATA:-$PWD/data}
	# libcublas: from the loader path, or PyTorch's wheels (nvidia-cublas-cu12)
	# or torch/lib.
	local libs
	libs=$(python3 - <<'PY' 2>/dev/null || true
import glob, os
dirs = []
try:
    import nvidia.cublas
    dirs.append(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))
except Exception:
    pass
try:
    import torch
    dirs.append(os.path.join(os.path.dirname(torch.__file__), "lib"))
except Exception:
    pass
print(":".join(d for d in dirs if glob.glob(os.path.join(d, "libcublas*.so*"))))
PY
)
	if [ -n "$libs" ]; then export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"; fi
	nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

	echo "== differential tests (kernels vs hostOps, device vs cpu backend)"
	timeout 150 ./cuda.test -test.v -test.run 'Test' -test.timeout 140s 2>&1 | tee tests.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|SKIP|tolerance|got' | grep -v '=== RUN' || true
	if ! grep -q '^PASS' tests.log; then echo "cuda-check: tests FAILED (see $PWD/tests.log)"; status=1; fi

	echo "== benchmark: Llama-3-8B shape, bf16 (Go/CUDA)"
	local tokens=${FUSIONRAG_BENCH_TOKENS:-4096,16384,32768}
	FUSIONRAG_BENCH_JSON=$PWD/go_bench.json FUSIONRAG_BENCH_TOKENS=$tokens \
		timeout 300 ./cuda.test -test.run '^$' -test.bench 'BenchmarkLlama8B' -test.benchtime 1x -test.timeout 290s 2>&1 | tee bench.log || status=1

	echo "== baseline: PyTorch SDPA prefill, same shape"
	timeout 150 python3 sdpa_prefill.py --tokens "$tokens" --repeat 2 --json "$PWD/sdpa.json" || status=1

	python3 - <<'PY' | tee report.md
import json, os
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return {"rows": []}
go, pt = load("go_bench.json"), load("sdpa.json")
by = {}
for r in go["rows"]:
    by.setdefault(r["tokens"], {})[r["mode"]] = r
for r in pt["rows"]:
    by.setdefault(r["tokens"], {})["torch"] = r
print("| tokens | full ms (tok/s) | reuse ms (x full) | fusionrag 15% ms (x full) | torch SDPA full ms (tok/s) | full: ours / torch time |")
print("|---|---|---|---|---|---|")
for n in sorted(by):
    m = by[n]
    def ms(k):
        return m[k]["ms"] if k in m else float("nan")
    f, t = ms("full"), ms("torch")
    cell = lambda k: f"{ms(k):.1f} ({f / ms(k):.1f}x)" if k in m else "-"
    tok = lambda k: f"{ms(k):.1f} ({m[k]['tokens_per_s']:.0f})" if k in m else "-"
    print(f"| {n} | {tok('full')} | {cell('reuse')} | {cell('fusionrag15')} | {tok('torch')} | {f / t:.2f} |")
print()
print("device:", pt.get("device", "?"), "torch", pt.get("torch", "?"))
PY
	return ${status:-0}
}

case "$mode" in
build) build "${2:-$PWD/cuda-check}" ;;
run) run "${2:-$PWD}" ;;
all)
	out=${2:-$PWD/cuda-check}
	build "$out"
	run "$out"
	;;
*)
	sed -n '2,22p' "$0"
	exit 2
	;;
esac

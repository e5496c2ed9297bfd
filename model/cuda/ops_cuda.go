//go:build cuda

package cuda

import (
	_ "embed"
	"fmt"
	"math"
	"runtime"
	"unsafe"

	"gorgonia.org/cu"
)

// The kernels, compiled by kernels/gen.sh to compute_80 PTX that the driver
// JIT-compiles for the GPU at hand.
var (
	//go:embed kernels/elementwise.ptx
	elementwisePTX string
	//go:embed kernels/attention.ptx
	attentionPTX string
	//go:embed kernels/attention_mma.ptx
	attentionMMAPTX string
)

// cudaOps implements ops with gorgonia.org/cu (driver API) on the device's
// primary context, launching everything on the legacy default stream, so
// kernels, cuBLAS calls and synchronous copies are ordered.
type cudaOps struct {
	dt   DType
	dev  cu.Device
	ctx  cu.CUContext
	mods []cu.Module
	fns  map[string]cu.Function
	blas *cublas
	sms  int
	// mma says the tensor-core attention (kernels/attention_mma.cu) passed
	// its start-up check against the SIMT kernel and is used for bf16/f16
	// with head dim 64 or 128; mmaNote says why not otherwise.
	mma     bool
	mmaNote string
}

// kernelNames are looked up at start, so a stale PTX fails early.
var kernelNames = func() []string {
	names := []string{"add_bias", "sum_rows", "rope_f32in", "rope_table",
		"attention_mma_bf16_64", "attention_mma_bf16_128", "attention_mma_f16_64", "attention_mma_f16_128"}
	for _, s := range []string{"f32", "f16", "bf16"} {
		for _, k := range []string{"embed", "rmsnorm", "to_half", "rope", "silu_mul", "fill_random", "attention", "attn_weights"} {
			names = append(names, k+"_"+s)
		}
	}
	return names
}()

func newCUDAOps(device int, dt DType) (_ *cudaOps, err error) {
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	if device < 0 || device >= n {
		return nil, fmt.Errorf("cuda: device %d outside [0, %d)", device, n)
	}
	c := &cudaOps{dt: dt, fns: map[string]cu.Function{}}
	if c.dev, err = cu.GetDevice(device); err != nil {
		return nil, fmt.Errorf("cuda: device %d: %w", device, err)
	}
	major, err := c.dev.Attribute(cu.ComputeCapabilityMajor)
	if err != nil {
		return nil, fmt.Errorf("cuda: device %d: %w", device, err)
	}
	if major < 8 {
		return nil, fmt.Errorf("%w: cuda backend needs compute capability 8.0 or newer (bf16 kernels); device %d is %d.x", errUnsupportedDevice, device, major)
	}
	if c.sms, err = c.dev.Attribute(cu.MultiprocessorCount); err != nil {
		return nil, fmt.Errorf("cuda: device %d: %w", device, err)
	}
	if c.ctx, err = c.dev.RetainPrimaryCtx(); err != nil {
		return nil, fmt.Errorf("cuda: primary context of device %d: %w", device, err)
	}
	exit := c.enter()
	defer exit()
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	for _, ptx := range []string{elementwisePTX, attentionPTX, attentionMMAPTX} {
		m, err := cu.LoadData(ptx)
		if err != nil {
			return nil, fmt.Errorf("cuda: loading PTX module: %w", err)
		}
		c.mods = append(c.mods, m)
	}
	for _, name := range kernelNames {
		var fn cu.Function
		var ferr error
		for _, m := range c.mods {
			if fn, ferr = m.Function(name); ferr == nil {
				break
			}
		}
		if ferr != nil {
			return nil, fmt.Errorf("cuda: kernel %s not in the embedded PTX (regenerate with kernels/gen.sh): %w", name, ferr)
		}
		c.fns[name] = fn
	}
	if c.blas, err = newCublas(dt); err != nil {
		return nil, err
	}
	if dt == F32 {
		c.mmaNote = "simt (f32 storage)"
	} else if err := c.checkMMA(); err != nil {
		c.mmaNote = "simt (tensor-core kernel failed its start-up check: " + err.Error() + ")"
	} else {
		c.mma = true
	}
	return c, nil
}

// attentionKernel names the attention kernel in use for head dim hd.
func (c *cudaOps) attentionKernel(hd int) string {
	if c.mma && (hd == 64 || hd == 128) {
		return "mma (tensor cores)"
	}
	if c.mmaNote != "" {
		return c.mmaNote
	}
	return fmt.Sprintf("simt (head dim %d)", hd)
}

// checkMMA runs the tensor-core and the SIMT attention on one random problem
// per head dim (partial tiles, GQA, a shadowed cache entry) and compares
// them: outputs within 2^-5 of the largest, lse within 1e-2 relative, all
// finite. The kernels round Q and P differently, so they agree to a few
// storage ulps, not bitwise.
func (c *cudaOps) checkMMA() error {
	c.mma = true
	defer func() { c.mma = false }()
	for _, hd := range []int{64, 128} {
		s := attnShape{N: 70, C: 50, Heads: 4, KVHeads: 2, HeadDim: hd, Scale: float32(1 / math.Sqrt(float64(hd)))}
		keys := s.Keys()
		var bufs []buf
		var allocErr error
		mk := func(kind elem, n int, seed uint64) buf {
			b, err := c.alloc(kind, n)
			if err == nil && seed != 0 {
				err = c.fillRandom(b, seed, 1)
			}
			if err != nil {
				allocErr = cmpErr(allocErr, err)
				return buf{}
			}
			bufs = append(bufs, b)
			return b
		}
		err := func() (err error) {
			defer func() {
				for _, b := range bufs {
					c.free(b)
				}
			}()
			q := mk(elemF32, s.N*s.Heads*hd, 11)
			k := mk(elemHalf, keys*s.KVHeads*hd, 12)
			vc := mk(elemHalf, s.C*s.KVHeads*hd, 13)
			vb := mk(elemHalf, s.N*s.KVHeads*hd, 14)
			kpos, qpos := mk(elemI32, keys, 0), mk(elemI32, s.N, 0)
			if allocErr != nil {
				return allocErr
			}
			kp, qp := make([]int32, keys), make([]int32, s.N)
			for j := range s.C {
				kp[j] = int32((j * 37) % 90)
			}
			kp[7] = math.MaxInt32
			for i := range qp {
				qp[i] = int32(60 + 2*i)
				kp[s.C+i] = qp[i]
			}
			if err := c.upload(kpos, kp); err != nil {
				return err
			}
			if err := c.upload(qpos, qp); err != nil {
				return err
			}
			var outs [2][]float32
			var lses [2][]float32
			for i, useMMA := range []bool{false, true} {
				out, lse := mk(elemHalf, s.N*s.Heads*hd, 0), mk(elemF32, s.Heads*s.N, 0)
				if allocErr != nil {
					return allocErr
				}
				c.mma = useMMA
				if err := c.attention(out, q, k, vc, vb, kpos, qpos, lse, s); err != nil {
					return err
				}
				raw := rawHalf(c.dt, out.n)
				if err := c.download(raw, out); err != nil {
					return err
				}
				outs[i] = make([]float32, out.n)
				c.dt.decode(outs[i], raw)
				lses[i] = make([]float32, lse.n)
				if err := c.download(lses[i], lse); err != nil {
					return err
				}
			}
			if err := closeTo(fmt.Sprintf("head dim %d output", hd), outs[1], outs[0], 1.0/32); err != nil {
				return err
			}
			return closeTo(fmt.Sprintf("head dim %d lse", hd), lses[1], lses[0], 1e-2)
		}()
		if err != nil {
			return err
		}
	}
	return nil
}

var errUnsupportedDevice = fmt.Errorf("cuda: unsupported device")

func (c *cudaOps) dtype() DType { return c.dt }

func (c *cudaOps) enter() func() {
	runtime.LockOSThread()
	if err := cu.SetCurrentContext(c.ctx); err != nil {
		// Only fails for a destroyed context: every later call reports it.
		_ = err
	}
	return runtime.UnlockOSThread
}

func (c *cudaOps) elemSize(k elem) int {
	switch k {
	case elemHalf:
		return c.dt.Size()
	case elemF64:
		return 8
	}
	return 4
}

func (c *cudaOps) addr(b buf) uintptr {
	if !b.valid() {
		return 0
	}
	return b.a.ptr + uintptr(b.off*c.elemSize(b.kind))
}

func (c *cudaOps) bytes(b buf) int64 { return int64(b.n) * int64(c.elemSize(b.kind)) }

func (c *cudaOps) alloc(kind elem, n int) (buf, error) {
	if n < 0 {
		return buf{}, fmt.Errorf("cuda: alloc of %d elements", n)
	}
	size := max(int64(n)*int64(c.elemSize(kind)), 256)
	p, err := cu.MemAlloc(size)
	if err != nil {
		return buf{}, fmt.Errorf("cuda: allocating %d bytes: %w", size, err)
	}
	return buf{a: &allocation{ptr: uintptr(p), n: n}, kind: kind, n: n}, nil
}

func (c *cudaOps) free(b buf) {
	if b.valid() && b.a.ptr != 0 {
		_ = cu.MemFree(cu.DevicePtr(b.a.ptr))
		b.a.ptr = 0
	}
}

// hostBytes returns the address and byte length of a host slice.
func hostBytes(s any) (unsafe.Pointer, int64, error) {
	switch v := s.(type) {
	case []float32:
		return unsafe.Pointer(unsafe.SliceData(v)), int64(len(v)) * 4, nil
	case []uint16:
		return unsafe.Pointer(unsafe.SliceData(v)), int64(len(v)) * 2, nil
	case []int32:
		return unsafe.Pointer(unsafe.SliceData(v)), int64(len(v)) * 4, nil
	case []float64:
		return unsafe.Pointer(unsafe.SliceData(v)), int64(len(v)) * 8, nil
	}
	return nil, 0, fmt.Errorf("cuda: host slice of type %T", s)
}

func (c *cudaOps) upload(dst buf, src any) error {
	p, n, err := hostBytes(src)
	if err != nil {
		return err
	}
	if n != c.bytes(dst) {
		return fmt.Errorf("cuda: upload of %d bytes into %d", n, c.bytes(dst))
	}
	if n == 0 {
		return nil
	}
	if err := cu.MemcpyHtoD(cu.DevicePtr(c.addr(dst)), p, n); err != nil {
		return fmt.Errorf("cuda: upload: %w", err)
	}
	return nil
}

func (c *cudaOps) download(dst any, src buf) error {
	p, n, err := hostBytes(dst)
	if err != nil {
		return err
	}
	if n < c.bytes(src) {
		return fmt.Errorf("cuda: download of %d bytes into %d", c.bytes(src), n)
	}
	if c.bytes(src) == 0 {
		return nil
	}
	if err := cu.MemcpyDtoH(p, cu.DevicePtr(c.addr(src)), c.bytes(src)); err != nil {
		return fmt.Errorf("cuda: download: %w", err)
	}
	return nil
}

func (c *cudaOps) copy(dst, src buf) error {
	if dst.kind != src.kind || dst.n != src.n {
		return fmt.Errorf("cuda: copy of %d %v into %d %v", src.n, src.kind, dst.n, dst.kind)
	}
	if src.n == 0 {
		return nil
	}
	if err := cu.MemcpyDtoD(cu.DevicePtr(c.addr(dst)), cu.DevicePtr(c.addr(src)), c.bytes(src)); err != nil {
		return fmt.Errorf("cuda: device copy: %w", err)
	}
	return nil
}

func (c *cudaOps) sync() error {
	if err := cu.Synchronize(); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	return nil
}

// launch runs kernel name. Arguments: buf (device address, 0 when invalid),
// int (int32 in the kernel), float32, uint64. cu's Launch copies 8 bytes
// per parameter, so every value is widened into an 8-byte slot.
func (c *cudaOps) launch(name string, gx, gy, block, smem int, args ...any) error {
	fn, ok := c.fns[name]
	if !ok {
		panic("cuda: unknown kernel " + name) // kernelNames is out of date
	}
	vals := make([]uint64, len(args))
	params := make([]unsafe.Pointer, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case buf:
			vals[i] = uint64(c.addr(v))
		case int:
			if v < math.MinInt32 || v > math.MaxInt32 {
				return fmt.Errorf("cuda: %s: argument %d = %d overflows int32", name, i, v)
			}
			vals[i] = uint64(uint32(int32(v)))
		case bool:
			if v {
				vals[i] = 1
			}
		case float32:
			vals[i] = uint64(math.Float32bits(v))
		case uint64:
			vals[i] = v
		default:
			panic(fmt.Sprintf("cuda: kernel argument of type %T", a))
		}
		params[i] = unsafe.Pointer(&vals[i])
	}
	if err := fn.Launch(gx, gy, 1, block, 1, 1, smem, cu.NoStream, params); err != nil {
		return fmt.Errorf("cuda: launching %s (grid %dx%d, block %d, smem %d): %w", name, gx, gy, block, smem, err)
	}
	return nil
}

// grid1 is the block count of a grid-stride launch over total items.
func (c *cudaOps) grid1(total int64, block int) int {
	g := (total + int64(block) - 1) / int64(block)
	return int(max(1, min(g, int64(c.sms)*32)))
}

// typed returns name with the suffix of the storage type.
func (c *cudaOps) typed(name string) string {
	switch c.dt {
	case BF16:
		return name + "_bf16"
	case F16:
		return name + "_f16"
	}
	return name + "_f32"
}

func (c *cudaOps) embed(out, table, ids buf, n, dim int) error {
	if n == 0 {
		return nil
	}
	return c.launch(c.typed("embed"), n, 1, 256, 0, out, table, ids, n, dim)
}

func (c *cudaOps) rmsNorm(out, x, w buf, n, dim int, eps float32) error {
	if n == 0 {
		return nil
	}
	return c.launch(c.typed("rmsnorm"), n, 1, 256, 0, out, x, w, n, dim, eps)
}

func (c *cudaOps) gemm(out, a, w buf, m, n, k int, accumulate bool) error {
	if m == 0 || n == 0 {
		return nil
	}
	return c.blas.gemm(c.addr(out), c.addr(a), c.addr(w), m, n, k, accumulate)
}

func (c *cudaOps) addBias(x, b buf, n, width int) error {
	total := int64(n) * int64(width)
	if total == 0 {
		return nil
	}
	return c.launch("add_bias", c.grid1(total, 256), 1, 256, 0, x, b, n, width)
}

func (c *cudaOps) toHalf(out, in buf, rows, width, inStride int) error {
	total := int64(rows) * int64(width)
	if total == 0 {
		return nil
	}
	return c.launch(c.typed("to_half"), c.grid1(total, 256), 1, 256, 0, out, in, rows, width, inStride)
}

func (c *cudaOps) ropeTable(cs, pos, freq buf, rows, half int) error {
	total := int64(rows) * int64(half)
	if total == 0 {
		return nil
	}
	return c.launch("rope_table", c.grid1(total, ropeThreads), 1, ropeThreads, 0, cs, pos, freq, rows, half)
}

func (c *cudaOps) rope(out, in, cs buf, rows, heads, headDim, inStride, outStride int, interleaved bool) error {
	total := int64(rows) * int64(heads) * int64(headDim/2)
	if total == 0 {
		return nil
	}
	name := c.typed("rope")
	if in.kind == elemF32 {
		name = "rope_f32in"
	}
	il := 0
	if interleaved {
		il = 1
	}
	return c.launch(name, c.grid1(total, ropeThreads), 1, ropeThreads, 0, out, in, cs, rows, heads, headDim, inStride, outStride, il)
}

func (c *cudaOps) siluMul(out, in buf, n, h int) error {
	total := int64(n) * int64(h)
	if total == 0 {
		return nil
	}
	return c.launch(c.typed("silu_mul"), c.grid1(total, 256), 1, 256, 0, out, in, n, h)
}

// attnSmem is attention's dynamic shared memory: K tile (padded), V tile,
// query tile, key positions.
func attnSmem(hd int) int {
	return 4 * (attnKTile*(hd+1) + attnKTile*hd + attnQTile*hd + attnKTile)
}

// weightsSmem is attn_weights' dynamic shared memory.
func weightsSmem(hd int) int {
	return 4 * (attnKTile*(hd+1) + attnWarps*hd + attnWarps*attnKTile)
}

// mmaSmem is attention_mma's dynamic shared memory: K and V tiles of 64
// rows of hd+8 storage elements, and 64 key positions.
func mmaSmem(hd, elemSize int) int { return 2*64*(hd+8)*elemSize + 64*4 }

func (c *cudaOps) attention(out, q, k, vc, vb, kpos, qpos, lse buf, s attnShape) error {
	if s.N == 0 {
		return nil
	}
	if c.mma && (s.HeadDim == 64 || s.HeadDim == 128) {
		name := fmt.Sprintf("%s_%d", c.typed("attention_mma"), s.HeadDim)
		return c.launch(name, (s.N+63)/64, s.Heads, 128, mmaSmem(s.HeadDim, c.dt.Size()),
			out, q, k, vc, vb, kpos, qpos, lse, s.N, s.C, s.Heads, s.KVHeads, s.Scale)
	}
	gx := (s.N + attnQTile - 1) / attnQTile
	return c.launch(c.typed("attention"), gx, s.Heads, 32*attnWarps, attnSmem(s.HeadDim),
		out, q, k, vc, vb, kpos, qpos, lse, s.N, s.C, s.Heads, s.KVHeads, s.HeadDim, s.Scale)
}

func (c *cudaOps) attnWeights(weights, partial, q, k, kpos, qpos, lse buf, s attnShape) error {
	if s.N == 0 {
		return nil
	}
	gx := (s.Keys() + attnKTile - 1) / attnKTile
	return c.launch(c.typed("attn_weights"), gx, s.Heads, 32*attnWarps, weightsSmem(s.HeadDim),
		weights, partial, q, k, kpos, qpos, lse, s.N, s.C, s.Heads, s.KVHeads, s.HeadDim, s.Scale)
}

func (c *cudaOps) sumRows(out, in buf, rows, width int) error {
	if width == 0 {
		return nil
	}
	return c.launch("sum_rows", (width+255)/256, 1, 256, 0, out, in, rows, width)
}

func (c *cudaOps) fillRandom(b buf, seed uint64, scale float32) error {
	if b.n == 0 {
		return nil
	}
	name := c.typed("fill_random")
	if b.kind == elemF32 {
		name = "fill_random_f32"
	}
	return c.launch(name, c.grid1(int64(b.n), 256), 1, 256, 0, b, uint64(b.n), seed, scale)
}

func (c *cudaOps) close() error {
	if c.ctx == (cu.CUContext{}) {
		return nil
	}
	defer c.enter()()
	var first error
	if c.blas != nil {
		if err := c.blas.close(); err != nil && err != errCublasClosed {
			first = err
		}
		c.blas = nil
	}
	for _, m := range c.mods {
		if err := m.Unload(); err != nil && first == nil {
			first = fmt.Errorf("cuda: unloading module: %w", err)
		}
	}
	c.mods = nil
	if err := c.dev.ReleasePrimaryCtx(); err != nil && first == nil {
		first = fmt.Errorf("cuda: releasing context: %w", err)
	}
	c.ctx = cu.CUContext{}
	return first
}

// cmpErr keeps the first error.
func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

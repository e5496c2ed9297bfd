package model

import (
	"math"
	"sync"
)

// rope applies rotary position embeddings. Frequencies are computed in
// float64 and the per-position cos/sin rounded once to float32, so a key
// rotated at position p is bitwise the same whichever path rotated it (this
// is what makes Cache.Shift exact: K is stored pre-RoPE and rotated on use).
type rope struct {
	half        int       // HeadDim/2
	interleaved bool      // llama2.c adjacent pairs vs HF rotate_half
	freq        []float64 // [half] inverse frequencies, llama3 scaling applied

	mu    sync.RWMutex
	table []float32 // [rows, half, 2] cos, sin for positions [0, rows)
}

// ropeTableMax bounds the precomputed table; positions past it are computed
// on the fly (same formula, same rounding).
const ropeTableMax = 16384

func newRope(c Config) *rope {
	return &rope{half: c.HeadDim / 2, interleaved: c.RopeInterleaved, freq: c.RopeFreqs()}
}

// RopeFreqs returns the rotation frequency of each of the HeadDim/2 pairs of
// a head, in float64, with the config's RoPE scaling (llama3) applied: pair
// i of a token at position p turns by p * RopeFreqs()[i]. Code that must
// rotate K exactly as the model does (adapters/llamacpp) takes them from
// here.
func (c Config) RopeFreqs() []float64 {
	half := c.HeadDim / 2
	freq := make([]float64, half)
	for i := range half {
		// llama2.c: theta^-(2i/HeadDim) on pair i; HF inv_freq is the same list.
		freq[i] = 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))
	}
	if s := c.RopeScaling; s != nil && s.Type == "llama3" {
		old := float64(s.OriginalMaxPositions)
		lowWavelen := old / s.LowFreqFactor
		highWavelen := old / s.HighFreqFactor
		for i, f := range freq {
			wavelen := 2 * math.Pi / f
			switch {
			case wavelen < highWavelen:
			case wavelen > lowWavelen:
				freq[i] = f / s.Factor
			default:
				smooth := (old/wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
				freq[i] = (1-smooth)*f/s.Factor + smooth*f
			}
		}
	}
	return freq
}

// cosSin returns the [half, 2] cos/sin row of position p.
func (r *rope) cosSin(p int32, scratch []float32) []float32 {
	if int(p) < ropeTableMax {
		r.mu.RLock()
		if int(p)*2*r.half < len(r.table) {
			row := r.table[int(p)*2*r.half : (int(p)+1)*2*r.half]
			r.mu.RUnlock()
			return row
		}
		r.mu.RUnlock()
		r.grow(int(p) + 1)
		return r.cosSin(p, scratch)
	}
	r.fill(scratch[:2*r.half], p)
	return scratch[:2*r.half]
}

func (r *rope) fill(row []float32, p int32) {
	for i, f := range r.freq {
		v := float64(p) * f
		row[2*i] = float32(math.Cos(v))
		row[2*i+1] = float32(math.Sin(v))
	}
}

func (r *rope) grow(rows int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	have := len(r.table) / (2 * r.half)
	if rows <= have {
		return
	}
	n := max(rows, min(2*have, ropeTableMax), 256)
	n = min(n, ropeTableMax)
	t := make([]float32, n*2*r.half)
	copy(t, r.table)
	for p := have; p < n; p++ {
		r.fill(t[p*2*r.half:(p+1)*2*r.half], int32(p))
	}
	r.table = t
}

// apply rotates x, a [heads, 2*half] vector of one token, in place to
// position p. scratch must hold 2*half floats.
func (r *rope) apply(x []float32, heads int, p int32, scratch []float32) {
	cs := r.cosSin(p, scratch)
	hd := 2 * r.half
	for h := range heads {
		v := x[h*hd : (h+1)*hd]
		if r.interleaved {
			for i := range r.half {
				c, s := cs[2*i], cs[2*i+1]
				a, b := v[2*i], v[2*i+1]
				v[2*i] = a*c - b*s
				v[2*i+1] = a*s + b*c
			}
		} else {
			for i := range r.half {
				c, s := cs[2*i], cs[2*i+1]
				a, b := v[i], v[i+r.half]
				v[i] = a*c - b*s
				v[i+r.half] = a*s + b*c
			}
		}
	}
}

package model

import (
	"context"
	"encoding/binary"
	"testing"
)

// FuzzParseHFConfig: any config.json gives a Config that validates, or an
// error; never a panic.
func FuzzParseHFConfig(f *testing.F) {
	f.Add([]byte(`{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"max_position_embeddings":128,"rms_norm_eps":1e-5,"eos_token_id":[2,3]}`))
	f.Add([]byte(`{"model_type":"qwen2","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,"max_position_embeddings":128,"rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4,"original_max_position_embeddings":64}}`))
	f.Add([]byte(`{"architectures":["MistralForCausalLM"],"sliding_window":null,"bos_token_id":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseHFConfig(b)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parseHFConfig returned an invalid config: %v", err)
		}
	})
}

// FuzzParseLlama2c: any checkpoint bytes load or fail cleanly; a loaded one
// runs a forward pass without panicking.
func FuzzParseLlama2c(f *testing.F) {
	tiny := func(h [7]int32, extra int) []byte {
		var b []byte
		for _, v := range h {
			b = binary.LittleEndian.AppendUint32(b, uint32(v))
		}
		dim, hid, l, heads, kvh, voc, seq := h[0], h[1], h[2], h[3], h[4], h[5], h[6]
		if voc < 0 {
			voc = -voc
		}
		hd := dim / max(heads, 1)
		n := voc*dim + l*(2*dim+2*dim*dim+2*kvh*hd*dim+3*hid*dim) + dim + seq*hd
		if h[5] < 0 {
			n += voc * dim
		}
		return append(b, make([]byte, 4*int(n)+extra)...)
	}
	f.Add(tiny([7]int32{8, 12, 1, 2, 1, 6, 4}, 0))
	f.Add(tiny([7]int32{8, 12, 2, 2, 2, -6, 4}, 0))
	f.Add(tiny([7]int32{8, 12, 1, 2, 1, 6, 4}, 4))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseLlama2c(b)
		if err != nil {
			return
		}
		if err := m.finish(LoadOptions{}, "", false); err != nil {
			return
		}
		if m.Config.Dim*m.Config.Vocab > 1<<16 || m.Config.MaxPositions > 1<<12 {
			return // keep the forward cheap
		}
		_, err = m.Forward(context.Background(), nil, Batch{Tokens: []int32{0}, Pos: []int32{int32(m.Config.MaxPositions - 1)}}, ForwardOptions{Logits: []int{0}})
		if err != nil {
			t.Fatalf("forward on a loaded checkpoint: %v", err)
		}
	})
}

package model

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseHFConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		json string
		want Config
	}{
		{"llama3.1-8b", `{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":4096,"intermediate_size":14336,
			"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,"max_position_embeddings":131072,
			"rope_theta":500000.0,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},
			"rms_norm_eps":1e-05,"tie_word_embeddings":false,"bos_token_id":128000,"eos_token_id":[128001,128008,128009],"hidden_act":"silu","torch_dtype":"bfloat16"}`,
			Config{Arch: ArchLlama, Dim: 4096, HiddenDim: 14336, Layers: 32, Heads: 32, KVHeads: 8, HeadDim: 128, Vocab: 128256,
				MaxPositions: 131072, RopeTheta: 500000, NormEps: 1e-5, BOS: 128000, EOS: []int32{128001, 128008, 128009},
				RopeScaling: &RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 8192}}},
		{"llama2-7b (no kv heads, rope_scaling null)", `{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":11008,
			"num_hidden_layers":32,"num_attention_heads":32,"vocab_size":32000,"max_position_embeddings":4096,"rms_norm_eps":1e-05,
			"rope_scaling":null,"bos_token_id":1,"eos_token_id":2}`,
			Config{Arch: ArchLlama, Dim: 4096, HiddenDim: 11008, Layers: 32, Heads: 32, KVHeads: 32, HeadDim: 128, Vocab: 32000,
				MaxPositions: 4096, RopeTheta: 10000, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}},
		{"mistral-7b-v0.1 (sliding window 4096)", `{"architectures":["MistralForCausalLM"],"model_type":"mistral","hidden_size":4096,
			"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":32000,
			"max_position_embeddings":32768,"rope_theta":10000.0,"rms_norm_eps":1e-05,"sliding_window":4096,"tie_word_embeddings":false,
			"bos_token_id":1,"eos_token_id":2}`,
			Config{Arch: ArchMistral, Dim: 4096, HiddenDim: 14336, Layers: 32, Heads: 32, KVHeads: 8, HeadDim: 128, Vocab: 32000,
				MaxPositions: 4096, RopeTheta: 10000, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}},
		{"qwen2.5-0.5b (bias, tied, window unused)", `{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":896,
			"intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"vocab_size":151936,
			"max_position_embeddings":32768,"rope_theta":1000000.0,"rms_norm_eps":1e-06,"sliding_window":32768,"use_sliding_window":false,
			"tie_word_embeddings":true,"bos_token_id":151643,"eos_token_id":151643}`,
			Config{Arch: ArchQwen2, Dim: 896, HiddenDim: 4864, Layers: 24, Heads: 14, KVHeads: 2, HeadDim: 64, Vocab: 151936,
				MaxPositions: 32768, RopeTheta: 1e6, NormEps: 1e-6, QKVBias: true, TiedEmbeddings: true, BOS: 151643, EOS: []int32{151643}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseHFConfig([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("config mismatch (-want +got):\n%s", d)
			}
		})
	}
	for _, bad := range []string{
		`{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":64,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10,"max_position_embeddings":8,"attention_bias":true}`,
		`{"architectures":["MixtralForCausalLM"]}`,
		`{"model_type":"llama","hidden_size":-1}`,
		`{"architectures":["LlamaForCausalLM"],"eos_token_id":"x","hidden_size":64,"intermediate_size":64,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10,"max_position_embeddings":8}`,
	} {
		if _, err := parseHFConfig([]byte(bad)); err == nil {
			t.Errorf("parseHFConfig(%s): no error", bad)
		} else if errors.Is(err, ErrUnsupported) {
			t.Logf("%v", err)
		}
	}
}

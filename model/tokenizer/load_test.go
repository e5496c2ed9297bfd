package tokenizer

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
)

func TestLoad(t *testing.T) {
	p := shareddata.Path(t, "models/stories260K/tok512.bin")
	tok, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tok.(*Llama2c); !ok {
		t.Fatalf("Load(%s) = %T, want *Llama2c", p, tok)
	}
	got, err := Llama2cBeside(shareddata.Path(t, "models/stories260K/stories260K.bin"))
	if err != nil || got != p {
		t.Errorf("Llama2cBeside = %q, %v; want %q", got, err, p)
	}
	if _, err := Llama2cBeside(filepath.Join(t.TempDir(), "model.bin")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Llama2cBeside in an empty dir: err = %v, want ErrNotFound", err)
	}
	ct, err := TemplateFor(tok)
	if err != nil || ct.Source() != "" {
		t.Errorf("TemplateFor(llama2c) = %v, %v; want the default", ct, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("Load(missing) succeeded")
	}
	bad := filepath.Join(t.TempDir(), "tok.bin")
	if err := os.WriteFile(bad, []byte{1, 2}, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); !errors.Is(err, ErrFormat) {
		t.Errorf("Load(2-byte file): err = %v, want ErrFormat", err)
	}
}

func TestTokenRange(t *testing.T) {
	// Tokens of "ab cd\nef": "ab" " cd" "\n" "ef"
	spans := []Span{{0, 2}, {2, 5}, {5, 6}, {6, 8}}
	tests := []struct {
		part       Span
		begin, end int
		exact      bool
	}{
		{Span{0, 2}, 0, 1, true},
		{Span{3, 5}, 1, 2, false}, // " cd" straddles: the space is not in the part
		{Span{6, 8}, 3, 4, true},
		{Span{2, 8}, 1, 4, true},
		{Span{6, 6}, 3, 3, true},
		{Span{8, 8}, 4, 4, true},
		{Span{4, 4}, 2, 2, false}, // inside " cd"
	}
	for _, tt := range tests {
		b, e, ex := TokenRange(spans, tt.part)
		if b != tt.begin || e != tt.end || ex != tt.exact {
			t.Errorf("TokenRange(%v) = %d, %d, %v; want %d, %d, %v", tt.part, b, e, ex, tt.begin, tt.end, tt.exact)
		}
	}
}

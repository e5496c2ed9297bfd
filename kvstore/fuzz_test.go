package kvstore

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecodeManifest: arbitrary Redis manifest values never panic and what
// decodes re-encodes identically.
func FuzzDecodeManifest(f *testing.F) {
	f.Add(manifest{parts: 3, total: 2500, partLen: 1024, sum: 42}.encode())
	f.Add([]byte("FRKP"))
	f.Add(make([]byte, manifestSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeManifest(data)
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("non-corrupt error %v", err)
			}
			return
		}
		if !bytes.Equal(m.encode(), data) {
			t.Fatal("decode/encode not identical")
		}
	})
}

// FuzzParseSize: never panics, never returns a negative size.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"2GiB", "1.5GB", "0", "", "1e9", "9999999999999TiB", ".", "8 M"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
	})
}

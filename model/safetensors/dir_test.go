package safetensors

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func scalar(name string, v float32) Tensor {
	return Tensor{Name: name, DType: F32, Shape: []int{1}, Data: f32bytes(v)}
}

func writeFile(t *testing.T, path string, ts ...Tensor) {
	t.Helper()
	if err := Write(path, ts, nil); err != nil {
		t.Fatal(err)
	}
}

func writeIndex(t *testing.T, dir, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, IndexFile), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func setValues(t *testing.T, s *Set) map[string]float32 {
	t.Helper()
	out := map[string]float32{}
	for n, tn := range s.Tensors {
		v, err := tn.Float32()
		if err != nil {
			t.Fatal(err)
		}
		out[n] = v[0]
	}
	return out
}

func TestOpenDir(t *testing.T) {
	for _, tt := range []struct {
		name  string
		files map[string][]Tensor
		index string // IndexFile's content; "" writes none
		want  map[string]float32
		check func(t *testing.T, s *Set)
	}{
		{name: "single",
			files: map[string][]Tensor{"model.safetensors": {scalar("a", 1), scalar("b", 2)}},
			want:  map[string]float32{"a": 1, "b": 2}},
		{name: "several without index",
			files: map[string][]Tensor{"x.safetensors": {scalar("a", 1)}, "y.safetensors": {scalar("b", 2)}},
			want:  map[string]float32{"a": 1, "b": 2},
			check: func(t *testing.T, s *Set) {
				if len(s.Files) != 2 || !slices.IsSortedFunc(s.Files, func(a, b *File) int { return strings.Compare(a.Path(), b.Path()) }) {
					t.Errorf("Files not the two shards in name order")
				}
			}},
		{name: "sharded",
			files: map[string][]Tensor{
				"model-00001-of-00002.safetensors": {scalar("a", 1), scalar("c", 3)},
				"model-00002-of-00002.safetensors": {scalar("b", 2)},
				"stray.safetensors":                {scalar("z", 9)}, // not in the index: ignored
			},
			index: `{"metadata":{"total_size":12},"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}`,
			want:  map[string]float32{"a": 1, "b": 2, "c": 3}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, ts := range tt.files {
				writeFile(t, filepath.Join(dir, name), ts...)
			}
			if tt.index != "" {
				writeIndex(t, dir, tt.index)
			}
			s, err := OpenDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close() // on a failure before the Close checks below
			if diff := cmp.Diff(tt.want, setValues(t, s)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if tt.check != nil {
				tt.check(t, s)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
		})
	}
}

func TestOpenDirErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  error
	}{
		{"empty dir", func(t *testing.T, dir string) {}, ErrNotFound},
		{"missing shard", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "s1.safetensors"), scalar("a", 1))
			writeIndex(t, dir, `{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}`)
		}, ErrMissingShard},
		{"tensor not in its shard", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "s1.safetensors"), scalar("a", 1))
			writeFile(t, filepath.Join(dir, "s2.safetensors"), scalar("b", 1))
			writeIndex(t, dir, `{"weight_map":{"a":"s2.safetensors","b":"s2.safetensors"}}`)
		}, ErrHeader},
		{"duplicate across files", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "s1.safetensors"), scalar("a", 1))
			writeFile(t, filepath.Join(dir, "s2.safetensors"), scalar("a", 2))
		}, ErrDuplicate},
		{"index escapes dir", func(t *testing.T, dir string) {
			writeIndex(t, dir, `{"weight_map":{"a":"../other.safetensors"}}`)
		}, ErrHeader},
		{"index not json", func(t *testing.T, dir string) { writeIndex(t, dir, `{"weight_map":`) }, ErrHeader},
		{"index empty", func(t *testing.T, dir string) { writeIndex(t, dir, `{"weight_map":{}}`) }, ErrHeader},
		{"corrupt shard", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "m.safetensors"), []byte("garbage!garbage"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, ErrHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.setup(t, dir)
			s, err := OpenDir(dir)
			if !errors.Is(err, tt.want) {
				t.Fatalf("OpenDir = %v, %v; want %v", s, err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) || e.File == "" {
				t.Errorf("error %v does not name a file", err)
			}
		})
	}
	if _, err := OpenDir(filepath.Join(t.TempDir(), "absent")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenDir(absent) = %v, want ErrNotExist", err)
	}
}

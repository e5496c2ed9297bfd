package safetensors

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// Encode returns the bytes of a safetensors file holding tensors and
// metadata. The layout is deterministic and the one Hugging Face writes:
// tensors ordered by element size (largest first, so every tensor starts
// aligned to its element size) then by name, the header padded with spaces
// so the data section starts at a multiple of 8, "__metadata__" first.
func Encode(tensors []Tensor, metadata map[string]string) ([]byte, error) {
	ts := slices.Clone(tensors)
	seen := make(map[string]bool, len(ts))
	for _, t := range ts {
		if t.Name == metaKey {
			return nil, &Error{Tensor: t.Name, Err: fmt.Errorf("%w: reserved name", ErrHeader)}
		}
		if seen[t.Name] {
			return nil, &Error{Tensor: t.Name, Err: ErrDuplicate}
		}
		seen[t.Name] = true
		size, ok := t.DType.Size()
		if !ok {
			return nil, &Error{Tensor: t.Name, Err: fmt.Errorf("%w %q", ErrDType, t.DType)}
		}
		shape := make([]int64, len(t.Shape))
		for i, d := range t.Shape {
			if d < 0 {
				return nil, &Error{Tensor: t.Name, Err: fmt.Errorf("%w: negative dimension in %v", ErrShape, t.Shape)}
			}
			shape[i] = int64(d)
		}
		n, err := byteLen(shape, size)
		if err != nil {
			return nil, &Error{Tensor: t.Name, Err: err}
		}
		if n != int64(len(t.Data)) {
			return nil, &Error{Tensor: t.Name, Err: fmt.Errorf("%w: shape %v of %s is %d bytes, data has %d", ErrShape, t.Shape, t.DType, n, len(t.Data))}
		}
	}
	slices.SortFunc(ts, func(a, b Tensor) int {
		sa, _ := a.DType.Size()
		sb, _ := b.DType.Size()
		return cmp.Or(cmp.Compare(sb, sa), cmp.Compare(a.Name, b.Name))
	})

	var h bytes.Buffer
	h.WriteByte('{')
	if len(metadata) > 0 {
		h.WriteString(`"__metadata__":{`)
		for i, k := range slices.Sorted(maps.Keys(metadata)) {
			if i > 0 {
				h.WriteByte(',')
			}
			writeJSONString(&h, k)
			h.WriteByte(':')
			writeJSONString(&h, metadata[k])
		}
		h.WriteByte('}')
	}
	var off int64
	for i, t := range ts {
		if i > 0 || len(metadata) > 0 {
			h.WriteByte(',')
		}
		writeJSONString(&h, t.Name)
		h.WriteString(`:{"dtype":`)
		writeJSONString(&h, string(t.DType))
		h.WriteString(`,"shape":[`)
		for j, d := range t.Shape {
			if j > 0 {
				h.WriteByte(',')
			}
			h.WriteString(strconv.Itoa(d))
		}
		end := off + int64(len(t.Data))
		fmt.Fprintf(&h, `],"data_offsets":[%d,%d]}`, off, end)
		off = end
	}
	h.WriteByte('}')
	for (8+h.Len())%8 != 0 {
		h.WriteByte(' ')
	}
	if h.Len() > MaxHeaderSize {
		return nil, &Error{Err: fmt.Errorf("%w: header of %d bytes exceeds %d", ErrHeader, h.Len(), MaxHeaderSize)}
	}

	out := make([]byte, 8, 8+h.Len()+int(off))
	binary.LittleEndian.PutUint64(out, uint64(h.Len()))
	out = append(out, h.Bytes()...)
	for _, t := range ts {
		out = append(out, t.Data...)
	}
	return out, nil
}

// Write writes tensors to path (atomically: temp file + rename), laid out
// as Encode describes. On error path is left untouched.
func Write(path string, tensors []Tensor, metadata map[string]string) error {
	buf, err := Encode(tensors, metadata)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.File = path
		}
		return err
	}
	fail := func(err error) error { return &Error{File: path, Err: err} }
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if _, err := tmp.Write(buf); err != nil {
		tmp.Close()
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fail(err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fail(err)
	}
	// Make the rename durable; failure to sync a directory is not fatal on
	// file systems that do not support it.
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func writeJSONString(b *bytes.Buffer, s string) {
	q, _ := json.Marshal(s) // marshalling a string cannot fail
	b.Write(q)
}

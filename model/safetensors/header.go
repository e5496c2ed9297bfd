package safetensors

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
)

// MaxHeaderSize is the largest JSON header accepted, as in the reference
// implementation (100 MB); a length beyond it is a corrupt or hostile file.
const MaxHeaderSize = 100_000_000

// TensorInfo is one header entry. [Begin, End) is the byte range of the
// tensor relative to the start of the data section.
type TensorInfo struct {
	Name       string
	DType      DType
	Shape      []int
	Begin, End int64
}

// Header is a parsed, validated header.
type Header struct {
	Metadata map[string]string // nil when the header has no __metadata__
	Tensors  []TensorInfo      // in data order (by Begin, then name)
}

// ParseHeader parses and validates the JSON header of a file whose data
// section is dataLen bytes long. Errors are *Error values wrapping
// ErrHeader, ErrDType, ErrShape, ErrOffsets, ErrTruncated or ErrDuplicate.
func ParseHeader(header []byte, dataLen int64) (*Header, error) {
	if len(header) > MaxHeaderSize {
		return nil, &Error{Err: fmt.Errorf("%w: header length %d exceeds %d", ErrHeader, len(header), MaxHeaderSize)}
	}
	if len(header) == 0 || header[0] != '{' {
		return nil, &Error{Err: fmt.Errorf("%w: does not start with '{'", ErrHeader)}
	}
	if dataLen < 0 {
		return nil, &Error{Err: fmt.Errorf("%w: negative data length %d", ErrHeader, dataLen)}
	}
	p := &parser{dec: json.NewDecoder(bytes.NewReader(header))}
	p.dec.UseNumber()
	h := &Header{}
	seen := map[string]bool{}
	if err := p.delim('{'); err != nil {
		return nil, &Error{Err: err}
	}
	for p.dec.More() {
		name, err := p.str()
		if err != nil {
			return nil, &Error{Err: err}
		}
		if seen[name] {
			return nil, &Error{Tensor: name, Err: ErrDuplicate}
		}
		seen[name] = true
		if name == metaKey {
			if h.Metadata, err = p.metadata(); err != nil {
				return nil, &Error{Err: fmt.Errorf("__metadata__: %w", err)}
			}
			continue
		}
		ti, err := p.tensor(name)
		if err != nil {
			return nil, &Error{Tensor: name, Err: err}
		}
		h.Tensors = append(h.Tensors, ti)
	}
	if err := p.delim('}'); err != nil {
		return nil, &Error{Err: err}
	}
	// Only padding may follow the object (writers pad with spaces to align
	// the data section to 8 bytes).
	if rest := header[p.dec.InputOffset():]; len(bytes.TrimLeft(rest, " \t\r\n")) != 0 {
		return nil, &Error{Err: fmt.Errorf("%w: %d bytes of trailing garbage after the JSON object", ErrHeader, len(bytes.TrimLeft(rest, " \t\r\n")))}
	}
	if err := checkLayout(h.Tensors, dataLen); err != nil {
		return nil, err
	}
	return h, nil
}

// checkLayout sorts tensors into data order and checks that they tile
// [0, dataLen) exactly: no overlap, no gap, nothing past the end.
func checkLayout(ts []TensorInfo, dataLen int64) error {
	slices.SortFunc(ts, func(a, b TensorInfo) int {
		return cmp.Or(cmp.Compare(a.Begin, b.Begin), cmp.Compare(a.End, b.End), cmp.Compare(a.Name, b.Name))
	})
	var pos int64
	for _, t := range ts {
		switch {
		case t.End > dataLen:
			return &Error{Tensor: t.Name, Err: fmt.Errorf("%w: data [%d, %d) runs past the %d bytes of data", ErrTruncated, t.Begin, t.End, dataLen)}
		case t.Begin < pos:
			return &Error{Tensor: t.Name, Err: fmt.Errorf("%w: data [%d, %d) overlaps the previous tensor, which ends at %d", ErrOffsets, t.Begin, t.End, pos)}
		case t.Begin > pos:
			return &Error{Tensor: t.Name, Err: fmt.Errorf("%w: gap [%d, %d) before this tensor", ErrOffsets, pos, t.Begin)}
		}
		pos = t.End
	}
	if pos != dataLen {
		return &Error{Err: fmt.Errorf("%w: tensors cover %d of %d data bytes", ErrOffsets, pos, dataLen)}
	}
	return nil
}

// parser walks the header token by token so that duplicate keys, unknown
// fields and non-integer numbers are caught (encoding/json's struct and map
// decoding silently keeps the last duplicate and accepts 1.0 as an int).
type parser struct{ dec *json.Decoder }

func (p *parser) token() (json.Token, error) {
	t, err := p.dec.Token()
	if err == io.EOF {
		return nil, fmt.Errorf("%w: unexpected end of JSON", ErrHeader)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHeader, err)
	}
	return t, nil
}

func (p *parser) delim(d json.Delim) error {
	t, err := p.token()
	if err != nil {
		return err
	}
	if got, ok := t.(json.Delim); !ok || got != d {
		return fmt.Errorf("%w: got %v, want %q", ErrHeader, t, d)
	}
	return nil
}

func (p *parser) str() (string, error) {
	t, err := p.token()
	if err != nil {
		return "", err
	}
	s, ok := t.(string)
	if !ok {
		return "", fmt.Errorf("%w: got %v, want a string", ErrHeader, t)
	}
	return s, nil
}

// int reads a JSON number that must be a non-negative integer without
// fraction or exponent.
func (p *parser) int() (int64, error) {
	t, err := p.token()
	if err != nil {
		return 0, err
	}
	n, ok := t.(json.Number)
	if !ok {
		return 0, fmt.Errorf("%w: got %v, want an integer", ErrHeader, t)
	}
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%w: %q is not a non-negative integer", ErrHeader, string(n))
	}
	return v, nil
}

func (p *parser) ints() ([]int64, error) {
	if err := p.delim('['); err != nil {
		return nil, err
	}
	var out []int64
	for p.dec.More() {
		v, err := p.int()
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, p.delim(']')
}

func (p *parser) metadata() (map[string]string, error) {
	if err := p.delim('{'); err != nil {
		return nil, err
	}
	m := map[string]string{}
	for p.dec.More() {
		k, err := p.str()
		if err != nil {
			return nil, err
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("%w: key %q twice", ErrHeader, k)
		}
		v, err := p.str()
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		m[k] = v
	}
	return m, p.delim('}')
}

func (p *parser) tensor(name string) (TensorInfo, error) {
	ti := TensorInfo{Name: name}
	if err := p.delim('{'); err != nil {
		return ti, err
	}
	var shape, offs []int64
	var haveDType, haveShape, haveOffs bool
	for p.dec.More() {
		field, err := p.str()
		if err != nil {
			return ti, err
		}
		dup := false
		switch field {
		case "dtype":
			dup, haveDType = haveDType, true
			s, err := p.str()
			if err != nil {
				return ti, err
			}
			ti.DType = DType(s)
		case "shape":
			dup, haveShape = haveShape, true
			if shape, err = p.ints(); err != nil {
				return ti, err
			}
		case "data_offsets":
			dup, haveOffs = haveOffs, true
			if offs, err = p.ints(); err != nil {
				return ti, err
			}
		default:
			return ti, fmt.Errorf("%w: unknown field %q", ErrHeader, field)
		}
		if dup {
			return ti, fmt.Errorf("%w: field %q twice", ErrHeader, field)
		}
	}
	if err := p.delim('}'); err != nil {
		return ti, err
	}
	if !haveDType || !haveShape || !haveOffs {
		return ti, fmt.Errorf("%w: needs dtype, shape and data_offsets", ErrHeader)
	}
	size, ok := ti.DType.Size()
	if !ok {
		return ti, fmt.Errorf("%w %q", ErrDType, ti.DType)
	}
	if len(offs) != 2 {
		return ti, fmt.Errorf("%w: data_offsets has %d values, want 2", ErrHeader, len(offs))
	}
	ti.Begin, ti.End = offs[0], offs[1]
	if ti.Begin > ti.End {
		return ti, fmt.Errorf("%w: data_offsets [%d, %d) end before they begin", ErrOffsets, ti.Begin, ti.End)
	}
	bytes, err := byteLen(shape, size)
	if err != nil {
		return ti, err
	}
	if bytes != ti.End-ti.Begin {
		return ti, fmt.Errorf("%w: shape %v of %s is %d bytes, data_offsets [%d, %d) hold %d", ErrShape, shape, ti.DType, bytes, ti.Begin, ti.End, ti.End-ti.Begin)
	}
	ti.Shape = make([]int, len(shape))
	for i, d := range shape {
		ti.Shape[i] = int(d) // fits: the byte length fits in int64 and each dim is at most that
	}
	return ti, nil
}

var errOverflow = errors.New("overflows int64")

// byteLen is Π shape · size, refusing overflow. A zero dimension makes the
// tensor empty whatever the others are, but each dimension must still fit.
func byteLen(shape []int64, size int) (int64, error) {
	for _, d := range shape {
		if d == 0 {
			return 0, nil
		}
		if d > math.MaxInt {
			return 0, fmt.Errorf("%w: dimension %d %v", ErrShape, d, errOverflow)
		}
	}
	n := int64(size)
	for _, d := range shape {
		if n > math.MaxInt64/d {
			return 0, fmt.Errorf("%w: shape %v %v", ErrShape, shape, errOverflow)
		}
		n *= d
	}
	return n, nil
}

// Package safetensors reads and writes the Hugging Face safetensors format:
// an 8-byte little-endian header length, a JSON header mapping tensor names to
// {dtype, shape, data_offsets}, then the raw data. Files are memory-mapped.
package safetensors

// DType is a safetensors element type as spelled in the header ("F32", "F16", "BF16", ...).
type DType string

// Tensor is one named tensor. Data aliases the mapped file when read.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// Float32 returns the tensor converted to float32 (F32, F16 and BF16).
// For F32 on a little-endian host the result may alias Data.
func (t Tensor) Float32() ([]float32, error) { panic("not implemented yet") }

// File is an opened (memory-mapped) safetensors file.
type File struct {
	Metadata map[string]string
	Tensors  map[string]Tensor
}

// Open memory-maps and parses path.
func Open(path string) (*File, error) { panic("not implemented yet") }

// Close unmaps the file; tensors read from it must not be used afterwards.
func (f *File) Close() error { panic("not implemented yet") }

// Set is every tensor of a model directory: a single model.safetensors, or
// shards listed by model.safetensors.index.json.
type Set struct {
	Tensors map[string]Tensor
}

// OpenDir opens all safetensors files of a Hugging Face model directory.
func OpenDir(dir string) (*Set, error) { panic("not implemented yet") }

// Close closes every file of the set.
func (s *Set) Close() error { panic("not implemented yet") }

// Write writes tensors to path (atomically: temp file + rename).
func Write(path string, tensors []Tensor, metadata map[string]string) error {
	panic("not implemented yet")
}

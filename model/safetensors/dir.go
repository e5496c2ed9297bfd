package safetensors

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// IndexFile is the name of the shard index of a sharded Hugging Face checkpoint.
const IndexFile = "model.safetensors.index.json"

// Set is every tensor of a model directory: a single model.safetensors, or
// shards listed by model.safetensors.index.json.
type Set struct {
	Tensors map[string]Tensor
	Files   []*File // the opened files, in name order
}

// OpenDir opens all safetensors files of a Hugging Face model directory.
//
// With model.safetensors.index.json present, exactly the shards its
// weight_map names are opened, and every tensor it lists must be in the shard
// it names (ErrMissingShard when a shard file is absent, ErrHeader when a
// tensor is not where the index says). Without an index every *.safetensors
// file of dir is opened. A tensor name present in two files is an error
// (ErrDuplicate); no files at all is ErrNotFound.
func OpenDir(dir string) (*Set, error) {
	var files []string
	var weightMap map[string]string
	idxPath := filepath.Join(dir, IndexFile)
	if raw, err := os.ReadFile(idxPath); err == nil {
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(raw, &idx); err != nil {
			return nil, &Error{File: idxPath, Err: fmt.Errorf("%w: %v", ErrHeader, err)}
		}
		if len(idx.WeightMap) == 0 {
			return nil, &Error{File: idxPath, Err: fmt.Errorf("%w: empty weight_map", ErrHeader)}
		}
		seen := map[string]bool{}
		for name, shard := range idx.WeightMap {
			// Shards are plain file names beside the index; refuse paths
			// that would reach outside the model directory.
			if shard == "" || shard != filepath.Base(shard) || shard == "." || shard == ".." || strings.ContainsRune(shard, os.PathSeparator) {
				return nil, &Error{File: idxPath, Tensor: name, Err: fmt.Errorf("%w: shard %q is not a file name", ErrHeader, shard)}
			}
			if !seen[shard] {
				seen[shard] = true
				files = append(files, shard)
			}
		}
		weightMap = idx.WeightMap
	} else if errors.Is(err, fs.ErrNotExist) {
		matches, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
		if err != nil {
			return nil, &Error{File: dir, Err: err}
		}
		for _, m := range matches {
			files = append(files, filepath.Base(m))
		}
		if len(files) == 0 {
			if _, err := os.Stat(dir); err != nil {
				return nil, &Error{File: dir, Err: err}
			}
			return nil, &Error{File: dir, Err: ErrNotFound}
		}
	} else {
		return nil, &Error{File: idxPath, Err: err}
	}
	slices.Sort(files)

	s := &Set{Tensors: map[string]Tensor{}}
	from := map[string]string{} // tensor -> file
	for _, name := range files {
		p := filepath.Join(dir, name)
		f, err := Open(p)
		if err != nil {
			s.Close()
			if weightMap != nil && errors.Is(err, fs.ErrNotExist) {
				return nil, &Error{File: p, Err: fmt.Errorf("%w (listed in %s)", ErrMissingShard, IndexFile)}
			}
			return nil, err
		}
		s.Files = append(s.Files, f)
		for tn, t := range f.Tensors {
			if prev, dup := from[tn]; dup {
				s.Close()
				return nil, &Error{File: p, Tensor: tn, Err: fmt.Errorf("%w: also in %s", ErrDuplicate, prev)}
			}
			from[tn] = name
			s.Tensors[tn] = t
		}
	}
	if weightMap != nil {
		names := slices.Sorted(maps.Keys(weightMap))
		for _, tn := range names {
			if got := from[tn]; got != weightMap[tn] {
				s.Close()
				return nil, &Error{File: filepath.Join(dir, weightMap[tn]), Tensor: tn,
					Err: fmt.Errorf("%w: %s lists the tensor in this shard, but it is not there", ErrHeader, IndexFile)}
			}
		}
	}
	return s, nil
}

// Close closes every file of the set. Tensors must not be used afterwards.
func (s *Set) Close() error {
	var errs []error
	for _, f := range s.Files {
		errs = append(errs, f.Close())
	}
	s.Files, s.Tensors = nil, nil
	return errors.Join(errs...)
}

package bench

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

// Passage is one retrieved passage of an example.
type Passage struct {
	Title string `json:"title"`
	Text  string `json:"text"`
	// Gold marks the passage that holds the answer, where the set says so
	// (NQ-open's isgold).
	Gold bool `json:"isgold,omitempty"`
}

// Example is one RAG question with its gold answers and passages.
type Example struct {
	// ID is "<dataset>/<index in the file>".
	ID       string    `json:"id"`
	Question string    `json:"question"`
	Answers  []string  `json:"answers"`
	Passages []Passage `json:"ctxs"`
}

// Dataset is a named list of examples.
type Dataset struct {
	Name     string
	Examples []Example
}

// ErrDataset is matched by every error about a dataset file's content.
var ErrDataset = errors.New("bench: bad dataset")

// rawExample is the on-disk shape shared by the CacheBlend MuSiQue list,
// NQ-open JSONL and LongBench-style JSONL. LongBench itself names the
// question "input"; a plain string answer is accepted as one answer.
type rawExample struct {
	Question *string         `json:"question"`
	Input    *string         `json:"input"`
	Answers  json.RawMessage `json:"answers"`
	Answer   json.RawMessage `json:"answer"`
	Ctxs     []struct {
		Title  string `json:"title"`
		Text   string `json:"text"`
		IsGold bool   `json:"isgold"`
	} `json:"ctxs"`
}

func (r *rawExample) example(id string) (Example, error) {
	e := Example{ID: id}
	switch {
	case r.Question != nil:
		e.Question = *r.Question
	case r.Input != nil:
		e.Question = *r.Input
	}
	if strings.TrimSpace(e.Question) == "" {
		return Example{}, fmt.Errorf("%w: %s: no question", ErrDataset, id)
	}
	ans := r.Answers
	if len(ans) == 0 {
		ans = r.Answer
	}
	var list []string
	if err := json.Unmarshal(ans, &list); err != nil {
		var one string
		if err2 := json.Unmarshal(ans, &one); err2 != nil {
			return Example{}, fmt.Errorf("%w: %s: answers must be a string or a list of strings", ErrDataset, id)
		}
		list = []string{one}
	}
	for _, a := range list {
		if strings.TrimSpace(a) != "" {
			e.Answers = append(e.Answers, a)
		}
	}
	if len(e.Answers) == 0 {
		return Example{}, fmt.Errorf("%w: %s: no answer", ErrDataset, id)
	}
	for _, c := range r.Ctxs {
		if strings.TrimSpace(c.Text) == "" {
			continue
		}
		e.Passages = append(e.Passages, Passage{Title: c.Title, Text: c.Text, Gold: c.IsGold})
	}
	if len(e.Passages) == 0 {
		return Example{}, fmt.Errorf("%w: %s: no passage", ErrDataset, id)
	}
	return e, nil
}

// ParseDataset reads examples from data: a JSON list (the CacheBlend MuSiQue
// file) or JSON lines (NQ-open, LongBench-style), optionally gzipped. Every
// example needs a question ("question" or LongBench's "input"), at least one
// answer ("answers": list or string) and at least one non-empty passage
// ("ctxs": [{title, text}]). Errors match ErrDataset and name the example.
func ParseDataset(name string, data []byte) (*Dataset, error) {
	if len(data) >= 2 && data[0] == 0x1f && data[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrDataset, name, err)
		}
		// Bound the inflated size: a dataset is text, 1 GiB is far beyond any.
		data, err = io.ReadAll(io.LimitReader(zr, 1<<30))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrDataset, name, err)
		}
	}
	ds := &Dataset{Name: name}
	trimmed := bytes.TrimLeft(data, " \t\r\n\ufeff")
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var raws []rawExample
		if err := json.Unmarshal(trimmed, &raws); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrDataset, name, err)
		}
		for i := range raws {
			e, err := raws[i].example(fmt.Sprintf("%s/%d", name, i))
			if err != nil {
				return nil, err
			}
			ds.Examples = append(ds.Examples, e)
		}
	} else {
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
		line := 0
		for sc.Scan() {
			line++
			b := bytes.TrimSpace(sc.Bytes())
			if len(b) == 0 {
				continue
			}
			var r rawExample
			if err := json.Unmarshal(b, &r); err != nil {
				return nil, fmt.Errorf("%w: %s line %d: %v", ErrDataset, name, line, err)
			}
			e, err := r.example(fmt.Sprintf("%s/%d", name, len(ds.Examples)))
			if err != nil {
				return nil, fmt.Errorf("%w (line %d)", err, line)
			}
			ds.Examples = append(ds.Examples, e)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrDataset, name, err)
		}
	}
	if len(ds.Examples) == 0 {
		return nil, fmt.Errorf("%w: %s: no example", ErrDataset, name)
	}
	return ds, nil
}

// LoadDataset reads a dataset file (see ParseDataset); its name is the
// file's base name without extensions.
func LoadDataset(path string) (*Dataset, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	name := filepath.Base(path)
	if i := strings.IndexByte(name, '.'); i > 0 {
		name = name[:i]
	}
	return ParseDataset(name, data)
}

// Limit keeps the first n examples (all when n <= 0 or n >= len).
func (d *Dataset) Limit(n int) {
	if n > 0 && n < len(d.Examples) {
		d.Examples = d.Examples[:n]
	}
}

// AddDistractors gives every example with fewer than k passages distractors
// up to k: gold passages of other examples of the set (a retrieval pool made
// of the set itself, as "Lost in the Middle" pools NQ-open), drawn with seed;
// the example's own passages go at a seeded position among them. It is how
// the NQ-open oracle set (one gold passage per question) gets a RAG prompt of
// k chunks.
func (d *Dataset) AddDistractors(k int, seed uint64) {
	if len(d.Examples) < 2 {
		return
	}
	rng := rand.New(rand.NewPCG(seed, 0xd157))
	pool := make([]Passage, 0, len(d.Examples))
	owner := make([]int, 0, len(d.Examples))
	for i, e := range d.Examples {
		pool = append(pool, Passage{Title: e.Passages[0].Title, Text: e.Passages[0].Text})
		owner = append(owner, i)
	}
	for i := range d.Examples {
		e := &d.Examples[i]
		if len(e.Passages) >= k {
			continue
		}
		var extra []Passage
		for tries := 0; len(e.Passages)+len(extra) < k && tries < 8*k; tries++ {
			j := rng.IntN(len(pool))
			if owner[j] == i || pool[j].Text == e.Passages[0].Text {
				continue
			}
			extra = append(extra, pool[j])
		}
		at := rng.IntN(len(extra) + 1)
		ps := make([]Passage, 0, len(e.Passages)+len(extra))
		ps = append(ps, extra[:at]...)
		ps = append(ps, e.Passages...)
		ps = append(ps, extra[at:]...)
		e.Passages = ps
	}
}

// Package jsonobj edits JSON objects in place: it finds the members of an
// object by byte offsets so that a member can be removed, added or replaced
// while every other byte of the body stays exactly as the client sent it.
// The sidecar's proxy (which strips what only it may set) and its fusion
// path (which strips markers from a prompt) both edit bodies with it.
package jsonobj

import (
	"encoding/json"
	"errors"
)

// Keys are matched exactly (case-sensitive, after unescaping), as the
// engine's JSON parser does, unlike encoding/json's case-insensitive struct
// decoding.

// Member is one "key": value pair of an object.
type Member struct {
	Key              string // unescaped
	Start            int    // offset of the key's opening quote
	ValStart, ValEnd int    // the value is b[ValStart:ValEnd]
}

var ErrNotObject = errors.New("jsonobj: JSON value is not an object")

// Members returns the members of the object b in order. b must be valid
// JSON (the caller checks json.Valid once for the whole body); duplicates are
// kept, and the last one is the one that counts.
func Members(b []byte) ([]Member, error) {
	i := SkipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, ErrNotObject
	}
	i = SkipSpace(b, i+1)
	var ms []Member
	if i < len(b) && b[i] == '}' {
		return ms, nil
	}
	for i < len(b) {
		if b[i] != '"' {
			return nil, ErrNotObject
		}
		ks := i
		ke := skipString(b, i)
		var key string
		if err := json.Unmarshal(b[ks:ke], &key); err != nil {
			return nil, err
		}
		i = SkipSpace(b, ke)
		if i >= len(b) || b[i] != ':' {
			return nil, ErrNotObject
		}
		vs := SkipSpace(b, i+1)
		ve := skipValue(b, vs)
		ms = append(ms, Member{Key: key, Start: ks, ValStart: vs, ValEnd: ve})
		i = SkipSpace(b, ve)
		if i >= len(b) {
			return nil, ErrNotObject
		}
		if b[i] == '}' {
			return ms, nil
		}
		if b[i] != ',' {
			return nil, ErrNotObject
		}
		i = SkipSpace(b, i+1)
	}
	return nil, ErrNotObject
}

// Last returns the member named key that counts (the last one).
func Last(ms []Member, key string) (Member, bool) {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Key == key {
			return ms[i], true
		}
	}
	return Member{}, false
}

// Remove returns a copy of the object b without any member named key,
// with every other byte unchanged, and whether one was found.
func Remove(b []byte, key string) ([]byte, bool, error) {
	return RemoveFunc(b, func(k string) bool { return k == key })
}

// RemoveFunc returns a copy of the object b without the members whose
// (unescaped) name match accepts, every other byte unchanged, and whether
// one was found.
func RemoveFunc(b []byte, match func(key string) bool) ([]byte, bool, error) {
	found := false
	for {
		ms, err := Members(b)
		if err != nil {
			return nil, false, err
		}
		idx := -1
		for i, m := range ms {
			if match(m.Key) {
				idx = i
				break
			}
		}
		if idx < 0 {
			return b, found, nil
		}
		var cut0, cut1 int
		switch {
		case idx > 0: // drop from the end of the previous value: `, "key": value`
			cut0, cut1 = ms[idx-1].ValEnd, ms[idx].ValEnd
		case len(ms) > 1: // first of several: drop `"key": value, ` up to the next key
			cut0, cut1 = ms[0].Start, ms[1].Start
		default: // the only Member
			cut0, cut1 = ms[0].Start, ms[0].ValEnd
		}
		out := make([]byte, 0, len(b)-(cut1-cut0))
		out = append(out, b[:cut0]...)
		out = append(out, b[cut1:]...)
		b = out
		found = true
	}
}

// Append returns a copy of the object b with `"key": raw` added as its
// last member. The caller removes any existing member of that name first.
func Append(b []byte, key string, raw []byte) ([]byte, error) {
	ms, err := Members(b)
	if err != nil {
		return nil, err
	}
	kb, _ := json.Marshal(key) // a string always marshals
	var at int
	var lead string
	if len(ms) == 0 {
		at = SkipSpace(b, 0) + 1 // just after '{'
	} else {
		at = ms[len(ms)-1].ValEnd
		lead = ","
	}
	out := make([]byte, 0, len(b)+len(kb)+len(raw)+2)
	out = append(out, b[:at]...)
	out = append(out, lead...)
	out = append(out, kb...)
	out = append(out, ':')
	out = append(out, raw...)
	out = append(out, b[at:]...)
	return out, nil
}

// ErrNotArray is returned by Elements for a value that is not an array.
var ErrNotArray = errors.New("jsonobj: JSON value is not an array")

// Elements returns the elements of the array b in order, each as the
// half-open byte range [begin, end) of its value in b: a scan, nothing is
// decoded. b must be valid JSON, as for Members.
func Elements(b []byte) ([][2]int, error) {
	i := SkipSpace(b, 0)
	if i >= len(b) || b[i] != '[' {
		return nil, ErrNotArray
	}
	i = SkipSpace(b, i+1)
	var es [][2]int
	if i < len(b) && b[i] == ']' {
		return es, nil
	}
	for i < len(b) {
		end := skipValue(b, i)
		es = append(es, [2]int{i, end})
		i = SkipSpace(b, end)
		if i >= len(b) {
			return nil, ErrNotArray
		}
		if b[i] == ']' {
			return es, nil
		}
		if b[i] != ',' {
			return nil, ErrNotArray
		}
		i = SkipSpace(b, i+1)
	}
	return nil, ErrNotArray
}

// SkipSpace returns the offset of the first non-space byte of b at or after i.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the offset just past the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the offset just past the value starting at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	default:
		for ; i < len(b); i++ {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
		}
		return len(b)
	}
}

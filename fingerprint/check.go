package fingerprint

import "fmt"

// Check is what a stored entry carries to verify a hit: the token count and a
// second hash of the tokens, FNV-1a 64 over their little-endian uint32 bytes.
// FNV shares nothing with xxh3, so a key collision that also matches the Check
// needs two independent hash collisions at once.
type Check struct {
	Tokens uint32
	Sum    uint64
}

// String returns "n=<tokens>/<sum hex>".
func (c Check) String() string { return fmt.Sprintf("n=%d/%016x", c.Tokens, c.Sum) }

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvTokens(h uint64, tokens []int32) uint64 {
	for _, t := range tokens {
		u := uint32(t)
		h = (h ^ uint64(u&0xff)) * fnvPrime
		h = (h ^ uint64(u>>8&0xff)) * fnvPrime
		h = (h ^ uint64(u>>16&0xff)) * fnvPrime
		h = (h ^ uint64(u>>24)) * fnvPrime
	}
	return h
}

// CheckOf returns the Check of tokens.
func CheckOf(tokens []int32) Check {
	return Check{Tokens: uint32(len(tokens)), Sum: fnvTokens(fnvOffset, tokens)}
}

// checkPrefixes returns a function giving CheckOf(tokens[:n]) for n = len,
// len-1 and every multiple of blockSize, after a single pass over tokens.
func checkPrefixes(tokens []int32, blockSize int) func(n int) Check {
	L := len(tokens)
	atBlock := make([]uint64, L/blockSize+1) // atBlock[k]: state after k blocks
	h := uint64(fnvOffset)
	atBlock[0] = h
	var atLast uint64 // state after L-1 tokens
	for i, t := range tokens {
		if i == L-1 {
			atLast = h
		}
		h = fnvTokens(h, []int32{t})
		if (i+1)%blockSize == 0 {
			atBlock[(i+1)/blockSize] = h
		}
	}
	return func(n int) Check {
		var s uint64
		switch {
		case n == L:
			s = h
		case n == L-1:
			s = atLast
		case n%blockSize == 0 && n/blockSize < len(atBlock):
			s = atBlock[n/blockSize]
		default:
			panic("fingerprint: checkPrefixes asked for an unrecorded length") // broken invariant
		}
		return Check{Tokens: uint32(n), Sum: s}
	}
}

// Verify compares a stored entry's Check with the Check of the wanted tokens.
// It returns nil on a match and a *CollisionError otherwise.
func Verify(key Key, stored, want Check) error {
	if stored == want {
		return nil
	}
	return &CollisionError{Key: key, Stored: stored, Want: want}
}

// CollisionError reports an entry whose key matched but whose Check did not:
// two different token sequences share a key. Treat it as a miss.
type CollisionError struct {
	Key          Key
	Stored, Want Check
}

func (e *CollisionError) Error() string {
	return fmt.Sprintf("fingerprint: collision on key %s: stored %s, want %s", e.Key, e.Stored, e.Want)
}

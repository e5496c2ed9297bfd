package rag

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/proxy"
)

// Issue 18, finding 6: what a careful operator found at the edges of the
// request path.

// TestHugePromptBoundedBeforeTokenizing: a 7 MB chat prompt, far over the
// context, is skipped before it is tokenized. Tokenizing it cost ~14 bytes
// per byte of text (issue 18: RSS +160 MB per request, 98 MB of it in
// EncodeOffsets); what is left is parsing the body, a few copies of it.
func TestHugePromptBoundedBeforeTokenizing(t *testing.T) {
	fe := newFuserEnv(t, func(c *proxy.Config) { c.Fusion.MarkerOpen, c.Fusion.MarkerClose = "<doc>", "</doc>" })
	doc := strings.Repeat("Once upon a time there was a little dog. ", 7<<20/41)
	marked := "<doc>" + doc + "</doc><doc>" + storyB + "</doc>Once upon a time"
	body := `{"model":"m","messages":[{"role":"user","content":` + jsonString(marked) + `}],"max_tokens":8}`
	r := fe.request(t, proxy.RouteChat, body, "t")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := fe.f.Fuse(context.Background(), r)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("body %d bytes: Fuse allocated %d bytes (%.2f per body byte)", len(body), alloc, float64(alloc)/float64(len(body)))
	var se *proxy.SkipError
	if !errors.As(err, &se) || se.Reason != proxy.SkipPromptTooLong {
		t.Errorf("Fuse: got %v, want skip %q", err, proxy.SkipPromptTooLong)
	}
	if max := uint64(len(body)) / 10; alloc > max {
		t.Errorf("Fuse allocated %d bytes for a %d-byte body, want at most %d (a tenth of it: no work on the text)", alloc, len(body), max)
	}
}

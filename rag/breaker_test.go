package rag

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/fusionrag/fusionrag/proxy"
)

// TestFuserBadInputIsASkip: requests the engine itself will refuse (token
// ids outside the vocabulary next to known chunks) are skipped, not
// failures: a client must not open the breaker for every tenant by sending
// them. A prompt that ends with a known chunk leaves it as the question.
func TestFuserBadInputIsASkip(t *testing.T) {
	fe := newFuserEnv(t, nil)
	partsBody := storiesBody(`"max_tokens":2`)
	if _, err := fe.f.Fuse(context.Background(), fe.request(t, proxy.RouteChat, partsBody, "t")); err != nil {
		t.Fatal(err)
	}
	known := "You tell stories.\n\nDocument: A\n" + storyA + "\n\nDocument: B\n" + storyB
	ids := fe.f.tok.Encode(known)
	if fe.f.tok.AddBOS() {
		ids = append([]int32{fe.f.tok.BOS()}, ids...)
	}
	idsJSON := func(ids []int32) string { b, _ := json.Marshal(ids); return string(b) }
	vocab := int32(fe.f.m.Config.Vocab)
	for name, body := range map[string]string{
		"token out of vocabulary": `{"prompt":` + idsJSON(append(slices.Clone(ids), vocab+5)) + `,"max_tokens":2}`,
	} {
		_, err := fe.f.Fuse(context.Background(), fe.request(t, proxy.RouteCompletions, body, "t"))
		if !errors.Is(err, proxy.ErrSkip) {
			t.Errorf("%s: Fuse error %v, want a skip", name, err)
		}
	}
}

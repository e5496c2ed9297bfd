package sidecar

import (
	"context"
	"errors"
	"testing"

	"github.com/fusionrag/fusionrag/fusion"
	"github.com/fusionrag/fusionrag/kvstore"
)

// TestDocumentsTemplate: documents.template chooses how the documents route
// lays documents out; "passage" cuts them on their own ids at the size of
// the passages the fuser finds (fusion.paragraph_max_tokens), so a document
// presented whole hits its chunks; an unknown name is refused at start.
func TestDocumentsTemplate(t *testing.T) {
	up, _ := upstream(t)
	_, m := synthetic(t, 256)
	store, err := kvstore.Open("mem://?max=16MiB")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for _, tc := range []struct {
		name     string
		template string
		want     fusion.Template
		size     int
		err      error
	}{
		{name: "default", want: fusion.DefaultTemplate, size: fusion.DefaultChunkTokens},
		{name: "document", template: "document", want: fusion.DefaultTemplate, size: fusion.DefaultChunkTokens},
		{name: "passage", template: "passage", want: fusion.PassageTemplate, size: 64},
		{name: "unknown", template: "markdown", err: fusion.ErrTemplateName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pcfg := config(up)
			pcfg.Documents.AdminKey = "secret"
			pcfg.Fusion.ParagraphMaxTokens = 64
			if tc.template != "" {
				pcfg.Documents.Template = tc.template
			}
			sc, err := New(context.Background(), Config{Proxy: pcfg, Model: m, Store: store, Env: NoEnv, Logger: quiet, SkipSelfCheck: true})
			if tc.err != nil {
				if err == nil {
					sc.Close()
				}
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			if sc.chunker == nil {
				t.Fatal("no documents chunker")
			}
			if sc.chunker.Template != tc.want || sc.chunker.Size != tc.size {
				t.Errorf("got template %+v size %d, want %+v size %d", sc.chunker.Template, sc.chunker.Size, tc.want, tc.size)
			}
		})
	}
}

package proxy

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The engine looks up published KV under kv_transfer_params.namespace, a
// value any client can compute for another tenant (the publish namespace is a
// hash of public inputs). These tests check that a client-supplied
// kv_transfer_params never reaches the engine, on any path, in any spelling
// the engine's JSON decoder would accept (encoding/json matches member names
// case-insensitively, Unicode simple folding included).

// TestClientKVTransferParamsNeverForwarded sends bodies carrying
// kv_transfer_params through every path and checks what the engine got.
func TestClientKVTransferParamsNeverForwarded(t *testing.T) {
	const victim = `{"namespace":"0123456789abcdef0123456789abcdef","do_remote_prefill":true}`
	spellings := []string{
		`"kv_transfer_params"`,
		`"KV_TRANSFER_PARAMS"`,
		`"Kv_Transfer_Params"`,
		`"\u006bv_transfer_params"`, // escaped k
		`"\u212av_transfer_params"`, // KELVIN SIGN folds to k in encoding/json
	}
	fusers := map[string]Fuser{
		"none":  nil,
		"ok":    FuserFunc(func(context.Context, *Request) (*Plan, error) { return okPlan("sidecar"), nil }),
		"skip":  FuserFunc(func(context.Context, *Request) (*Plan, error) { return nil, Skip("no_chunks") }),
		"error": FuserFunc(func(context.Context, *Request) (*Plan, error) { return nil, errors.New("store down") }),
	}
	for fname, fu := range fusers {
		for _, sp := range spellings {
			t.Run(fname+"/"+sp, func(t *testing.T) {
				rc := &recorder{}
				up := httptest.NewServer(rc)
				defer up.Close()
				var opts []Option
				if fu != nil {
					opts = append(opts, WithFuser(fu))
				}
				_, base := startProxy(t, upstreamConfig(up.URL), opts...)
				body := `{"model":"m",` + sp + `:` + victim + `,"prompt":"p",` + sp + `:` + victim + `}`
				if code, resp := post(t, base+"/v1/completions", body); code != 200 {
					t.Fatalf("status %d %s", code, resp)
				}
				got := rc.got()
				if len(got) != 1 {
					t.Fatalf("engine got %d requests", len(got))
				}
				want := `{"model":"m","prompt":"p"}`
				if fname == "ok" {
					want = `{"model":"m","prompt":"p","kv_transfer_params":{"namespace":"sidecar"}}`
				}
				if d := cmp.Diff(want, got[0]); d != "" {
					t.Errorf("engine body (-want +got):\n%s", d)
				}
			})
		}
	}
}

// TestClientKVTransferParamsLargeBody: a body too large to be buffered by
// default is still read (up to max_fusion_body) so the member can be removed;
// a larger one on an eligible route is refused rather than streamed
// unchecked to the engine.
func TestClientKVTransferParamsLargeBody(t *testing.T) {
	for _, withFuser := range []bool{false, true} {
		rc := &recorder{}
		up := httptest.NewServer(rc)
		cfg := upstreamConfig(up.URL)
		cfg.Limits.BufferBody = 1 << 10
		cfg.Limits.MaxFusionBody = 64 << 10
		var opts []Option
		if withFuser {
			opts = append(opts, WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) { return nil, Skip("no_chunks") })))
		}
		_, base := startProxy(t, cfg, opts...)
		pad := strings.Repeat("x", 8<<10)
		body := `{"model":"m","kv_transfer_params":{"namespace":"abcd"},"prompt":"` + pad + `"}`
		if code, resp := post(t, base+"/v1/completions", body); code != 200 {
			t.Fatalf("fuser %v: status %d %s", withFuser, code, resp)
		}
		if got := rc.got(); len(got) != 1 || strings.Contains(got[0], "kv_transfer_params") {
			t.Errorf("fuser %v: engine got %d bodies, kv_transfer_params present: %v", withFuser, len(got), len(got) == 1 && strings.Contains(got[0], "kv_transfer_params"))
		}
		rc.reset()
		big := `{"model":"m","kv_transfer_params":{"namespace":"abcd"},"prompt":"` + strings.Repeat("x", 80<<10) + `"}`
		if code, _ := post(t, base+"/v1/completions", big); code != 413 {
			t.Errorf("fuser %v: body over max_fusion_body: status %d, want 413", withFuser, code)
		}
		if got := rc.got(); len(got) != 0 {
			t.Errorf("fuser %v: engine got %d requests for a refused body", withFuser, len(got))
		}
		up.Close()
	}
}

// TestMalformedBodyWithKVTransferParams: malformed bodies are forwarded
// untouched (the engine answers them), unless they may carry
// kv_transfer_params that a lenient engine parser (Python's json accepts
// NaN) would read: those are refused.
func TestMalformedBodyWithKVTransferParams(t *testing.T) {
	rc := &recorder{}
	up := httptest.NewServer(rc)
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL), WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) {
		return okPlan("x"), nil
	})))
	for _, body := range []string{
		`{"model":"m","temperature":NaN,"kv_transfer_params":{"namespace":"abcd"},"prompt":"p"}`,
		`{"model":"m","temperature":NaN,"KV_Transfer_Params":{"namespace":"abcd"},"prompt":"p"}`,
		`{"model":"m","temperature":NaN,"\u006bv_transfer_params":{"namespace":"abcd"},"prompt":"p"}`,
	} {
		rc.reset()
		code, _ := post(t, base+"/v1/completions", body)
		if code != 400 || len(rc.got()) != 0 {
			t.Errorf("body %s: status %d, engine got %d requests; want 400 and none", body, code, len(rc.got()))
		}
	}
}

package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
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
// kv_transfer_params that a lenient engine parser would read (Python's
// json.loads on bytes accepts NaN, a UTF-8 BOM, UTF-16): those are refused.
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
		"\xef\xbb\xbf" + `{"model":"m","kv_transfer_params":{"namespace":"abcd"},"prompt":"p"}`, // UTF-8 BOM
		utf16LE(`{"model":"m","kv_transfer_params":{"namespace":"abcd"},"prompt":"p"}`),
	} {
		rc.reset()
		code, _ := post(t, base+"/v1/completions", body)
		if code != 400 || len(rc.got()) != 0 {
			t.Errorf("body %s: status %d, engine got %d requests; want 400 and none", body, code, len(rc.got()))
		}
	}
}

// TestEngineKVRoutesNotExposed: PUT /v1/kv/{key} stores a KV blob in the
// engine under any key, another tenant's included; the adapter reaches it
// directly (fusion.adapter_url or the upstream), so clients of the sidecar
// never may, in any spelling of the path the engine decodes to it.
func TestEngineKVRoutesNotExposed(t *testing.T) {
	var reached atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.WriteHeader(204)
	}))
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL))
	key := strings.Repeat("ab", 16)
	for _, tt := range []struct{ method, uri string }{
		{"PUT", "/v1/kv/" + key},
		{"PUT", "/v1/kv/" + key + "?x=1"},
		{"PUT", "/v1/%6bv/" + key},
		{"PUT", "/v1/kv%2F" + key},
		{"PUT", "/v1/x/../kv/" + key},
		{"GET", "/v1/kv"},
		{"GET", "/v1/kv/"},
		// Issue 18 finding 6: spellings that fasthttp's normalised path
		// hides (it resolves "..", the engine may not).
		{"PUT", "/v1/kv/" + key + "/../.."},
		{"PUT", "/v1/kv/" + key + "/.."},
		{"PUT", "/v1/kv/%2e%2e/"},
		{"PUT", "/v1/kv/%2E%2E/x"},
		{"PUT", "/v1/kv/./" + key},
		{"PUT", "/v1//kv/" + key},
		{"PUT", "/v1/kv%252F" + key},
		{"PUT", "http://x/v1/kv/" + key}, // absolute form
	} {
		reached.Store(0)
		if code := rawRequest(t, base, tt.method, tt.uri, "abc"); code != http.StatusForbidden || reached.Load() != 0 {
			t.Errorf("%s %s: status %d, upstream reached %d times; want 403 and never", tt.method, tt.uri, code, reached.Load())
		}
	}
	// Neighbouring paths, dot segments elsewhere included, still pass.
	for _, uri := range []string{"/v1/kvx", "/v1/models", "/v1/x/../models"} {
		reached.Store(0)
		if code := rawRequest(t, base, "POST", uri, "{}"); code != 204 || reached.Load() != 1 {
			t.Errorf("POST %s: status %d, upstream reached %d times; want the upstream's 204", uri, code, reached.Load())
		}
	}
}

func utf16LE(s string) string {
	var b []byte
	for _, c := range []byte(s) {
		b = append(b, c, 0)
	}
	return string(b)
}

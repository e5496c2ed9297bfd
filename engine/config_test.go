package engine

import (
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestNewConfig(t *testing.T) {
	def := Config{Listen: DefaultListen, ModelName: DefaultModelName, MaxBatch: DefaultMaxBatch, MaxQueue: DefaultMaxQueue,
		PrefillChunk: DefaultPrefillChunk, Workers: runtime.GOMAXPROCS(0), PushStoreURL: DefaultPushStoreURL,
		RequestTimeout: DefaultTimeout, MaxBodyBytes: DefaultMaxBody, MaxKVBytes: DefaultMaxKV}
	tests := []struct {
		name string
		in   Config
		want Config
		bad  bool
	}{
		{name: "defaults", in: Config{}, want: def},
		{name: "kept", in: Config{Listen: ":9000", MaxBatch: 4, ContextLimit: 128, StoreURL: "redis://x:1/0", RequestTimeout: time.Second},
			want: func() Config {
				c := def
				c.Listen, c.MaxBatch, c.ContextLimit, c.StoreURL, c.RequestTimeout = ":9000", 4, 128, "redis://x:1/0", time.Second
				return c
			}()},
		{name: "bad listen", in: Config{Listen: "nowhere"}, bad: true},
		{name: "negative batch", in: Config{MaxBatch: -1}, bad: true},
		{name: "negative queue", in: Config{MaxQueue: -2}, bad: true},
		{name: "negative context", in: Config{ContextLimit: -1}, bad: true},
		{name: "negative timeout", in: Config{RequestTimeout: -time.Second}, bad: true},
		{name: "negative body", in: Config{MaxBodyBytes: -1}, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NewConfig(tt.in)
			if tt.bad {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("err %v, want ErrConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

func TestContextLimitClamped(t *testing.T) {
	e, err := New(Config{ContextLimit: 100000}, &fakeLM{vocab: 259, maxPos: 300}, byteTok{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.ContextLimit() != 300 {
		t.Errorf("context limit %d, want the model's 300", e.ContextLimit())
	}
	if _, err := New(Config{}, &fakeLM{vocab: 100, maxPos: 300}, byteTok{}); !errors.Is(err, ErrConfig) {
		t.Errorf("tokenizer larger than the model: %v, want ErrConfig", err)
	}
}

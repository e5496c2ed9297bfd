package kvstore

import (
	"context"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// redisClient is a plain go-redis client for tests that reach behind the tier.
func redisClient(t testing.TB, s *redistest.Server) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { c.Close() })
	return c
}

func openRedisTier(t testing.TB, s *redistest.Server, query string) *Redis {
	t.Helper()
	st, err := Open("redis://" + s.Addr + "/0?" + query)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.(*Redis)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

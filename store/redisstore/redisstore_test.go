package redisstore_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/redisstore"
	"github.com/chatrelay/chatrelay/store/storetest"
)

var prefixes atomic.Int64

// newFactory runs the suite's stores on one private redis-server, each test
// under its own key prefix.
func newFactory(srv *redistest.Server) storetest.Factory {
	return func(t testing.TB, o store.Options) store.Store {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr})
		s, err := redisstore.New(c, redisstore.Options{Options: o, Prefix: fmt.Sprintf("t%d", prefixes.Add(1))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = s.Close()
			_ = c.Close()
		})
		return s
	}
}

func TestConformance(t *testing.T) {
	storetest.Run(t, newFactory(redistest.Start(t)), storetest.Features{})
}

func BenchmarkIngest(b *testing.B) { storetest.BenchmarkIngest(b, newFactory(redistest.Start(b))) }

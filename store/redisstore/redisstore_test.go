package redisstore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

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
	storetest.Run(t, newFactory(redistest.Start(t)))
}

// proxyFaults breaks a store's Redis calls at a script, through a proxy.
type proxyFaults struct{ p *redistest.Proxy }

func (f proxyFaults) Break(op string, fault storetest.Fault) {
	sha := redisstore.ScriptHash(op)
	if sha == "" {
		panic("no script for op " + op)
	}
	f.p.Break(sha, map[storetest.Fault]redistest.Fault{
		storetest.RequestLost: redistest.DropRequest,
		storetest.ReplyLost:   redistest.DropReply,
		storetest.ReplyLate:   redistest.StallReply,
	}[fault])
}

func TestFaults(t *testing.T) {
	srv := redistest.Start(t)
	if err := redisstore.LoadScripts(context.Background(), srv.Client(t)); err != nil {
		t.Fatal(err)
	}
	storetest.RunFaults(t, func(t testing.TB, o store.Options) (store.Store, storetest.Faults) {
		proxy := redistest.NewProxy(t, srv.Addr)
		// The production client's settings (redisstore.NewClient): no
		// retries, and a timeout short enough for a test.
		c := redis.NewClient(&redis.Options{Addr: proxy.Addr, MaxRetries: -1, ReadTimeout: 300 * time.Millisecond})
		s, err := redisstore.New(c, redisstore.Options{Options: o, Prefix: fmt.Sprintf("f%d", prefixes.Add(1))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = s.Close()
			_ = c.Close()
		})
		return s, proxyFaults{proxy}
	})
}

func BenchmarkIngest(b *testing.B) { storetest.BenchmarkIngest(b, newFactory(redistest.Start(b))) }

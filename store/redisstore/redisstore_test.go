package redisstore_test

import (
	"context"
	"fmt"
	"os"
	"sync"
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

// proxyFaults breaks a store's Redis calls at a script, through proxies:
// one in front of a server, or one per node of a Cluster (hash is then
// ClusterScriptHash), of which the first to see the script breaks it.
type proxyFaults struct {
	ps   []*redistest.Proxy
	hash func(op string) string
}

func (f proxyFaults) Break(op string, fault storetest.Fault) {
	sha := f.hash(op)
	if sha == "" {
		panic("no script for op " + op)
	}
	redistest.BreakOne(f.ps, sha, map[storetest.Fault]redistest.Fault{
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
		return s, proxyFaults{[]*redistest.Proxy{proxy}, redisstore.ScriptHash}
	})
}

// The same faults on a Cluster, whose client would re-send a command after
// a broken connection if the store let it.
func TestFaultsOnCluster(t *testing.T) {
	rc := redistest.SharedCluster(t)
	storetest.RunFaults(t, func(t testing.TB, o store.Options) (store.Store, storetest.Faults) {
		s, ps := clusterThroughProxies(t, rc, o)
		return s, proxyFaults{ps, redisstore.ClusterScriptHash}
	})
}

func BenchmarkIngest(b *testing.B) { storetest.BenchmarkIngest(b, newFactory(redistest.Start(b))) }

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopShared()
	os.Exit(code)
}

// The suite again, on a Redis Cluster of three masters with a replica each.
func TestConformanceOnCluster(t *testing.T) {
	t.Parallel()
	rc := redistest.SharedCluster(t)
	storetest.Run(t, func(t testing.TB, o store.Options) store.Store {
		c, err := redisstore.NewClient(rc.URL())
		if err != nil {
			t.Fatal(err)
		}
		s, err := redisstore.New(c, redisstore.Options{Options: o, Prefix: fmt.Sprintf("c%d", prefixes.Add(1))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = s.Close()
			_ = c.Close()
		})
		return s
	})
}

// Sessions' hash tags spread evenly over the Cluster's shards: of 10,000
// sessions, each of the three masters holds a third, within ±10 %.
func TestSessionsSpreadEvenlyOverShards(t *testing.T) {
	t.Parallel()
	rc := redistest.SharedCluster(t)
	ctx := context.Background()
	c, err := redisstore.NewClient(rc.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	prefix := fmt.Sprintf("spread%d", prefixes.Add(1))
	s, err := redisstore.New(c, redisstore.Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const sessions, workers = 10_000, 32
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < sessions; i += workers {
				if _, err := s.CreateSession(ctx, store.NewSession{Tenant: "t", Platform: "api", Channel: "api", User: fmt.Sprint("user", i)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	masters, err := rc.Masters(ctx)
	if err != nil || len(masters) != 3 {
		t.Fatalf("masters: %v, %v", masters, err)
	}
	total := 0
	for _, m := range masters {
		n := 0
		iter := m.Client(t).Scan(ctx, 0, prefix+":{*}:s:*", 1000).Iterator()
		for iter.Next(ctx) {
			n++
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		t.Logf("master %s holds %d sessions", m.Addr, n)
		if third := sessions / 3.0; float64(n) < 0.9*third || float64(n) > 1.1*third {
			t.Errorf("master %s holds %d of %d sessions, beyond a third ±10%%", m.Addr, n, sessions)
		}
		total += n
	}
	if total != sessions {
		t.Fatalf("the masters hold %d sessions, want %d", total, sessions)
	}
}

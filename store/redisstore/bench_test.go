package redisstore_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/redisstore"
)

// BenchmarkAppendOutbound measures the Redis post path and reports its
// round trips per operation (the figure TestRedisRoundTripsPerRPC pins) and
// script calls per operation (below 1 when concurrent posts merge), and
// the CPU time Redis spent per operation (INFO's used_cpu_*, so Redis's
// own cost, whatever the Go side costs).
func BenchmarkAppendOutbound(b *testing.B) {
	srv := redistest.Start(b)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b.Cleanup(func() { _ = c.Close() })
	trips := &redistest.RoundTrips{}
	c.AddHook(trips)
	s, err := redisstore.New(c, redisstore.Options{Prefix: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	ses, err := s.CreateSession(ctx, store.NewSession{Tenant: "t", Platform: "api", Channel: "api", User: "u"})
	if err != nil {
		b.Fatal(err)
	}
	out := store.OutboundMessage{Tenant: "t", SessionID: ses.ID, Text: "Your order has shipped.", Status: store.StatusDelivered}
	if _, _, err := s.AppendOutbound(ctx, out); err != nil { // loads the script
		b.Fatal(err)
	}
	b.Run("sequential", func(b *testing.B) {
		b.ReportAllocs()
		before, scripts, cpu := trips.Count(), trips.Scripts(), redisCPU(b, c)
		for b.Loop() {
			if _, _, err := s.AppendOutbound(ctx, out); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(trips.Count()-before)/float64(b.N), "roundtrips/op")
		b.ReportMetric(float64(trips.Scripts()-scripts)/float64(b.N), "scripts/op")
		b.ReportMetric((redisCPU(b, c)-cpu).Seconds()*1e6/float64(b.N), "redis-µs/op")
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(25) // 50 callers on 2 cores, as in chatbench
		before, scripts, cpu := trips.Count(), trips.Scripts(), redisCPU(b, c)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, _, err := s.AppendOutbound(ctx, out); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(trips.Count()-before)/float64(b.N), "roundtrips/op")
		b.ReportMetric(float64(trips.Scripts()-scripts)/float64(b.N), "scripts/op")
		b.ReportMetric((redisCPU(b, c)-cpu).Seconds()*1e6/float64(b.N), "redis-µs/op")
	})
}

// redisCPU is the CPU time the Redis server has used so far.
func redisCPU(b *testing.B, c *redis.Client) time.Duration {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for line := range strings.SplitSeq(info, "\r\n") {
		for _, field := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(line, field); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					b.Fatalf("INFO cpu: %q: %v", line, err)
				}
				total += f
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

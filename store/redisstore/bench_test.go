package redisstore_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/redisstore"
)

// BenchmarkAppendOutbound measures the Redis post path and reports its
// round trips per operation (the figure TestRedisRoundTripsPerRPC pins) and
// script calls per operation (below 1 when concurrent posts merge).
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
		before, scripts := trips.Count(), trips.Scripts()
		for b.Loop() {
			if _, _, err := s.AppendOutbound(ctx, out); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(trips.Count()-before)/float64(b.N), "roundtrips/op")
		b.ReportMetric(float64(trips.Scripts()-scripts)/float64(b.N), "scripts/op")
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(25) // 50 callers on 2 cores, as in chatbench
		before, scripts := trips.Count(), trips.Scripts()
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
	})
}

package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// BenchmarkIngest measures ingesting one inbound message while N listeners
// wait that it does not match: each waits for other users, a channel or a
// session, as in a busy hub; the users' listeners wait for approver sets
// of `set` users. docs/design.md §4 requires the cost to stay flat as N and
// the sets grow, because an ingest only visits the listeners indexed under
// its session, user and channel, plus the unfiltered bucket.
func BenchmarkIngest(b *testing.B, f Factory) {
	for _, c := range []struct{ n, set int }{{1_000, 1}, {10_000, 1}, {100_000, 1}, {1_000, 16}, {100_000, 16}} {
		n := c.n
		b.Run(fmt.Sprintf("idle=%d/set=%d", n, c.set), func(b *testing.B) {
			clk := clock.NewFake(epoch)
			s := f(b, store.Options{Clock: clk, SessionTTL: ttl, HistoryLimit: 100,
				IdempotencyTTL: 24 * time.Hour, OutcomeRetention: 24 * time.Hour})
			ctx := context.Background()
			for i := range n {
				var flt store.Filter
				switch i % 3 {
				case 0:
					for j := range c.set {
						flt.Users = append(flt.Users, fmt.Sprint("user-", i, "-", j))
					}
					flt.Users = store.SortUsers(flt.Users)
				case 1:
					flt.Channel = fmt.Sprint("channel-", i)
				default:
					flt.SessionID = fmt.Sprint("ses_", i)
				}
				if _, err := s.RegisterListener(ctx, store.NewListener{
					ID: ids.Listener(), Tenant: "t1", Filter: flt, ResumeWindow: time.Hour,
				}); err != nil {
					b.Fatal(err)
				}
			}
			in := store.InboundMessage{Tenant: "t1", Platform: "api", Channel: "api", User: "someone", Text: "hello"}
			b.ReportAllocs()
			for b.Loop() {
				r, err := s.Ingest(ctx, in)
				if err != nil || len(r.Matched) != 0 {
					b.Fatalf("ingest: %v matched %v", err, r.Matched)
				}
			}
		})
	}
}

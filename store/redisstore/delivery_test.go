package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/store"
)

// A replica that dies between recording a delivery in the outbox and
// appending its message leaves an outbox entry naming no message: the
// first claim after its lease drops it, and nothing is delivered.
func TestDeliveryRecordedWithoutItsMessageIsDropped(t *testing.T) {
	clk := clock.NewFake(time.UnixMilli(1795297498123))
	s, c := newTestStore(t, Options{Prefix: "orphan", Options: store.Options{Clock: clk}})
	ctx := context.Background()
	ses := openTestSession(t, s, "u")
	if err := s.enqueue(ctx, "t", ses.ID, &store.Delivery{ID: "dl_orphan", Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	cs, err := s.ClaimDeliveries(ctx, 10, time.Minute)
	if err != nil || len(cs) != 0 {
		t.Fatalf("claims %+v, %v; want none", cs, err)
	}
	s.bg.Wait()
	if n := c.ZCard(ctx, s.outboxKey()).Val(); n != 0 {
		t.Fatalf("the outbox holds %d entries after the orphan was claimed, want 0", n)
	}
}

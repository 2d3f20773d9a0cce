package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/store"
)

// The memory-reclaiming Redis TTLs must never lapse under records that are
// still in use.

// A listener kept alive by touches must stay findable: its index set has to
// outlive the extended window, not just the window it was registered with.
func TestTouchExtendsTheListenersIndex(t *testing.T) {
	s, c := newTestStore(t, Options{Prefix: "touch"})
	ctx := context.Background()
	l, err := s.RegisterListener(ctx, store.NewListener{ID: "cr_touch", Tenant: "t", Filter: store.Filter{Users: []string{"u"}}, ResumeWindow: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	bucket := s.bucketKeys("t", &l.Filter)[0]
	before := c.PTTL(ctx, bucket).Val()
	if err := s.TouchListener(ctx, "t", l.ID, time.Now().Add(72*time.Hour)); err != nil {
		t.Fatal(err)
	}
	after := c.PTTL(ctx, bucket).Val()
	if after < 72*time.Hour || after <= before {
		t.Fatalf("index TTL %s after touching to 72 h (was %s); the listener would stop matching", after, before)
	}
}

// A busy session keeps its records alive: the hourly refresh on append
// covers the session, its history, its active pointer and its contact, and
// comes again every hour, not only with the first message.
func TestAppendKeepsASessionsRecordsAlive(t *testing.T) {
	clk := clock.NewFake(time.Now())
	s, c := newTestStore(t, Options{Options: store.Options{Clock: clk}, Prefix: "alive"})
	ctx := context.Background()
	ses := openTestSession(t, s, "u")
	slotp := s.sessionSlot(ses.ID)
	keys := []string{slotp + "s:" + ses.ID, slotp + "h:" + ses.ID, slotp + "a:t:api:api:u", slotp + "c:t:api:u"}
	post := func(text string) {
		t.Helper()
		if _, _, err := s.AppendOutbound(ctx, store.OutboundMessage{Tenant: "t", SessionID: ses.ID, Text: text, Status: store.StatusDelivered}); err != nil {
			t.Fatal(err)
		}
	}
	post("first") // refreshes, and starts the hour
	for hour := range 3 {
		for _, k := range keys {
			c.PExpire(ctx, k, time.Minute) // as if they were about to lapse
		}
		clk.Advance(2 * time.Hour) // past the refresh interval
		post("still here")
		for _, k := range keys {
			if ttl := c.PTTL(ctx, k).Val(); ttl < 24*time.Hour {
				t.Errorf("%s: TTL %s after a message %d h on; want it refreshed", k, ttl, 2*(hour+1))
			}
		}
	}
}

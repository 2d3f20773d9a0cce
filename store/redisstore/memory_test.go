package redisstore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/redisstore"
)

// usage sums MEMORY USAGE over the keys under prefix whose kind (the part
// after the hash tag) starts with one of kinds.
func usage(t *testing.T, c *redis.Client, prefix string, kinds ...string) int64 {
	t.Helper()
	ctx := context.Background()
	var total int64
	iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		rest := key[strings.Index(key, "}:")+2:]
		for _, k := range kinds {
			if strings.HasPrefix(rest, k) {
				n, err := c.MemoryUsage(ctx, key, 0).Result()
				if err != nil {
					t.Fatal(err)
				}
				total += n
			}
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}

// TestKeyMemory measures what sessions, messages and listeners cost in
// Redis memory (the figures quoted in the package documentation), and
// guards them against regressions with loose bounds.
func TestKeyMemory(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	const prefix = "mem"
	s, err := redisstore.New(c, redisstore.Options{Options: store.Options{Clock: clock.NewFake(time.Now())}, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()

	const sessions = 200
	var sids []string
	for i := range sessions {
		ses, err := s.CreateSession(ctx, store.NewSession{Tenant: "default", Platform: "api", Channel: "api", User: fmt.Sprint("user-", i)})
		if err != nil {
			t.Fatal(err)
		}
		sids = append(sids, ses.ID)
	}
	perSession := usage(t, c, prefix, "s:", "a:", "c:") / sessions

	const messages = 500
	text := strings.Repeat("x", 100)
	before := usage(t, c, prefix, "h:")
	for i := range messages {
		if _, _, err := s.AppendOutbound(ctx, store.OutboundMessage{Tenant: "default", SessionID: sids[i%10], Text: text, Status: store.StatusDelivered}); err != nil {
			t.Fatal(err)
		}
	}
	perMessage := (usage(t, c, prefix, "h:") - before) / messages

	const listeners = 1000
	for i := range listeners {
		if _, err := s.RegisterListener(ctx, store.NewListener{
			ID: ids.Listener(), Tenant: "default", Filter: store.Filter{Users: []string{fmt.Sprint("user-", i%sessions)}, Keyword: "yes"},
			ResumeWindow: time.Hour,
		}); err != nil {
			t.Fatal(err)
		}
	}
	perListener := usage(t, c, prefix, "l:", "x:", "pl:", "ll:", "lx:") / listeners

	t.Logf("per session %d B (record, active pointer, contact); per message %d B with a %d-byte text; per listener %d B (record, index member, pending and listing entries)",
		perSession, perMessage, len(text), perListener)
	if perSession > 2048 || perMessage > 1024 || perListener > 1024 {
		t.Fatalf("memory per record grew past its bounds")
	}
}

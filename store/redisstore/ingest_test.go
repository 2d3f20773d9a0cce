package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// goneAfter cancels a caller's context once the pipeline that runs the
// script sha has come back: a caller that goes away right after its write.
type goneAfter struct {
	sha    string
	cancel context.CancelFunc
}

func (h goneAfter) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h goneAfter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h goneAfter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			if args := c.Args(); len(args) > 1 && args[1] == h.sha {
				h.cancel()
			}
		}
		return err
	}
}

// An ingest whose caller goes away once the message is stored still
// decides the listeners the message matched: without an idempotency key,
// nothing would ever come back to finish them.
func TestAnIngestWhoseCallerGoesAwayStillDecidesItsListeners(t *testing.T) {
	s, c := newTestStore(t, Options{})
	ctx := context.Background()
	if err := LoadScripts(ctx, c); err != nil {
		t.Fatal(err)
	}
	l, err := s.RegisterListener(ctx, store.NewListener{ID: ids.Listener(), Tenant: "t", Filter: store.Filter{Users: []string{"u1"}},
		Timeout: time.Hour, ResumeWindow: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	caller, leave := context.WithCancel(ctx)
	c.AddHook(goneAfter{sha: forClient(c, ingestScript).Hash(), cancel: leave})
	if _, err := s.Ingest(caller, store.InboundMessage{Tenant: "t", Platform: "api", Channel: "api", User: "u1", Text: "yes"}); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	if caller.Err() == nil {
		t.Fatal("the caller never went away: the hook missed the ingest")
	}
	got, err := s.GetListener(ctx, "t", l.ID)
	if err != nil || got.Outcome != store.Matched || got.Message == nil || got.Message.Text != "yes" {
		t.Fatalf("listener %v %+v, %v; want matched by the stored message", got.Outcome, got.Message, err)
	}
}

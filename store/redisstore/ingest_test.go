package redisstore

import (
	"context"
	"slices"
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

// stepped runs a pipeline that holds the script sha one command at a time,
// calling between after each: another client's commands, which Redis may
// run between those of a pipeline.
type stepped struct {
	sha     string
	between func()
}

func (h stepped) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h stepped) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h stepped) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !slices.ContainsFunc(cmds, func(c redis.Cmder) bool { a := c.Args(); return len(a) > 1 && a[1] == h.sha }) {
			return next(ctx, cmds)
		}
		for _, c := range cmds {
			if err := next(ctx, []redis.Cmder{c}); err != nil {
				return err
			}
			h.between()
		}
		return nil
	}
}

// An ingest that runs in the middle of a listener's registration, at any
// point, never loses it: the user's next message matches it.
func TestAnIngestDuringARegistrationDoesNotUnindexTheListener(t *testing.T) {
	s, c := newTestStore(t, Options{})
	ctx := context.Background()
	if err := LoadScripts(ctx, c); err != nil {
		t.Fatal(err)
	}
	other, err := New(redis.NewClient(&redis.Options{Addr: c.Options().Addr}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close() })
	ingest := func(st *Store, text string) store.IngestResult {
		t.Helper()
		r, err := st.Ingest(ctx, store.InboundMessage{Tenant: "t", Platform: "api", Channel: "api", User: "u1", Text: text})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	c.AddHook(stepped{sha: forClient(c, listenerAddScript).Hash(), between: func() { ingest(other, "not yet") }})
	l, err := s.RegisterListener(ctx, store.NewListener{ID: ids.Listener(), Tenant: "t",
		Filter: store.Filter{Users: []string{"u1"}, Keyword: "ready"}, Timeout: time.Hour, ResumeWindow: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if r := ingest(other, "ready now"); len(r.Matched) != 1 || r.Matched[0] != l.ID {
		t.Fatalf("the message after the registration matched %v, want the listener %s", r.Matched, l.ID)
	}
}

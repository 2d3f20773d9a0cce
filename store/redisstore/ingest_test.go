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

// scriptHook lets a test act around the pipelines that run the script
// sha: another client between their commands, a caller going away after.
type scriptHook struct {
	sha string
	run func(ctx context.Context, cmds []redis.Cmder, next redis.ProcessPipelineHook) error
}

func (h scriptHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h scriptHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h scriptHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !slices.ContainsFunc(cmds, func(c redis.Cmder) bool { a := c.Args(); return len(a) > 1 && a[1] == h.sha }) {
			return next(ctx, cmds)
		}
		return h.run(ctx, cmds, next)
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
	// The caller goes away once the pipeline that appends has come back.
	c.AddHook(scriptHook{sha: forClient(c, ingestScript).Hash(), run: func(ctx context.Context, cmds []redis.Cmder, next redis.ProcessPipelineHook) error {
		err := next(ctx, cmds)
		leave()
		return err
	}})
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
	// The registration's pipeline runs a command at a time, another
	// client's ingest after each, as Redis may interleave them.
	c.AddHook(scriptHook{sha: forClient(c, listenerAddScript).Hash(), run: func(ctx context.Context, cmds []redis.Cmder, next redis.ProcessPipelineHook) error {
		for _, c := range cmds {
			if err := next(ctx, []redis.Cmder{c}); err != nil {
				return err
			}
			ingest(other, "not yet")
		}
		return nil
	}})
	l, err := s.RegisterListener(ctx, store.NewListener{ID: ids.Listener(), Tenant: "t",
		Filter: store.Filter{Users: []string{"u1"}, Keyword: "ready"}, Timeout: time.Hour, ResumeWindow: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if r := ingest(other, "ready now"); len(r.Matched) != 1 || r.Matched[0] != l.ID {
		t.Fatalf("the message after the registration matched %v, want the listener %s", r.Matched, l.ID)
	}
}

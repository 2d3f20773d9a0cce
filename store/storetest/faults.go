package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/store"
)

// Fault is how a backend's storage fails in the middle of a write.
type Fault int

const (
	// RequestLost: the write never reached the storage.
	RequestLost Fault = iota + 1
	// ReplyLost: the write was done, and the connection broke before its
	// answer came back.
	ReplyLost
	// ReplyLate: the write was done, and its answer came too late: the
	// call timed out.
	ReplyLate
)

func (f Fault) String() string {
	return map[Fault]string{RequestLost: "request lost", ReplyLost: "reply lost", ReplyLate: "reply late"}[f]
}

// Faults breaks a backend's storage at one write. A backend whose storage
// is across a network provides it to RunFaults.
type Faults interface {
	// Break makes the next write of op fail with f, once. The ops are
	// "post", "ingest", "resolve" (a listener's compare-and-set, inside
	// Ingest), "chatbot", "create", "close", "status" (a message's
	// status, inside FinishDelivery), "cancel" and "botfinish" (a
	// chatbot's delivery, inside FinishDelivery).
	Break(op string, f Fault)
}

// FaultyFactory is a Factory whose store can be broken.
type FaultyFactory func(t testing.TB, o store.Options) (store.Store, Faults)

// RunFaults is the fault matrix: each write path, broken by each fault in
// the middle, then retried as a client would (with the same idempotency
// key, until the backend answers). Whatever the fault, the invariants
// hold: no message twice, no listener left pending that a stored message
// matched, exactly one outcome, one active session.
func RunFaults(t *testing.T, f FaultyFactory) {
	paths := []struct {
		name string
		fn   func(*faultEnv, Fault)
	}{
		{"Post", faultPost},
		{"Ingest", faultIngest},
		{"ResolveInsideIngest", faultResolve},
		{"Chatbot", faultChatbot},
		{"CreateSession", faultCreate},
		{"CloseSession", faultClose},
		{"FinishDelivery", faultFinishDelivery},
		{"CancelListener", faultCancel},
		{"IngestForAChatbot", faultBotIngest},
		{"FinishChatbotDelivery", faultBotFinish},
	}
	for _, p := range paths {
		for _, fault := range []Fault{RequestLost, ReplyLost, ReplyLate} {
			t.Run(p.name+"/"+fault.String(), func(t *testing.T) {
				t.Parallel()
				clk := clock.NewFake(epoch)
				s, faults := f(t, store.Options{Clock: clk, SessionTTL: ttl, HistoryLimit: 100})
				p.fn(&faultEnv{env: &env{t: t, s: s, clk: clk, ctx: t.Context()}, faults: faults}, fault)
			})
		}
	}
}

type faultEnv struct {
	*env
	faults Faults
}

// broken runs call with op broken by fault: the call must fail, as the
// backend cannot know whether the write was done.
func (e *faultEnv) broken(op string, fault Fault, call func() error) {
	e.t.Helper()
	e.faults.Break(op, fault)
	if err := call(); err == nil {
		e.t.Fatalf("%s with its %s: no error", op, fault)
	}
}

// retry calls until the backend answers (its connections may need to come
// back first), and returns the answer's error.
func (e *faultEnv) retry(call func() error) error {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := call()
		if !errors.Is(err, store.ErrUnavailable) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond) // polling for the backend, with a deadline
	}
}

func (e *faultEnv) history(tenant, sid string) []store.Message {
	e.t.Helper()
	msgs, err := e.s.ListMessages(e.ctx, tenant, sid, "", 100)
	if err != nil {
		e.t.Fatal(err)
	}
	return msgs
}

func faultPost(e *faultEnv, fault Fault) {
	ses := e.create("t1", "u1")
	out := store.OutboundMessage{Tenant: "t1", SessionID: ses.ID, Text: "once", Status: store.StatusDelivered,
		Idempotency: store.Idempotency{Key: "k", Fingerprint: "f"}}
	e.broken("post", fault, func() error { _, _, err := e.s.AppendOutbound(e.ctx, out); return err })
	var m store.Message
	var replayed bool
	if err := e.retry(func() (err error) { m, replayed, err = e.s.AppendOutbound(e.ctx, out); return err }); err != nil {
		e.t.Fatalf("retry: %v", err)
	}
	h := e.history("t1", ses.ID)
	if len(h) != 1 || h[0].ID != m.ID {
		e.t.Fatalf("history %v after a retried post; want the one message %s", h, m.ID)
	}
	if wantReplay := fault != RequestLost; replayed != wantReplay {
		e.t.Fatalf("retry replayed=%v; want %v after the %s", replayed, wantReplay, fault)
	}
}

func faultIngest(e *faultEnv, fault Fault) {
	l := e.listen(store.Filter{Users: []string{"u1"}}, time.Hour)
	in := store.InboundMessage{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", Text: "yes", Thread: "1715000000.000100",
		Idempotency: store.Idempotency{Key: "wh-1", Fingerprint: "f"}}
	e.broken("ingest", fault, func() error { _, err := e.s.Ingest(e.ctx, in); return err })
	e.checkIngestRetry(in, l)
	// The session records the user's last word and thread, once.
	list, _, err := e.s.ListSessions(e.ctx, "t1", store.SessionFilter{User: "u1"}, store.SessionCursor{}, 10)
	if err != nil || len(list) != 1 || !list[0].LastInboundAt.Equal(e.clk.Now()) || list[0].Thread != in.Thread {
		e.t.Fatalf("sessions after a retried ingest: %+v, %v", list, err)
	}
}

// A failed compare-and-set after the append left the listener pending:
// the retry, answered from the idempotency record, must finish the
// matching. A listener registered after the message was appended is not
// its to match.
func faultResolve(e *faultEnv, fault Fault) {
	l := e.listen(store.Filter{Users: []string{"u1"}}, time.Hour)
	in := store.InboundMessage{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", Text: "yes",
		Idempotency: store.Idempotency{Key: "wh-1", Fingerprint: "f"}}
	e.broken("resolve", fault, func() error { _, err := e.s.Ingest(e.ctx, in); return err })
	e.clk.Advance(time.Second)
	later := e.listen(store.Filter{Users: []string{"u1"}}, time.Hour)
	e.checkIngestRetry(in, l)
	if got := e.getListener(later.ID); got.Outcome != store.Pending {
		e.t.Fatalf("a listener registered after the message was decided by its replay: %v", got.Outcome)
	}
}

// checkIngestRetry retries in and checks its message was stored once and
// decided l exactly once.
func (e *faultEnv) checkIngestRetry(in store.InboundMessage, l store.Listener) {
	e.t.Helper()
	var r store.IngestResult
	if err := e.retry(func() (err error) { r, err = e.s.Ingest(e.ctx, in); return err }); err != nil {
		e.t.Fatalf("retry: %v", err)
	}
	if h := e.history("t1", r.Session.ID); len(h) != 1 || h[0].ID != r.Message.ID {
		e.t.Fatalf("history %v after a retried ingest; want the one message %s", h, r.Message.ID)
	}
	if len(r.Matched) != 1 || r.Matched[0] != l.ID {
		e.t.Fatalf("the retry matched %v; want the listener %s", r.Matched, l.ID)
	}
	got := e.getListener(l.ID)
	if got.Outcome != store.Matched || got.Message == nil || got.Message.ID != r.Message.ID {
		e.t.Fatalf("listener after the retry: %v %+v; want matched by %s", got.Outcome, got.Message, r.Message.ID)
	}
}

func faultChatbot(e *faultEnv, fault Fault) {
	c := store.ChatbotStart{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", ChatbotID: "bot1", Greeting: greet,
		GreetingStatus: store.StatusDelivered, Idempotency: store.Idempotency{Key: "cb", Fingerprint: "f"}}
	e.broken("chatbot", fault, func() error { _, err := e.s.StartChatbot(e.ctx, c); return err })
	var r store.ChatbotResult
	if err := e.retry(func() (err error) { r, err = e.s.StartChatbot(e.ctx, c); return err }); err != nil {
		e.t.Fatalf("retry: %v", err)
	}
	if r.Session.State != store.StateBot || r.Greeting.ID == "" {
		e.t.Fatalf("retry answered %+v", r)
	}
	if h := e.history("t1", r.Session.ID); len(h) != 1 || h[0].ID != r.Greeting.ID {
		e.t.Fatalf("history %v after a retried chatbot start; want the one greeting", h)
	}
	// One active session: a create for the tuple is refused.
	_, err := e.s.CreateSession(e.ctx, store.NewSession{Tenant: "t1", Platform: "api", Channel: "api", User: "u1"})
	wantErr(e.t, err, store.ErrSessionExists)
}

func faultCreate(e *faultEnv, fault Fault) {
	ns := store.NewSession{Tenant: "t1", Platform: "api", Channel: "api", User: "u1"}
	e.broken("create", fault, func() error { _, err := e.s.CreateSession(e.ctx, ns); return err })
	var ses store.Session
	err := e.retry(func() (err error) { ses, err = e.s.CreateSession(e.ctx, ns); return err })
	// Without a key, a create that was done answers as a duplicate: the
	// session exists, once, and the refusal names it, so the caller whose
	// answer was lost learns its id.
	if fault == RequestLost {
		if err != nil {
			e.t.Fatalf("retry: %v", err)
		}
	} else {
		wantErr(e.t, err, store.ErrSessionExists)
	}
	r, err := e.s.Ingest(e.ctx, store.InboundMessage{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", Text: "hi"})
	if err != nil || r.SessionStarted {
		e.t.Fatalf("an ingest after the retried create opened another session (started=%v, %v)", r.SessionStarted, err)
	}
	if r.Session.ID != ses.ID {
		e.t.Fatalf("the retried create named session %q; the session is %q", ses.ID, r.Session.ID)
	}
}

func faultClose(e *faultEnv, fault Fault) {
	ses := e.create("t1", "u1")
	e.broken("close", fault, func() error { _, err := e.s.CloseSession(e.ctx, "t1", ses.ID); return err })
	var closed store.Session
	if err := e.retry(func() (err error) { closed, err = e.s.CloseSession(e.ctx, "t1", ses.ID); return err }); err != nil {
		e.t.Fatalf("retry: %v", err)
	}
	if closed.State != store.StateClosed {
		e.t.Fatalf("after a retried close the session is %v", closed.State)
	}
	_, _, err := e.s.AppendOutbound(e.ctx, store.OutboundMessage{Tenant: "t1", SessionID: ses.ID, Text: "x", Status: store.StatusDelivered})
	wantErr(e.t, err, store.ErrSessionClosed)
}

// A delivery's outcome whose recording broke is recorded again: the
// message moves once, and its delivery ends (or is dropped at its next
// claim, its message no longer pending).
func faultFinishDelivery(e *faultEnv, fault Fault) {
	ses := e.create("t1", "u1")
	m, d := e.pending("t1", ses.ID, "hi", "")
	o := store.DeliveryOutcome{Status: store.StatusSent, PlatformID: "wamid.1"}
	e.broken("status", fault, func() error { _, err := e.s.FinishDelivery(e.ctx, d, o); return err })
	var got store.Message
	if err := e.retry(func() (err error) { got, err = e.s.FinishDelivery(e.ctx, d, o); return err }); err != nil {
		e.t.Fatalf("retry: %v", err)
	}
	if got.Status != store.StatusSent || got.PlatformID != "wamid.1" || got.ID != m.ID {
		e.t.Fatalf("after the retried outcome: %+v", got)
	}
	e.clk.Advance(2 * lease)
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("a finished delivery was claimed: %+v", cs)
	}
}

// A cancel whose answer was lost is retried: the listener is cancelled,
// once, and the retry says so.
func faultCancel(e *faultEnv, fault Fault) {
	l := e.listen(store.Filter{Users: []string{"u1"}}, time.Hour)
	e.broken("cancel", fault, func() error { _, err := e.s.CancelListener(e.ctx, "t1", l.ID); return err })
	var got store.Listener
	if err := e.retry(func() (err error) { got, err = e.s.CancelListener(e.ctx, "t1", l.ID); return err }); err != nil {
		e.t.Fatalf("retry: %v", err)
	}
	if got.Outcome != store.Cancelled {
		e.t.Fatalf("after a retried cancel: %v", got.Outcome)
	}
	if r := e.ingest(store.InboundMessage{User: "u1", Text: "late"}); len(r.Matched) != 0 {
		e.t.Fatalf("a cancelled listener matched after the retry")
	}
}

// An ingest into a session a webhook chatbot runs, broken then retried:
// its message is queued for the chatbot, and delivered, once.
func faultBotIngest(e *faultEnv, fault Fault) {
	e.chatbot(store.ChatbotStart{})
	in := store.InboundMessage{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", Text: "hi bot", Bots: []string{"bot1"},
		Idempotency: store.Idempotency{Key: "wh-2", Fingerprint: "f"}}
	e.broken("ingest", fault, func() error { _, err := e.s.Ingest(e.ctx, in); return err })
	var r store.IngestResult
	if err := e.retry(func() (err error) { r, err = e.s.Ingest(e.ctx, in); return err }); err != nil {
		e.t.Fatalf("retry: %v", err)
	}
	cs := e.claim(10)
	if len(cs) != 1 || cs[0].Bot == nil || cs[0].Message.ID != r.Message.ID {
		e.t.Fatalf("claims after a retried ingest: %+v; want its message, for the chatbot", cs)
	}
	e.finish(cs[0], store.DeliveryOutcome{Status: store.StatusDelivered})
	e.clk.Advance(2 * lease)
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("the message was queued twice: %+v", cs)
	}
}

// Finishing a chatbot's delivery, broken then retried: the message is
// ended once, and the next one is delivered (at once, or when the claim's
// lease ends if the first finish was done and its answer lost), once.
func faultBotFinish(e *faultEnv, fault Fault) {
	e.chatbot(store.ChatbotStart{})
	bots := []string{"bot1"}
	e.ingest(store.InboundMessage{User: "u1", Text: "one", Bots: bots})
	m2 := e.ingest(store.InboundMessage{User: "u1", Text: "two", Bots: bots}).Message
	cs := e.claim(10)
	if len(cs) != 1 {
		e.t.Fatalf("claims %+v", cs)
	}
	o := store.DeliveryOutcome{Status: store.StatusDelivered}
	e.broken("botfinish", fault, func() error { _, err := e.s.FinishDelivery(e.ctx, cs[0], o); return err })
	if err := e.retry(func() error { _, err := e.s.FinishDelivery(e.ctx, cs[0], o); return err }); err != nil {
		e.t.Fatalf("retry: %v", err)
	}
	e.clk.Advance(lease)
	next := e.claim(10)
	if len(next) != 1 || next[0].Message.ID != m2.ID {
		e.t.Fatalf("claims after the retried finish: %+v; want the next message", next)
	}
	e.finish(next[0], o)
	e.clk.Advance(2 * lease)
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("claims after both were delivered: %+v", cs)
	}
}

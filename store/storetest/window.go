package storetest

import (
	"time"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// ---- what WhatsApp's reply window runs on (docs/design.md §9) ----

// A session records when its user last wrote: every ingest sets it to the
// ingest's time, whatever opened the session; outbound messages leave it.
// Every read of the session shows it. A message that says when it was sent
// (SentAt) counts from then, never from later than now, and never moves it
// back.
func testLastInbound(e *env) {
	s := e.create("t1", "u1")
	if !s.LastInboundAt.IsZero() {
		e.t.Fatalf("a session nobody wrote in: LastInboundAt %v", s.LastInboundAt)
	}
	e.clk.Advance(time.Minute)
	first := e.ingest(store.InboundMessage{User: "u1", Text: "hello"})
	if first.Session.ID != s.ID || !first.Session.LastInboundAt.Equal(e.clk.Now()) {
		e.t.Fatalf("after the user wrote: %+v, want LastInboundAt %v", first.Session, e.clk.Now())
	}
	wrote := e.clk.Now()
	e.clk.Advance(time.Hour)
	e.post("t1", s.ID, "an answer")
	got, err := e.s.GetSession(e.ctx, "t1", s.ID)
	if err != nil || !got.LastInboundAt.Equal(wrote) {
		e.t.Fatalf("after a post: %v, %v; want LastInboundAt %v still", got.LastInboundAt, err, wrote)
	}
	e.clk.Advance(23 * time.Hour) // the post kept the session alive
	again := e.ingest(store.InboundMessage{SessionID: s.ID, Text: "still there?"})
	if !again.Session.LastInboundAt.Equal(e.clk.Now()) {
		e.t.Fatalf("an ingest into the named session: LastInboundAt %v, want %v", again.Session.LastInboundAt, e.clk.Now())
	}
	list, _, err := e.s.ListSessions(e.ctx, "t1", store.SessionFilter{User: "u1"}, store.SessionCursor{}, 10)
	if err != nil || len(list) != 1 || !list[0].LastInboundAt.Equal(e.clk.Now()) {
		e.t.Fatalf("ListSessions: %+v, %v", list, err)
	}
	// A session the user's message opened has it from the start.
	opened := e.ingest(store.InboundMessage{User: "u2", Text: "hi"})
	if !opened.SessionStarted || !opened.Session.LastInboundAt.Equal(e.clk.Now()) {
		e.t.Fatalf("a session an ingest opened: %+v", opened.Session)
	}

	// The platform's own time: a message it delivers an hour late...
	e.clk.Advance(2 * time.Hour)
	sent := e.clk.Now().Add(-time.Hour)
	late := e.ingest(store.InboundMessage{User: "u2", Text: "an hour ago", SentAt: sent})
	if !late.Session.LastInboundAt.Equal(sent) {
		e.t.Fatalf("a message sent an hour before it came: LastInboundAt %v, want %v", late.Session.LastInboundAt, sent)
	}
	// ...one sent before the newest leaves it...
	older := e.ingest(store.InboundMessage{User: "u2", Text: "two hours ago", SentAt: sent.Add(-time.Hour)})
	if !older.Session.LastInboundAt.Equal(sent) {
		e.t.Fatalf("an older message moved LastInboundAt back: %v, want %v", older.Session.LastInboundAt, sent)
	}
	// ...and a platform clock ahead of ours counts as now.
	ahead := e.ingest(store.InboundMessage{User: "u2", Text: "from the future", SentAt: e.clk.Now().Add(time.Hour)})
	if got, err := e.s.GetSession(e.ctx, "t1", ahead.Session.ID); err != nil || !ahead.Session.LastInboundAt.Equal(e.clk.Now()) ||
		!got.LastInboundAt.Equal(e.clk.Now()) {
		e.t.Fatalf("a message sent after now: LastInboundAt %v (read back %v, %v), want %v", ahead.Session.LastInboundAt, got.LastInboundAt, err, e.clk.Now())
	}
}

// A greeting the server refuses (a closed reply window) is appended FAILED
// with the refusal, and no delivery is recorded for it: nothing claims it.
func testChatbotGreetingRefused(e *env) {
	refusal := &store.PlatformError{Code: "131047", Message: "the window is closed"}
	d := &store.Delivery{ID: ids.Delivery(), Lease: lease}
	r := e.chatbot(store.ChatbotStart{GreetingStatus: store.StatusPending, GreetingDelivery: d,
		Greeting: func(store.Session, store.Contact) store.Outgoing {
			return store.Outgoing{Text: "hello", Refused: refusal}
		}})
	if r.Greeting.Status != store.StatusFailed || r.Greeting.Error == nil || *r.Greeting.Error != *refusal || r.Greeting.Text != "hello" {
		e.t.Fatalf("greeting %+v, want FAILED with the refusal", r.Greeting)
	}
	if m := e.message("t1", r.Session.ID, r.Greeting.ID); m.Status != store.StatusFailed || m.Error == nil || m.Error.Code != "131047" {
		e.t.Fatalf("stored greeting %+v", m)
	}
	e.clk.Advance(2 * lease)
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("a refused greeting was claimed for delivery: %+v", cs)
	}
}

package storetest

import (
	"time"

	"github.com/chatrelay/chatrelay/store"
)

// ---- chatbot queues (docs/design.md §9) ----

// botIngest ingests text from u1 into the api session, naming the
// chatbots that run on webhooks.
func (e *env) botIngest(text, key string, bots ...string) store.IngestResult {
	e.t.Helper()
	return e.ingest(store.InboundMessage{User: "u1", Text: text, Bots: bots, Idempotency: store.Idempotency{Key: key, Fingerprint: key}})
}

// A session's inbound messages reach the chatbot that runs it one at a
// time, in order: the queue is one delivery, its claim the oldest message
// with the session and contact as they stand; finishing it makes the next
// due at once. A retry keeps the head, and counts attempts per message.
func testBotQueueInOrder(e *env) {
	r := e.chatbot(store.ChatbotStart{ContactMetadata: map[string]string{"name": "Ada"}})
	sid := r.Session.ID
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("claims before any inbound message: %+v", cs)
	}
	m1 := e.botIngest("one", "", "bot1").Message
	m2 := e.botIngest("two", "", "bot1").Message
	cs := e.claim(10)
	if len(cs) != 1 || cs[0].Bot == nil || cs[0].Message.ID != m1.ID || cs[0].Message.Text != "one" || cs[0].Attempt != 1 ||
		cs[0].SessionID != sid || cs[0].Tenant != "t1" {
		e.t.Fatalf("first claim %+v, want m1 alone", cs)
	}
	b := cs[0].Bot
	if b.ChatbotID != "bot1" || b.Session.ID != sid || b.Session.State != store.StateBot || b.Contact.Metadata["name"] != "Ada" || b.Contact.User != "u1" {
		e.t.Fatalf("the claim's bot delivery %+v", b)
	}
	if again := e.claim(10); len(again) != 0 {
		e.t.Fatalf("claimed again under the lease, or m2 beside m1: %+v", again)
	}
	e.finish(cs[0], store.DeliveryOutcome{RetryAt: e.clk.Now().Add(5 * time.Second)})
	e.clk.Advance(5 * time.Second)
	cs = e.claim(10)
	if len(cs) != 1 || cs[0].Message.ID != m1.ID || cs[0].Attempt != 2 {
		e.t.Fatalf("the retry %+v, want m1's second attempt", cs)
	}
	if got := e.finish(cs[0], store.DeliveryOutcome{Status: store.StatusDelivered}); got.ID != m1.ID || got.Status != store.StatusReceived {
		e.t.Fatalf("finishing answered %+v; the message does not change", got)
	}
	stale := cs[0]
	cs = e.claim(10)
	if len(cs) != 1 || cs[0].Message.ID != m2.ID || cs[0].Attempt != 1 {
		e.t.Fatalf("after m1: %+v, want m2's first attempt at once", cs)
	}
	// A second finish of m1 (a claim whose lease had run out) ends
	// nothing more.
	e.finish(stale, store.DeliveryOutcome{Status: store.StatusDelivered})
	if again := e.claim(10); len(again) != 0 {
		e.t.Fatalf("a stale finish made the queue due again: %+v", again)
	}
	e.finish(cs[0], store.DeliveryOutcome{Status: store.StatusFailed, Error: &store.PlatformError{Code: "500"}})
	e.clk.Advance(lease)
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("claims after the queue emptied: %+v", cs)
	}
	m3 := e.botIngest("three", "", "bot1").Message
	if cs := e.claim(10); len(cs) != 1 || cs[0].Message.ID != m3.ID {
		e.t.Fatalf("a message after the queue emptied: %+v", cs)
	}
}

// Only a chatbot that runs on a webhook, and only while the session is
// BOT with it, gets messages; what is queued for a chatbot that ended is
// dropped; a replayed ingest queues nothing twice.
func testBotQueueScope(e *env) {
	r := e.chatbot(store.ChatbotStart{})
	sid := r.Session.ID
	e.botIngest("for nobody", "")
	e.botIngest("for another bot", "", "bot2")
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("queued for a chatbot without a webhook: %+v", cs)
	}
	m := e.botIngest("once", "k1", "bot1").Message
	if again := e.botIngest("once", "k1", "bot1"); !again.Replayed {
		e.t.Fatal("the retried ingest was not a replay")
	}
	cs := e.claim(10)
	if len(cs) != 1 || cs[0].Message.ID != m.ID {
		e.t.Fatalf("claims %+v", cs)
	}
	e.finish(cs[0], store.DeliveryOutcome{Status: store.StatusDelivered})
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("a replayed ingest was queued again: %+v", cs)
	}
	// Queued, then the bot ends: nothing is delivered.
	e.botIngest("late", "", "bot1")
	if _, err := e.s.UpdateSession(e.ctx, "t1", sid, store.SessionUpdate{EndBot: true}); err != nil {
		e.t.Fatal(err)
	}
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("claimed for a chatbot that ended: %+v", cs)
	}
	// Another chatbot takes over: it gets what comes from then on.
	e.chatbot(store.ChatbotStart{ChatbotID: "bot2"})
	m2 := e.botIngest("for bot2", "", "bot1", "bot2").Message
	// The claim above found bot1's queue idle, and a backend may take it out
	// of the outbox in the background: an ingest racing that finds it due
	// again once that is done (docs/design.md §9), not necessarily at once.
	deadline := time.Now().Add(5 * time.Second)
	for cs = e.claim(10); len(cs) == 0 && time.Now().Before(deadline); cs = e.claim(10) {
		time.Sleep(10 * time.Millisecond) // polling the backend, with a deadline
	}
	if len(cs) != 1 || cs[0].Message.ID != m2.ID || cs[0].Bot.ChatbotID != "bot2" {
		e.t.Fatalf("claims for bot2: %+v", cs)
	}
}

// An update conditional on a chatbot changes the session only while that
// chatbot runs it: a failed chatbot's end never ends the one that
// replaced it, nor reopens a session a person took over.
func testUpdateIfChatbot(e *env) {
	sid := e.chatbot(store.ChatbotStart{}).Session.ID
	other := store.SessionUpdate{EndBot: true, Metadata: map[string]string{"chatbot_error": "x"}, IfChatbot: "bot2"}
	got, err := e.s.UpdateSession(e.ctx, "t1", sid, other)
	if err != nil || got.State != store.StateBot || got.ChatbotID != "bot1" || got.Metadata["chatbot_error"] != "" {
		e.t.Fatalf("update conditional on another chatbot: %+v, %v; want the session unchanged", got, err)
	}
	if got, err = e.s.GetSession(e.ctx, "t1", sid); err != nil || got.State != store.StateBot || got.ChatbotID != "bot1" {
		e.t.Fatalf("after it: %+v, %v; want BOT with bot1", got, err)
	}
	mine := other
	mine.IfChatbot = "bot1"
	if got, err = e.s.UpdateSession(e.ctx, "t1", sid, mine); err != nil || got.State != store.StateOpen || got.ChatbotID != "" || got.Metadata["chatbot_error"] != "x" {
		e.t.Fatalf("update conditional on its chatbot: %+v, %v; want OPEN with chatbot_error", got, err)
	}
	handoff := store.SessionUpdate{State: store.StateInProgress, IfChatbot: "bot1"}
	if got, err = e.s.UpdateSession(e.ctx, "t1", sid, handoff); err != nil || got.State != store.StateOpen {
		e.t.Fatalf("a handoff by a chatbot that no longer runs the session: %+v, %v; want it still OPEN", got, err)
	}
}

package storetest

import (
	"slices"
	"time"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// ---- deliveries (docs/design.md §9) ----

const lease = 2 * time.Minute

// pending posts a PENDING message with a delivery leased to the caller.
func (e *env) pending(tenant, sessionID, text string, key string) (store.Message, store.DeliveryClaim) {
	e.t.Helper()
	d := &store.Delivery{ID: ids.Delivery(), Lease: lease}
	m, replayed, err := e.s.AppendOutbound(e.ctx, store.OutboundMessage{Tenant: tenant, SessionID: sessionID, Text: text,
		Status: store.StatusPending, Delivery: d, Idempotency: store.Idempotency{Key: key, Fingerprint: key}})
	if err != nil || replayed {
		e.t.Fatalf("AppendOutbound: replayed %v, %v", replayed, err)
	}
	if m.Status != store.StatusPending || !m.StatusAt.Equal(m.CreatedAt) {
		e.t.Fatalf("recorded %v at %v, want PENDING at its creation", m.Status, m.StatusAt)
	}
	return m, store.DeliveryClaim{ID: d.ID, Tenant: tenant, SessionID: sessionID, Message: m, Attempt: 1}
}

func (e *env) claim(n int) []store.DeliveryClaim {
	e.t.Helper()
	cs, err := e.s.ClaimDeliveries(e.ctx, n, lease)
	if err != nil {
		e.t.Fatalf("ClaimDeliveries: %v", err)
	}
	return cs
}

func (e *env) finish(d store.DeliveryClaim, o store.DeliveryOutcome) store.Message {
	e.t.Helper()
	m, err := e.s.FinishDelivery(e.ctx, d, o)
	if err != nil {
		e.t.Fatalf("FinishDelivery: %v", err)
	}
	return m
}

func (e *env) message(tenant, sid, mid string) store.Message {
	e.t.Helper()
	m, err := e.s.GetMessage(e.ctx, tenant, sid, mid)
	if err != nil {
		e.t.Fatalf("GetMessage: %v", err)
	}
	return m
}

// A delivery belongs to the caller that recorded it for its lease; left
// unfinished, any replica claims it after, with the attempt counted. A
// final outcome moves the message on, with an event, and ends it.
func testDeliveryLifecycle(e *env) {
	s := e.create("t1", "u1")
	sub, err := e.s.Subscribe(e.ctx, store.SessionTopic("t1", s.ID))
	if err != nil {
		e.t.Fatal(err)
	}
	defer sub.Close()
	var events []store.Event
	m, d := e.pending("t1", s.ID, "hello", "")
	if ev := next(e.t, sub, &events); ev.Kind != store.EventMessage || ev.Message.Status != store.StatusPending {
		e.t.Fatalf("first event %+v, want the PENDING message", ev)
	}
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("claimed %d deliveries under their caller's lease", len(cs))
	}
	e.clk.Advance(lease)
	cs := e.claim(10)
	if len(cs) != 1 || cs[0].ID != d.ID || cs[0].Message.ID != m.ID || cs[0].Message.Text != "hello" || cs[0].Attempt != 2 ||
		cs[0].Tenant != "t1" || cs[0].SessionID != s.ID {
		e.t.Fatalf("claims after the lease: %+v", cs)
	}
	if again := e.claim(10); len(again) != 0 {
		e.t.Fatalf("a claimed delivery was claimed again under the claim's lease: %+v", again)
	}
	e.clk.Advance(time.Second)
	got := e.finish(cs[0], store.DeliveryOutcome{Status: store.StatusSent, PlatformID: "wamid.1"})
	if got.Status != store.StatusSent || got.PlatformID != "wamid.1" || !got.StatusAt.Equal(e.clk.Now()) {
		e.t.Fatalf("after the outcome: %v %q at %v", got.Status, got.PlatformID, got.StatusAt)
	}
	ev := next(e.t, sub, &events)
	if ev.Kind != store.EventMessageStatus || ev.Status.MessageID != m.ID || ev.Status.Seq != m.Seq ||
		ev.Status.Status != store.StatusSent || ev.Status.PlatformID != "wamid.1" {
		e.t.Fatalf("status event %+v", ev)
	}
	if h, _ := e.s.ListMessages(e.ctx, "t1", s.ID, "", 10); len(h) != 1 || h[0].Status != store.StatusSent || h[0].PlatformID != "wamid.1" {
		e.t.Fatalf("history after the outcome: %+v", h)
	}
	e.clk.Advance(lease)
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("a finished delivery was claimed: %+v", cs)
	}
}

// A failure that may not last reschedules the delivery; it is due at the
// retry time, not before, and keeps its attempts.
func testDeliveryRetry(e *env) {
	s := e.create("t1", "u1")
	_, d := e.pending("t1", s.ID, "hello", "")
	e.finish(d, store.DeliveryOutcome{RetryAt: e.clk.Now().Add(5 * time.Second)})
	e.clk.Advance(4 * time.Second)
	if cs := e.claim(10); len(cs) != 0 {
		e.t.Fatalf("claimed before its retry time: %+v", cs)
	}
	e.clk.Advance(time.Second)
	cs := e.claim(10)
	if len(cs) != 1 || cs[0].Attempt != 2 || cs[0].Message.Status != store.StatusPending {
		e.t.Fatalf("at the retry time: %+v", cs)
	}
	e.finish(cs[0], store.DeliveryOutcome{RetryAt: e.clk.Now().Add(time.Minute)})
	e.clk.Advance(time.Minute)
	if cs = e.claim(10); len(cs) != 1 || cs[0].Attempt != 3 {
		e.t.Fatalf("the second retry: %+v", cs)
	}
	got := e.finish(cs[0], store.DeliveryOutcome{Status: store.StatusFailed, Error: &store.PlatformError{Code: "unreachable", Message: "gave up"}})
	if got.Status != store.StatusFailed || got.Error == nil || got.Error.Code != "unreachable" {
		e.t.Fatalf("after giving up: %+v", got)
	}
	// Claims are bounded, oldest due first.
	for i := range 5 {
		e.pending("t1", s.ID, "m", "")
		_ = i
	}
	e.clk.Advance(lease)
	if cs := e.claim(3); len(cs) != 3 {
		e.t.Fatalf("claimed %d of 5 with n=3", len(cs))
	}
	if cs := e.claim(3); len(cs) != 2 {
		e.t.Fatalf("claimed %d of the 2 left", len(cs))
	}
}

// A retried post replays the recorded message, and schedules nothing new.
func testDeliveryIdempotent(e *env) {
	s := e.create("t1", "u1")
	m, _ := e.pending("t1", s.ID, "once", "k1")
	again, replayed, err := e.s.AppendOutbound(e.ctx, store.OutboundMessage{Tenant: "t1", SessionID: s.ID, Text: "once",
		Status: store.StatusPending, Delivery: &store.Delivery{ID: ids.Delivery(), Lease: lease},
		Idempotency: store.Idempotency{Key: "k1", Fingerprint: "k1"}})
	if err != nil || !replayed || again.ID != m.ID {
		e.t.Fatalf("retry: %v replayed=%v %v", again.ID, replayed, err)
	}
	e.clk.Advance(lease)
	cs := e.claim(10)
	if len(cs) != 1 || cs[0].Message.ID != m.ID {
		e.t.Fatalf("claims after a replayed post: %+v; want the first post's delivery alone", cs)
	}
}

// Statuses move forward only: SENT → DELIVERED → READ, steps skipped at
// will, FAILED from any but READ; a stale or repeated receipt changes
// nothing, and only changes are events. A receipt that came before the
// message was known by its platform id is applied when it is.
func testReceipts(e *env) {
	s := e.create("t1", "u1")
	sub, err := e.s.Subscribe(e.ctx, store.SessionTopic("t1", s.ID))
	if err != nil {
		e.t.Fatal(err)
	}
	defer sub.Close()
	var events []store.Event
	receipt := func(id string, st store.MessageStatus) {
		e.t.Helper()
		e.clk.Advance(time.Second)
		if err := e.s.ApplyReceipt(e.ctx, store.Receipt{Tenant: "t1", Platform: "api", PlatformID: id, Status: st, At: e.clk.Now()}); err != nil {
			e.t.Fatalf("ApplyReceipt: %v", err)
		}
	}
	statusOf := func(m store.Message) store.MessageStatus { e.t.Helper(); return e.message("t1", s.ID, m.ID).Status }

	m, d := e.pending("t1", s.ID, "a", "")
	next(e.t, sub, &events) // the message
	e.finish(d, store.DeliveryOutcome{Status: store.StatusSent, PlatformID: "p1"})
	next(e.t, sub, &events)
	receipt("p1", store.StatusRead) // skipping DELIVERED
	if ev := next(e.t, sub, &events); ev.Status.Status != store.StatusRead || !ev.Status.At.Equal(e.clk.Now()) {
		e.t.Fatalf("read receipt event %+v", ev.Status)
	}
	receipt("p1", store.StatusDelivered) // stale
	receipt("p1", store.StatusRead)      // repeated
	receipt("p1", store.StatusFailed)    // after READ
	if st := statusOf(m); st != store.StatusRead {
		e.t.Fatalf("after stale receipts: %v, want READ", st)
	}

	m2, d2 := e.pending("t1", s.ID, "b", "")
	next(e.t, sub, &events)
	e.finish(d2, store.DeliveryOutcome{Status: store.StatusSent, PlatformID: "p2"})
	next(e.t, sub, &events)
	receipt("p2", store.StatusDelivered)
	next(e.t, sub, &events)
	e.clk.Advance(time.Second)
	if err := e.s.ApplyReceipt(e.ctx, store.Receipt{Tenant: "t1", Platform: "api", PlatformID: "p2", Status: store.StatusFailed,
		At: e.clk.Now(), Error: &store.PlatformError{Code: "131047", Message: "window closed"}}); err != nil {
		e.t.Fatal(err)
	}
	ev := next(e.t, sub, &events)
	if ev.Status.Status != store.StatusFailed || ev.Status.Error == nil || ev.Status.Error.Code != "131047" {
		e.t.Fatalf("failed receipt event %+v", ev.Status)
	}
	if got := e.message("t1", s.ID, m2.ID); got.Status != store.StatusFailed || got.Error.Code != "131047" || got.PlatformID != "p2" {
		e.t.Fatalf("after a failed receipt: %+v", got)
	}
	receipt("p2", store.StatusRead) // nothing after FAILED
	if st := statusOf(m2); st != store.StatusFailed {
		e.t.Fatalf("after FAILED then READ: %v", st)
	}

	// The receipt beats the send's answer.
	m3, d3 := e.pending("t1", s.ID, "c", "")
	next(e.t, sub, &events)
	receipt("p3", store.StatusDelivered)
	if st := statusOf(m3); st != store.StatusPending {
		e.t.Fatalf("a receipt for an id not known yet moved a message: %v", st)
	}
	got := e.finish(d3, store.DeliveryOutcome{Status: store.StatusSent, PlatformID: "p3"})
	if got.Status != store.StatusDelivered || got.PlatformID != "p3" {
		e.t.Fatalf("after the send's answer came second: %v %q, want DELIVERED", got.Status, got.PlatformID)
	}
	var seen []store.MessageStatus
	for range 2 {
		seen = append(seen, next(e.t, sub, &events).Status.Status)
	}
	if !slices.Equal(seen, []store.MessageStatus{store.StatusSent, store.StatusDelivered}) {
		e.t.Fatalf("events %v, want SENT then DELIVERED", seen)
	}
	// Another tenant's id is another id.
	if err := e.s.ApplyReceipt(e.ctx, store.Receipt{Tenant: "t2", Platform: "api", PlatformID: "p3", Status: store.StatusRead, At: e.clk.Now()}); err != nil {
		e.t.Fatal(err)
	}
	if st := statusOf(m3); st != store.StatusDelivered {
		e.t.Fatalf("another tenant's receipt moved the message: %v", st)
	}
	if _, err := e.s.GetMessage(e.ctx, "t2", s.ID, m3.ID); err == nil {
		e.t.Fatal("another tenant read the message")
	}
	if _, err := e.s.GetMessage(e.ctx, "t1", s.ID, "msg_nope"); err == nil {
		e.t.Fatal("GetMessage of a message id that is no id answered")
	}
}

// A chatbot's greeting can be delivered like a post.
func testChatbotGreetingDelivery(e *env) {
	d := &store.Delivery{ID: ids.Delivery(), Lease: lease}
	r := e.chatbot(store.ChatbotStart{GreetingStatus: store.StatusPending, GreetingDelivery: d})
	if r.Greeting.Status != store.StatusPending {
		e.t.Fatalf("greeting %v, want PENDING", r.Greeting.Status)
	}
	e.clk.Advance(lease)
	cs := e.claim(10)
	if len(cs) != 1 || cs[0].ID != d.ID || cs[0].Message.ID != r.Greeting.ID || cs[0].SessionID != r.Session.ID {
		e.t.Fatalf("claims: %+v", cs)
	}
	if got := e.finish(cs[0], store.DeliveryOutcome{Status: store.StatusDelivered, PlatformID: "ts1"}); got.Status != store.StatusDelivered {
		e.t.Fatalf("greeting after its delivery: %v", got.Status)
	}
}

// ---- listing sessions ----

// ListSessions lists a tenant's sessions, newest activity first, by
// platform, channel, user and state, a page at a time.
func testListSessions(e *env) {
	open := func(tenant, platform, channel, user string) store.Session {
		e.t.Helper()
		e.clk.Advance(time.Second)
		s, err := e.s.CreateSession(e.ctx, store.NewSession{Tenant: tenant, Platform: platform, Channel: channel, User: user})
		if err != nil {
			e.t.Fatal(err)
		}
		return s
	}
	a := open("t1", "api", "api", "u1")
	b := open("t1", "slack", "C1", "U2")
	c := open("t1", "slack", "C2", "U2")
	d := open("t1", "whatsapp", "1555", "+15551234567")
	open("t2", "api", "api", "u1")
	if _, err := e.s.CloseSession(e.ctx, "t1", c.ID); err != nil {
		e.t.Fatal(err)
	}
	e.clk.Advance(time.Second)
	e.post("t1", a.ID, "a is newest now")

	list := func(f store.SessionFilter, after store.SessionCursor, limit int) ([]string, store.SessionCursor) {
		e.t.Helper()
		page, next, err := e.s.ListSessions(e.ctx, "t1", f, after, limit)
		if err != nil {
			e.t.Fatalf("ListSessions(%+v): %v", f, err)
		}
		var ids []string
		for _, s := range page {
			ids = append(ids, s.ID)
		}
		return ids, next
	}
	want := func(what string, got, want []string) {
		e.t.Helper()
		if !slices.Equal(got, want) {
			e.t.Fatalf("%s: %v, want %v", what, got, want)
		}
	}
	all, more := list(store.SessionFilter{}, store.SessionCursor{}, 10)
	want("all of t1, newest activity first", all, []string{a.ID, d.ID, c.ID, b.ID})
	if more.ID != "" {
		e.t.Fatalf("a next cursor after the last page: %+v", more)
	}
	got, _ := list(store.SessionFilter{Platform: "slack"}, store.SessionCursor{}, 10)
	want("slack", got, []string{c.ID, b.ID})
	got, _ = list(store.SessionFilter{Platform: "slack", Channel: "C1"}, store.SessionCursor{}, 10)
	want("slack C1", got, []string{b.ID})
	got, _ = list(store.SessionFilter{User: "U2"}, store.SessionCursor{}, 10)
	want("user U2", got, []string{c.ID, b.ID})
	got, _ = list(store.SessionFilter{User: "U2", State: store.StateOpen}, store.SessionCursor{}, 10)
	want("user U2, open", got, []string{b.ID})
	got, _ = list(store.SessionFilter{State: store.StateClosed}, store.SessionCursor{}, 10)
	want("closed", got, []string{c.ID})

	// Pages of 1 walk the same order, and end.
	var walked []string
	var cur store.SessionCursor
	for range 10 {
		page, next := list(store.SessionFilter{}, cur, 1)
		walked = append(walked, page...)
		if next.ID == "" {
			break
		}
		cur = next
	}
	want("walked a page at a time", walked, all)
	page, next := list(store.SessionFilter{User: "U2"}, store.SessionCursor{}, 1)
	want("user U2, first page", page, []string{c.ID})
	page, _ = list(store.SessionFilter{User: "U2"}, next, 1)
	want("user U2, second page", page, []string{b.ID})
	// Expiry reads at once.
	e.clk.Advance(ttl)
	got, _ = list(store.SessionFilter{State: store.StateExpired}, store.SessionCursor{}, 10)
	want("expired", got, []string{a.ID, d.ID, b.ID})
}

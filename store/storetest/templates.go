package storetest

import (
	"reflect"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// ---- WhatsApp templates (docs/design.md §9) ----

var orderReady = &store.Template{Name: "order_ready", Language: "en_US", Parameters: []string{"Ada", "A-1001"}}

// A message sent as a template keeps its template wherever it is read: the
// append's answer, a replay of its key, its event, history, GetMessage,
// and the delivery a replica claims (which sends it).
func testTemplatesAreKept(e *env) {
	s := e.create("t1", "u1")
	sub, err := e.s.Subscribe(e.ctx, store.SessionTopic("t1", s.ID))
	if err != nil {
		e.t.Fatal(err)
	}
	defer sub.Close()
	var events []store.Event
	d := &store.Delivery{ID: ids.Delivery(), Lease: lease}
	out := store.OutboundMessage{Tenant: "t1", SessionID: s.ID, Text: "Your order A-1001 is ready", Status: store.StatusPending,
		Delivery: d, Template: orderReady, Idempotency: store.Idempotency{Key: "k1", Fingerprint: "f1"}}
	m, _, err := e.s.AppendOutbound(e.ctx, out)
	if err != nil {
		e.t.Fatal(err)
	}
	same := func(where string, got *store.Template) {
		e.t.Helper()
		if !reflect.DeepEqual(got, orderReady) {
			e.t.Fatalf("%s: template %+v, want %+v", where, got, orderReady)
		}
	}
	same("the append's answer", m.Template)
	again, replayed, err := e.s.AppendOutbound(e.ctx, out)
	if err != nil || !replayed {
		e.t.Fatalf("replay: %v, %v", replayed, err)
	}
	same("a replay", again.Template)
	ev := next(e.t, sub, &events)
	if ev.Message == nil {
		e.t.Fatalf("event %+v", ev)
	}
	same("the event", ev.Message.Template)
	h, err := e.s.ListMessages(e.ctx, "t1", s.ID, "", 10)
	if err != nil || len(h) != 1 {
		e.t.Fatalf("history %+v, %v", h, err)
	}
	same("history", h[0].Template)
	same("GetMessage", e.message("t1", s.ID, m.ID).Template)
	e.clk.Advance(lease)
	cs := e.claim(10)
	if len(cs) != 1 {
		e.t.Fatalf("claims %+v", cs)
	}
	same("the claimed delivery", cs[0].Message.Template)
	// A text message has none.
	if txt := e.post("t1", s.ID, "plain"); txt.Template != nil {
		e.t.Fatalf("a text message with a template: %+v", txt.Template)
	}
}

// A chatbot's greeting can go as a template, and the contact it ran with
// can be read back, per tenant.
func testChatbotTemplateAndContact(e *env) {
	r := e.chatbot(store.ChatbotStart{ContactMetadata: map[string]string{"name": "Ada"},
		Greeting: func(_ store.Session, c store.Contact) store.Outgoing {
			return store.Outgoing{Text: "hi " + c.Metadata["name"], Template: orderReady}
		}})
	if r.Greeting.Text != "hi Ada" || !reflect.DeepEqual(r.Greeting.Template, orderReady) {
		e.t.Fatalf("greeting %+v", r.Greeting)
	}
	if m := e.message("t1", r.Session.ID, r.Greeting.ID); !reflect.DeepEqual(m.Template, orderReady) {
		e.t.Fatalf("stored greeting %+v", m)
	}
	ct, err := e.s.GetContact(e.ctx, "t1", "api", "u1")
	if err != nil || ct.Metadata["name"] != "Ada" || ct.User != "u1" || ct.Platform != "api" || ct.CreatedAt.IsZero() {
		e.t.Fatalf("GetContact: %+v, %v", ct, err)
	}
	for _, c := range [][3]string{{"t2", "api", "u1"}, {"t1", "slack", "u1"}, {"t1", "api", "nobody"}} {
		ct, err := e.s.GetContact(e.ctx, c[0], c[1], c[2])
		if err != nil || len(ct.Metadata) != 0 || !ct.CreatedAt.IsZero() {
			e.t.Fatalf("GetContact%v: %+v, %v; want none", c, ct, err)
		}
	}
}

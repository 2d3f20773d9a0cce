package storetest

import (
	"github.com/chatrelay/chatrelay/store"
)

// ---- threads (docs/design.md §9) ----

// A session follows its user's thread: an inbound message's thread
// becomes the session's, every outbound message appended after goes to
// it (a post, a greeting, a delivery a replica claims), until the user
// writes outside a thread.
func testThreads(e *env) {
	const thread = "1715000000.000100"
	in := e.ingest(store.InboundMessage{User: "u1", Text: "in a thread", Thread: thread})
	sid := in.Session.ID
	if in.Session.Thread != thread || in.Message.Thread != thread {
		e.t.Fatalf("ingest: session thread %q, message thread %q", in.Session.Thread, in.Message.Thread)
	}
	if got, err := e.s.GetSession(e.ctx, "t1", sid); err != nil || got.Thread != thread {
		e.t.Fatalf("GetSession: %q, %v", got.Thread, err)
	}
	post := e.post("t1", sid, "a reply")
	g := e.chatbot(store.ChatbotStart{})
	pending, _ := e.pending("t1", sid, "later", "")
	if post.Thread != thread || g.Session.ID != sid || g.Greeting.Thread != thread || pending.Thread != thread {
		e.t.Fatalf("outbound threads: post %q, greeting %q (session %s), pending %q", post.Thread, g.Greeting.Thread, g.Session.ID, pending.Thread)
	}
	h, err := e.s.ListMessages(e.ctx, "t1", sid, "", 10)
	if err != nil || len(h) != 4 {
		e.t.Fatalf("history %+v, %v", h, err)
	}
	for _, m := range h {
		if m.Thread != thread {
			e.t.Fatalf("history: %q in thread %q", m.Text, m.Thread)
		}
	}
	e.clk.Advance(lease)
	if cs := e.claim(10); len(cs) != 1 || cs[0].Message.Thread != thread {
		e.t.Fatalf("claimed %+v", cs)
	}
	top := e.ingest(store.InboundMessage{User: "u1", Text: "back in the channel"})
	if top.Session.ID != sid || top.Session.Thread != "" || top.Message.Thread != "" {
		e.t.Fatalf("a message outside a thread: %+v", top.Session)
	}
	if m := e.post("t1", sid, "in the channel"); m.Thread != "" {
		e.t.Fatalf("a post after the user left the thread went to %q", m.Thread)
	}
}

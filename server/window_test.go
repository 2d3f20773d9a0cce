package server_test

import (
	"testing"
	"time"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/clock"
)

// postFull is PostMessage over gRPC, failing the test on an RPC error.
func (ts *testServer) postFull(req *pb.PostMessageRequest) *pb.PostMessageResponse {
	ts.t.Helper()
	r, err := ts.chat.PostMessage(ts.ctx(), req)
	if err != nil {
		ts.t.Fatalf("PostMessage: %v", err)
	}
	return r
}

// getSession reads a session over gRPC.
func (ts *testServer) getSession(sid string) *pb.Session {
	ts.t.Helper()
	r, err := ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: sid})
	if err != nil {
		ts.t.Fatalf("GetSession: %v", err)
	}
	return r.Session
}

// WhatsApp's 24-hour window, on the injected clock: inside it a post goes
// as text; once 24 hours have passed since the customer last wrote, a post
// fails at once, 131047 reply_window_closed, and Meta is not called; the
// customer's next message opens the window again. The session shows when
// it closes. On each backend, across replicas (the one that saw the window
// open and the one that did not), over gRPC and REST.
func TestWhatsAppReplyWindow(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		p.whatsapp.EnforceWindow(d.a.clk.Now)
		const customer = "15551230001"
		if r := d.b.whatsAppWebhook(p.whatsapp.Message("wamid.W1", customer, "Is my order ready?")); r.code != 200 {
			t.Fatalf("webhook: %d %s", r.code, r.body)
		}
		wrote := d.a.clk.Now()
		ses := d.a.sessionOf("whatsapp", "+"+customer)
		sid := ses.SessionId
		if got := ses.ReplyWindowClosesAt.AsTime(); !got.Equal(wrote.Add(24 * time.Hour)) {
			t.Fatalf("reply_window_closes_at %v, want %v", got, wrote.Add(24*time.Hour))
		}

		inside := d.a.postFull(&pb.PostMessageRequest{SessionId: sid, Message: "Not yet."})
		if inside.Status != pb.MessageStatus_MESSAGE_STATUS_SENT {
			t.Fatalf("inside the window: %v, want SENT", inside)
		}
		d.a.clk.Advance(24*time.Hour - time.Millisecond)
		rr := d.b.rest("POST", "/v1/sessions/"+sid+"/messages", map[string]any{"message": "Almost."})
		if rr.code != 200 || str(rr.json(t), "status") != "MESSAGE_STATUS_SENT" {
			t.Fatalf("a millisecond before the window closes, over REST: %d %s", rr.code, rr.body)
		}
		if n := len(p.whatsapp.Sends()); n != 2 {
			t.Fatalf("Meta got %d sends inside the window, want 2", n)
		}

		d.a.clk.Advance(time.Millisecond)
		for name, post := range map[string]func() (string, string, string){
			"gRPC on the replica that saw the window open": func() (string, string, string) {
				r := d.a.postFull(&pb.PostMessageRequest{SessionId: sid, Message: "Your order is ready."})
				return r.Status.String(), r.Error.GetCode(), r.Error.GetReason()
			},
			"REST on the other": func() (string, string, string) {
				rr := d.b.rest("POST", "/v1/sessions/"+sid+"/messages", map[string]any{"message": "Your order is ready!"})
				m := rr.json(t)
				return str(m, "status"), str(m, "error", "code"), str(m, "error", "reason")
			},
		} {
			status, code, reason := post()
			if status != "MESSAGE_STATUS_FAILED" || code != "131047" || reason != "reply_window_closed" {
				t.Fatalf("%s, past the window: %s %s %s; want FAILED 131047 reply_window_closed", name, status, code, reason)
			}
		}
		if n := len(p.whatsapp.Sends()); n != 2 {
			t.Fatalf("Meta was called outside the window: %d sends", n)
		}
		h := d.b.history(sid)
		if last := h[len(h)-1]; last.Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || last.Error.GetReason() != "reply_window_closed" {
			t.Fatalf("the refused message, kept: %v", last)
		}

		d.a.clk.Advance(3 * time.Hour)
		d.a.whatsAppWebhook(p.whatsapp.Message("wamid.W2", customer, "Hello?"))
		if got := d.b.getSession(sid).ReplyWindowClosesAt.AsTime(); !got.Equal(d.a.clk.Now().Add(24 * time.Hour)) {
			t.Fatalf("after the customer wrote again: reply_window_closes_at %v", got)
		}
		for _, ts := range []*testServer{d.b, d.a} {
			if r := ts.postFull(&pb.PostMessageRequest{SessionId: sid, Message: "Ready now."}); r.Status != pb.MessageStatus_MESSAGE_STATUS_SENT {
				t.Fatalf("after the customer wrote again: %v, want SENT", r)
			}
		}
		if n := len(p.whatsapp.Sends()); n != 4 {
			t.Fatalf("Meta got %d sends, want 4", n)
		}
	})
}

// The window runs from when the customer wrote, by Meta's timestamp, not
// from when the webhook came: a message Meta delivers 23 h 58 min late
// leaves 2 minutes. After them a post fails at once, and Meta is not
// called.
func TestWhatsAppWindowRunsFromWhenTheCustomerWrote(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		p.whatsapp.EnforceWindow(d.a.clk.Now)
		const customer = "15551230004"
		sent := d.a.clk.Now().Add(-24*time.Hour + 2*time.Minute).Truncate(time.Second) // Meta's timestamps are in seconds
		if r := d.b.whatsAppWebhook(p.whatsapp.MessageSentAt("wamid.L1", customer, "Still open?", sent)); r.code != 200 {
			t.Fatalf("webhook: %d %s", r.code, r.body)
		}
		ses := d.a.sessionOf("whatsapp", "+"+customer)
		if got := ses.ReplyWindowClosesAt.AsTime(); !got.Equal(sent.Add(24 * time.Hour)) {
			t.Fatalf("reply_window_closes_at %v, want %v: 24 hours from when the customer wrote", got, sent.Add(24*time.Hour))
		}
		if r := d.a.postFull(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: "Yes."}); r.Status != pb.MessageStatus_MESSAGE_STATUS_SENT {
			t.Fatalf("inside what is left of the window: %v, want SENT", r)
		}
		d.a.clk.Advance(2 * time.Minute)
		r := d.b.postFull(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: "Still here."})
		if r.Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || r.Error.GetCode() != "131047" || r.Error.GetReason() != "reply_window_closed" {
			t.Fatalf("past the window: %v; want FAILED 131047 reply_window_closed", r)
		}
		if n := len(p.whatsapp.Sends()); n != 1 {
			t.Fatalf("Meta got %d sends, want 1: the hub let a post outside the window through", n)
		}
	})
}

// A session nobody has written in has no window: a chatbot's greeting to
// a new WhatsApp contact fails at once, and a post too, without a call.
func TestWhatsAppWithoutAWordFromTheCustomer(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		p.whatsapp.EnforceWindow(d.a.clk.Now)
		r, err := d.a.chat.SendChatbotMessage(d.a.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "support", To: "+15551230002"})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_FAILED || r.Error.GetCode() != "131047" ||
			r.Error.GetReason() != "reply_window_closed" || r.GreetingStatus != pb.MessageStatus_MESSAGE_STATUS_FAILED {
			t.Fatalf("greeting to a customer who never wrote: %v", r)
		}
		if r.Session.ReplyWindowClosesAt != nil {
			t.Fatalf("a session nobody wrote in shows a window: %v", r.Session.ReplyWindowClosesAt)
		}
		if post := d.b.postFull(&pb.PostMessageRequest{SessionId: r.SessionId, Message: "hello?"}); post.Error.GetCode() != "131047" {
			t.Fatalf("post: %v", post)
		}
		if n := len(p.whatsapp.Sends()); n != 0 {
			t.Fatalf("Meta got %d sends", n)
		}
	})
}

// When Meta's view of the window differs from the hub's (a clock apart),
// Meta's own 131047 is the answer: FAILED, reply_window_closed. The fake
// answers free text outside its window as Meta does.
func TestMetasWindowRefusalIsAnswered(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option())
	meta := clock.NewFake(ts.clk.Now())
	p.whatsapp.EnforceWindow(meta.Now)
	ts.whatsAppWebhook(p.whatsapp.Message("wamid.M1", "15551230003", "hi"))
	meta.Advance(25 * time.Hour) // Meta's clock, a day ahead of the hub's
	sid := ts.sessionOf("whatsapp", "+15551230003").SessionId
	r := ts.postFull(&pb.PostMessageRequest{SessionId: sid, Message: "hello"})
	if r.Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || r.Error.GetCode() != "131047" || r.Error.GetReason() != "reply_window_closed" {
		t.Fatalf("answer %v", r)
	}
	if sends := p.whatsapp.Sends(); len(sends) != 1 || sends[0].Text != "hello" || sends[0].ID != "" {
		t.Fatalf("Meta got %+v, want the one refused text", sends)
	}
}

package server_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/platformtest"
	"github.com/chatrelay/chatrelay/server"
)

// botSecret signs the echo chatbot's webhooks.
const botSecret = "whsec_ZWNoby1ib3Qtc2VjcmV0LWZvci10aGUtdGVzdHMh"

// echoBot is a chatbot that runs on a webhook (docs/design.md §9): its
// receiver on loopback verifies every delivery as a third party would.
// By default it answers each message with "echo: <text>", and ends on
// "bye".
type echoBot struct {
	recv *platformtest.WebhookReceiver
}

func newEchoBot(t *testing.T) *echoBot {
	t.Helper()
	b := &echoBot{recv: platformtest.NewWebhookReceiver(botSecret)}
	t.Cleanup(b.recv.Close)
	b.recv.Answer(echo)
	return b
}

func echo(h platformtest.Webhook) platformtest.WebhookAnswer {
	text := str(h.Event, "message", "text")
	return platformtest.WebhookAnswer{Body: map[string]any{"replies": []map[string]string{{"text": "echo: " + text}}, "end": text == "bye"}}
}

func (b *echoBot) option() option {
	return func(c *serverConfig) {
		c.Chatbots = append(c.Chatbots, server.Chatbot{ID: "bot_echo", Name: "echo", Greeting: "Hi! I repeat what you say.",
			Webhook: &server.ChatbotWebhook{URL: b.recv.URL(), Secret: botSecret}})
		c.Metrics = prometheus.NewRegistry()
	}
}

// attempts counts the deployment's delivery attempts on platform with
// result, on every replica.
func (d *deployment) attempts(platform, result string) float64 {
	n := 0.0
	for i, ts := range []*testServer{d.a, d.b} {
		if i == 1 && !d.redis {
			break
		}
		n += max(0, ts.scrape().value("chatrelay_delivery_attempts_total", "platform", platform, "result", result))
	}
	return n
}

func onEachBackendWithBot(t *testing.T, fn func(t *testing.T, d *deployment, b *echoBot)) {
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		b := newEchoBot(t)
		ts := start(t, nil, nil, b.option())
		fn(t, &deployment{a: ts, b: ts}, b)
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		b := newEchoBot(t)
		cl := startClusterWith(t, 2, clusterOptions{server: []option{b.option()}})
		fn(t, &deployment{a: cl.replicas[0], b: cl.replicas[1], redis: true}, b)
	})
}

// startBot starts the echo chatbot with user on the api channel.
func (ts *testServer) startBot(user string, skip bool) *pb.SendChatbotMessageResponse {
	ts.t.Helper()
	r, err := ts.chat.SendChatbotMessage(ts.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "echo", From: "api", To: user,
		SkipIfBotInExecution: skip, ContactMetadata: map[string]string{"name": "Ada"}})
	if err != nil {
		ts.t.Fatalf("SendChatbotMessage: %v", err)
	}
	return r
}

func (ts *testServer) say(sid, text string) *pb.Message {
	ts.t.Helper()
	r, err := ts.chat.IngestMessage(ts.ctx(), &pb.IngestMessageRequest{SessionId: sid, Text: text})
	if err != nil {
		ts.t.Fatalf("IngestMessage(%q): %v", text, err)
	}
	return r.Message
}

// texts are a session's messages as "<direction> <text>".
func (ts *testServer) texts(sid string) []string {
	ts.t.Helper()
	var out []string
	for _, m := range ts.history(sid) {
		d := "<"
		if m.Direction == pb.Direction_DIRECTION_OUTBOUND {
			d = ">"
		}
		out = append(out, d+" "+m.Text)
	}
	return out
}

func (ts *testServer) state(sid string) pb.SessionState {
	ts.t.Helper()
	r, err := ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: sid})
	if err != nil {
		ts.t.Fatal(err)
	}
	return r.Session.State
}

// A whole conversation with a running chatbot: the greeting, the user's
// message delivered to the bot as message.received (signed, with the
// session and contact), the bot's reply posted into the session as the
// chatbot's, and `end` making the session OPEN. skip_if_bot_in_execution
// skips while the bot runs, and not after.
func TestChatbotConversation(t *testing.T) {
	t.Parallel()
	onEachBackendWithBot(t, func(t *testing.T, d *deployment, b *echoBot) {
		start := d.a.startBot("u-conv", true)
		sid := start.SessionId
		if skip := d.b.startBot("u-conv", true); skip.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SKIPPED ||
			skip.SkipReason != pb.SkipReason_SKIP_REASON_BOT_IN_EXECUTION {
			t.Fatalf("while the bot runs: %v", skip)
		}
		watch := d.a.liveWatch(sid)
		hello := d.b.say(sid, "hello")
		recvOrFail(t, watch.Recv) // hello
		reply := recvOrFail(t, watch.Recv).GetMessage()
		if reply.Text != "echo: hello" || reply.Direction != pb.Direction_DIRECTION_OUTBOUND || reply.FromUser != "bot_echo" {
			t.Fatalf("the bot's reply %v", reply)
		}
		hooks := b.recv.Hooks()
		if len(hooks) != 1 || hooks[0].Refused != "" || hooks[0].ID != hello.MessageId {
			t.Fatalf("webhooks %+v, want hello's, signed, its id the message's", hooks)
		}
		ev := hooks[0].Event
		if str(ev, "type") != "message.received" || str(ev, "message", "text") != "hello" || str(ev, "message", "message_id") != hello.MessageId ||
			str(ev, "session", "session_id") != sid || str(ev, "session", "state") != "SESSION_STATE_BOT" ||
			str(ev, "session", "chatbot_id") != "bot_echo" || str(ev, "contact", "metadata", "name") != "Ada" || str(ev, "contact", "user") != "u-conv" {
			t.Fatalf("event %s", hooks[0].Body)
		}
		d.a.say(sid, "bye")
		recvOrFail(t, watch.Recv) // bye
		if m := recvOrFail(t, watch.Recv).GetMessage(); m.Text != "echo: bye" {
			t.Fatalf("the reply to bye: %v", m)
		}
		waitFor(t, "the session to be OPEN", func() bool { return d.b.state(sid) == pb.SessionState_SESSION_STATE_OPEN })
		want := []string{"> Hi! I repeat what you say.", "< hello", "> echo: hello", "< bye", "> echo: bye"}
		if got := d.b.texts(sid); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("history %q, want %q", got, want)
		}
		d.a.say(sid, "anyone?")
		if again := d.b.startBot("u-conv", true); again.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SENT || again.SessionId != sid {
			t.Fatalf("after the bot ended: %v", again)
		}
		if n := len(b.recv.Hooks()); n != 2 {
			t.Fatalf("%d webhooks; a message after the bot ended reached it", n)
		}
	})
}

// handoff gives the session to a human: IN_PROGRESS.
func TestChatbotHandoff(t *testing.T) {
	t.Parallel()
	onEachBackendWithBot(t, func(t *testing.T, d *deployment, b *echoBot) {
		b.recv.Answer(func(platformtest.Webhook) platformtest.WebhookAnswer {
			return platformtest.WebhookAnswer{Body: map[string]any{"replies": []map[string]string{{"text": "Passing you to a colleague."}}, "handoff": true}}
		})
		sid := d.a.startBot("u-handoff", false).SessionId
		d.b.say(sid, "a human, please")
		waitFor(t, "IN_PROGRESS", func() bool { return d.a.state(sid) == pb.SessionState_SESSION_STATE_IN_PROGRESS })
		h := d.a.texts(sid)
		if h[len(h)-1] != "> Passing you to a colleague." {
			t.Fatalf("history %q", h)
		}
	})
}

// Messages ingested at once, on both replicas, reach the bot in the
// session's order, one at a time, each once, and each reply follows its
// message.
func TestChatbotGetsMessagesInOrderOneAtATime(t *testing.T) {
	t.Parallel()
	onEachBackendWithBot(t, func(t *testing.T, d *deployment, b *echoBot) {
		sid := d.a.startBot("u-order", false).SessionId
		var wg sync.WaitGroup
		for i := range 20 {
			ts := d.a
			if i%2 == 1 {
				ts = d.b
			}
			wg.Go(func() { ts.say(sid, fmt.Sprint("m", i)) })
		}
		wg.Wait()
		waitFor(t, "20 webhooks", func() bool { return len(b.recv.Hooks()) == 20 })
		waitFor(t, "20 replies", func() bool { return len(d.a.history(sid)) == 41 })
		var inbound []string
		var replies []string
		for _, m := range d.a.history(sid)[1:] {
			if m.Direction == pb.Direction_DIRECTION_INBOUND {
				inbound = append(inbound, m.MessageId)
				replies = append(replies, "echo: "+m.Text)
			}
		}
		for i, h := range b.recv.Hooks() {
			if h.ID != inbound[i] || h.Refused != "" {
				t.Fatalf("webhook %d is %s (refused %q), want %s: not the session's order", i, h.ID, h.Refused, inbound[i])
			}
		}
		if n := b.recv.MaxInFlight(); n != 1 {
			t.Fatalf("the bot had %d deliveries at once, want 1", n)
		}
		var got []string
		for _, m := range d.a.history(sid)[1:] {
			if m.Direction == pb.Direction_DIRECTION_OUTBOUND {
				got = append(got, m.Text)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(replies) {
			t.Fatalf("replies %q, want %q", got, replies)
		}
	})
}

// An answer that comes twice for one message (the bot's first answer is
// held past the delivery's lease, so the message is claimed and delivered
// again, and both answers are carried out) posts its replies once.
func TestChatbotRepliesOnceWhenAnsweredTwice(t *testing.T) {
	t.Parallel()
	onEachBackendWithBot(t, func(t *testing.T, d *deployment, b *echoBot) {
		held, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		b.recv.Answer(func(h platformtest.Webhook) platformtest.WebhookAnswer {
			first := false
			once.Do(func() { first = true })
			if first {
				close(held)
				<-release
			}
			return platformtest.WebhookAnswer{Body: map[string]any{"replies": []map[string]string{{"text": "one"}, {"text": "two"}}}}
		})
		sid := d.a.startBot("u-twice", false).SessionId
		m := d.b.say(sid, "hi")
		<-held
		poll(t, d.a.clk, d.replicas(), 2*time.Minute+time.Second)
		waitFor(t, "the second delivery's replies", func() bool { return len(d.a.history(sid)) == 4 })
		close(release)
		waitFor(t, "both answers carried out", func() bool { return d.attempts("chatbot", "delivered") >= 2 })
		d.a.say(sid, "next")
		waitFor(t, "the next message's replies", func() bool { return len(d.a.history(sid)) == 7 })
		hooks := b.recv.Hooks()
		if len(hooks) != 3 || hooks[0].ID != m.MessageId || hooks[1].ID != m.MessageId {
			t.Fatalf("%d webhooks; want hi twice (one id), then next", len(hooks))
		}
		want := []string{"> Hi! I repeat what you say.", "< hi", "> one", "> two", "< next", "> one", "> two"}
		if got := d.a.texts(sid); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("history %q, want %q", got, want)
		}
	})
}

// A bot that fails is retried on the webhooks' schedule; one that refuses
// (a 4xx) or answers past the limits is ended: the session is OPEN again,
// says why, and the failure is counted. The session's next messages go to
// nobody's queue.
func TestFailingChatbotDoesNotWedgeTheSession(t *testing.T) {
	t.Parallel()
	onEachBackendWithBot(t, func(t *testing.T, d *deployment, b *echoBot) {
		b.recv.Then(platformtest.WebhookAnswer{Status: 503}, platformtest.WebhookAnswer{Status: 404, Body: map[string]string{"error": "no such bot"}})
		sid := d.a.startBot("u-fail", false).SessionId
		d.b.say(sid, "hello?")
		waitFor(t, "the first attempt's retry", func() bool { return d.attempts("chatbot", "retry") == 1 })
		poll(t, d.a.clk, d.replicas(), 6*time.Second)
		waitFor(t, "the session to be OPEN", func() bool { return d.a.state(sid) == pb.SessionState_SESSION_STATE_OPEN })
		ses, _ := d.a.sessions.GetSession(d.a.ctx(), &pb.GetSessionRequest{SessionId: sid})
		if e := ses.Session.Metadata["chatbot_error"]; e == "" || e[:4] != "404:" {
			t.Fatalf("chatbot_error %q", e)
		}
		d.b.say(sid, "still there?")
		poll(t, d.a.clk, d.replicas(), time.Hour)
		if n := len(b.recv.Hooks()); n != 2 {
			t.Fatalf("%d webhooks, want 2", n)
		}
		if failed, retried := d.attempts("chatbot", "failed"), d.attempts("chatbot", "retry"); failed != 1 || retried != 1 {
			t.Fatalf("metrics: %v failed, %v retried", failed, retried)
		}

		// Past the limit of replies: bad_answer.
		b.recv.Answer(func(platformtest.Webhook) platformtest.WebhookAnswer {
			var rs []map[string]string
			for i := range 11 {
				rs = append(rs, map[string]string{"text": fmt.Sprint("r", i)})
			}
			return platformtest.WebhookAnswer{Body: map[string]any{"replies": rs}}
		})
		sid2 := d.b.startBot("u-fail2", false).SessionId
		d.a.say(sid2, "talk a lot")
		waitFor(t, "the session to be OPEN", func() bool { return d.a.state(sid2) == pb.SessionState_SESSION_STATE_OPEN })
		ses, _ = d.a.sessions.GetSession(d.a.ctx(), &pb.GetSessionRequest{SessionId: sid2})
		if e := ses.Session.Metadata["chatbot_error"]; e != "bad_answer: 11 replies; at most 10" {
			t.Fatalf("chatbot_error %q", e)
		}
		if n := len(d.a.history(sid2)); n != 2 {
			t.Fatalf("%d messages; a refused answer's replies were posted", n)
		}

		// A reply PostMessage would refuse (past limits.message_bytes), and
		// an answer past 1 MiB, are bad answers too.
		for i, body := range []any{
			map[string]any{"replies": []map[string]string{{"text": strings.Repeat("x", 32<<10+1)}}},
			map[string]any{"replies": []map[string]string{{"text": "ok"}}, "pad": strings.Repeat("x", 1<<20)},
		} {
			b.recv.Answer(func(platformtest.Webhook) platformtest.WebhookAnswer { return platformtest.WebhookAnswer{Body: body} })
			sid := d.b.startBot(fmt.Sprint("u-big", i), false).SessionId
			d.a.say(sid, "go on")
			waitFor(t, "the session to be OPEN", func() bool { return d.a.state(sid) == pb.SessionState_SESSION_STATE_OPEN })
			ses, _ := d.a.sessions.GetSession(d.a.ctx(), &pb.GetSessionRequest{SessionId: sid})
			if e := ses.Session.Metadata["chatbot_error"]; !strings.HasPrefix(e, "bad_answer: ") {
				t.Fatalf("answer %d: chatbot_error %q", i, e)
			}
			if n := len(d.a.history(sid)); n != 2 {
				t.Fatalf("answer %d: %d messages; a refused answer's replies were posted", i, n)
			}
		}
	})
}

// A chatbot's replies are keyed apart from every key a client may send: a
// PostMessage that used the key a reply would have had does not stop the
// reply, which is posted once, nor send the bot its message again.
func TestChatbotRepliesAreKeyedApartFromClients(t *testing.T) {
	t.Parallel()
	onEachBackendWithBot(t, func(t *testing.T, d *deployment, b *echoBot) {
		asked, answer := make(chan string, 1), make(chan struct{})
		b.recv.Answer(func(h platformtest.Webhook) platformtest.WebhookAnswer {
			asked <- h.ID
			<-answer
			return echo(h)
		})
		sid := d.a.startBot("u-keys", false).SessionId
		msg := d.b.say(sid, "hi")
		<-asked
		_, err := d.a.chat.PostMessage(d.a.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "a human's note",
			IdempotencyKey: "bot:" + msg.MessageId + ":0"})
		if err != nil {
			t.Fatal(err)
		}
		close(answer)
		waitFor(t, "the bot's reply", func() bool { return slices.Contains(d.b.texts(sid), "> echo: hi") })
		poll(t, d.a.clk, d.replicas(), 3*time.Minute) // past a lease
		if n := len(b.recv.Hooks()); n != 1 {
			t.Fatalf("the bot was sent its message %d times, want once", n)
		}
	})
}

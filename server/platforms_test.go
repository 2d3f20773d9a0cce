package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/adapters/slack"
	"github.com/chatrelay/chatrelay/adapters/whatsapp"
	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/platformtest"
	"github.com/chatrelay/chatrelay/store"
	"github.com/prometheus/client_golang/prometheus"
)

// The platforms' credentials in these tests. The harness's `support`
// channel is the WhatsApp number, and `team` a Slack channel.
const (
	slackToken  = "xoxb-test-0123456789"
	slackSecret = "slack-signing-secret-test"
	waToken     = "EAAGtest0123456789"
	waSecret    = "wa-app-secret-test"
	waVerify    = "wa-verify-token-test"
	waNumber    = "15550001111"
	slackChan   = "C0123"
)

// platforms is a Slack workspace and a WhatsApp number, faked on loopback
// (internal/platformtest), and the tenant "default"'s accounts on them.
type platforms struct {
	slack    *platformtest.Slack
	whatsapp *platformtest.WhatsApp
	accounts []adapters.Adapter
}

func newPlatforms(t *testing.T) *platforms {
	t.Helper()
	p := &platforms{slack: platformtest.NewSlack(slackToken), whatsapp: platformtest.NewWhatsApp(waToken, waNumber)}
	t.Cleanup(p.slack.Close)
	t.Cleanup(p.whatsapp.Close)
	sa, err := slack.New(slack.Config{Name: "acme", BotToken: slackToken, SigningSecret: slackSecret, APIURL: p.slack.URL(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	wa, err := whatsapp.New(whatsapp.Config{Name: "support", PhoneNumberID: waNumber, AccessToken: waToken, AppSecret: waSecret,
		VerifyToken: waVerify, APIURL: p.whatsapp.URL(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	p.accounts = []adapters.Adapter{sa, wa}
	return p
}

func (p *platforms) option() option {
	return func(c *serverConfig) { c.Adapters = p.accounts }
}

// deployment is replicas A and B of one deployment: on memory the same
// server, on Redis two.
type deployment struct {
	a, b  *testServer
	redis bool
}

// onEachBackend runs fn on memory (one server) and on Redis (two replicas),
// with the platforms' accounts configured.
func onEachBackend(t *testing.T, fn func(t *testing.T, d *deployment, p *platforms)) {
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		p := newPlatforms(t)
		ts := start(t, nil, nil, p.option())
		fn(t, &deployment{a: ts, b: ts}, p)
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		p := newPlatforms(t)
		cl := startClusterWith(t, 2, clusterOptions{server: []option{p.option()}})
		fn(t, &deployment{a: cl.replicas[0], b: cl.replicas[1], redis: true}, p)
	})
}

// hook posts a platform's callback to the server, as the platform would.
func (ts *testServer) hook(path string, body []byte, header http.Header) restResp {
	ts.t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.base+path, bytes.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return restResp{code: resp.StatusCode, body: data}
}

// slackEvent delivers a signed Slack event, as Slack sends it now.
func (ts *testServer) slackEvent(body []byte) restResp {
	ts.t.Helper()
	return ts.hook("/hooks/slack/acme", body, platformtest.SignSlack(slackSecret, time.Now(), body))
}

// whatsAppWebhook delivers a signed WhatsApp notification.
func (ts *testServer) whatsAppWebhook(body []byte) restResp {
	ts.t.Helper()
	return ts.hook("/hooks/whatsapp/support", body, http.Header{"X-Hub-Signature-256": {platformtest.SignWhatsApp(waSecret, body)},
		"Content-Type": {"application/json"}})
}

// sessionOf finds the session of a platform's user with ListSessions, as a
// workflow would.
func (ts *testServer) sessionOf(platform, user string) *pb.Session {
	ts.t.Helper()
	r, err := ts.sessions.ListSessions(ts.ctx(), &pb.ListSessionsRequest{Platform: platform, User: user})
	if err != nil {
		ts.t.Fatalf("ListSessions: %v", err)
	}
	if len(r.Sessions) != 1 {
		ts.t.Fatalf("%d sessions of %s user %s, want 1", len(r.Sessions), platform, user)
	}
	return r.Sessions[0]
}

// A signed Slack message event reaches a ChatReceive waiting on the other
// replica, with the Slack event object as its raw_message.
func TestSlackEventResolvesAWait(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		st, w := d.a.receive(d.a.ctx(), &pb.ChatReceiveRequest{FromUser: "U0ADA", KeywordFilter: "approve", Channel: "team"})
		r := d.b.slackEvent(platformtest.SlackEvent("Ev001", slackChan, "U0ADA", "I approve", map[string]any{"thread_ts": "1715000000.000100"}))
		if r.code != 200 {
			t.Fatalf("event: HTTP %d %s", r.code, r.body)
		}
		s := recvOrFail(t, st.Recv).GetSuccess()
		if s.GetConversationId() != w.ConversationId || s.MessageText != "I approve" || s.FromUser != "U0ADA" || s.FromChannel != slackChan {
			t.Fatalf("success %v", s)
		}
		raw := s.RawMessage.AsMap()
		if raw["type"] != "message" || raw["channel"] != slackChan || raw["user"] != "U0ADA" || raw["text"] != "I approve" ||
			raw["thread_ts"] != "1715000000.000100" {
			t.Fatalf("raw_message %v, want the Slack event object", raw)
		}
		if ses := d.a.sessionOf("slack", "U0ADA"); ses.Channel != slackChan || ses.Platform != "slack" {
			t.Fatalf("the session the event opened: %v", ses)
		}
	})
}

// Only Slack's signature, fresh, lets an event in: anything else is 401 and
// ingests nothing. url_verification is answered with its challenge.
func TestSlackEventsAreVerified(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option())
	body := platformtest.SlackEvent("Ev002", slackChan, "U0BAD", "let me in", nil)
	forged := platformtest.SignSlack("not-the-secret", time.Now(), body)
	stale := platformtest.SignSlack(slackSecret, time.Now().Add(-6*time.Minute), body)
	future := platformtest.SignSlack(slackSecret, time.Now().Add(6*time.Minute), body)
	tampered := platformtest.SignSlack(slackSecret, time.Now(), body)
	for name, h := range map[string]http.Header{"unsigned": {}, "forged": forged, "stale": stale, "from the future": future} {
		if r := ts.hook("/hooks/slack/acme", body, h); r.code != 401 {
			t.Errorf("%s: HTTP %d, want 401", name, r.code)
		}
	}
	if r := ts.hook("/hooks/slack/acme", bytes.Replace(body, []byte("let me in"), []byte("let me out"), 1), tampered); r.code != 401 {
		t.Errorf("a changed body: HTTP %d, want 401", r.code)
	}
	list, err := ts.sessions.ListSessions(ts.ctx(), &pb.ListSessionsRequest{Platform: "slack"})
	if err != nil || len(list.Sessions) != 0 {
		t.Fatalf("refused events opened sessions: %v %v", list, err)
	}
	challenge := []byte(`{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}`)
	r := ts.slackEvent(challenge)
	if r.code != 200 || string(r.body) != "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" {
		t.Fatalf("url_verification: HTTP %d %q", r.code, r.body)
	}
	if r := ts.hook("/hooks/slack/acme", challenge, platformtest.SignSlack("wrong", time.Now(), challenge)); r.code != 401 {
		t.Fatalf("an unsigned url_verification: HTTP %d", r.code)
	}
}

// Slack redelivers an event it thinks was lost; bots, ours included, and
// edits are not the user speaking. Only the first delivery of a user's
// message is ingested, once, across replicas. A file shared with a
// message, and a thread reply also sent to the channel, are the user's.
func TestSlackRedeliveriesAndBotsAreNotIngestedTwice(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		body := platformtest.SlackEvent("Ev003", slackChan, "U0REP", "hello once", nil)
		if r := d.a.slackEvent(body); r.code != 200 {
			t.Fatalf("first delivery: %d", r.code)
		}
		h := platformtest.SignSlack(slackSecret, time.Now(), body)
		h.Set("X-Slack-Retry-Num", "1")
		h.Set("X-Slack-Retry-Reason", "http_timeout")
		if r := d.b.hook("/hooks/slack/acme", body, h); r.code != 200 {
			t.Fatalf("redelivery: %d", r.code)
		}
		for _, ev := range [][]byte{
			platformtest.SlackEvent("Ev004", slackChan, "U0REP", "our own post", map[string]any{"bot_id": "B0FAKEBOT", "app_id": "A0FAKEAPP"}),
			platformtest.SlackEvent("Ev005", slackChan, "U0REP", "", map[string]any{"subtype": "message_changed"}),
			platformtest.SlackEvent("Ev006", slackChan, "", "a legacy bot", map[string]any{"subtype": "bot_message", "bot_id": "B9"}),
		} {
			if r := d.b.slackEvent(ev); r.code != 200 {
				t.Fatalf("a bot's event: HTTP %d", r.code)
			}
		}
		for _, ev := range [][]byte{
			platformtest.SlackEvent("Ev007", slackChan, "U0REP", "the invoice", map[string]any{"subtype": "file_share",
				"files": []any{map[string]any{"id": "F0INV", "name": "invoice.pdf"}}}),
			platformtest.SlackEvent("Ev008", slackChan, "U0REP", "also here", map[string]any{"subtype": "thread_broadcast", "thread_ts": "1715000000.000100"}),
		} {
			if r := d.b.slackEvent(ev); r.code != 200 {
				t.Fatalf("a user's event: HTTP %d", r.code)
			}
		}
		ses := d.a.sessionOf("slack", "U0REP")
		if h := d.a.history(ses.SessionId); len(h) != 3 || h[0].Text != "hello once" || h[1].Text != "the invoice" || h[2].Text != "also here" {
			t.Fatalf("history %v, want the three user messages", h)
		}
	})
}

// A post into a Slack session goes to chat.postMessage with the bot token,
// the channel and the text, and answers DELIVERED with Slack's ts.
func TestPostIntoSlackReachesSlack(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		d.a.slackEvent(platformtest.SlackEvent("Ev010", slackChan, "U0POST", "hi", nil))
		ses := d.b.sessionOf("slack", "U0POST")
		r, err := d.b.chat.PostMessage(d.b.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "How can we help? <b>&</b>"})
		if err != nil {
			t.Fatal(err)
		}
		posts := p.slack.Posts()
		if len(posts) != 1 || posts[0] != (platformtest.SlackPost{Token: slackToken, Channel: slackChan, Text: "How can we help? <b>&</b>"}) {
			t.Fatalf("Slack got %+v", posts)
		}
		if r.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED || r.PlatformMessageId == "" || r.DeliveredAt == nil {
			t.Fatalf("answer %v, want DELIVERED with Slack's ts", r)
		}
		h := d.a.history(ses.SessionId)
		if last := h[len(h)-1]; last.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED || last.PlatformMessageId != r.PlatformMessageId {
			t.Fatalf("history's last message %v", last)
		}
		// Over REST the same, on the other replica.
		rr := d.a.rest("POST", "/v1/sessions/"+ses.SessionId+"/messages", map[string]string{"message": "again"})
		if rr.code != 200 || str(rr.json(t), "status") != "MESSAGE_STATUS_DELIVERED" || str(rr.json(t), "platform_message_id") == "" {
			t.Fatalf("REST post: %d %s", rr.code, rr.body)
		}
	})
}

// Slack's refusals are answers: FAILED with Slack's error string, and the
// message kept.
func TestSlackRefusalsAreFailedAndKept(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option())
	ses, err := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{Platform: "slack", Channel: slackChan, User: "U0REF"})
	if err != nil {
		t.Fatal(err)
	}
	sid := ses.Session.SessionId
	for _, c := range []struct {
		answer platformtest.SlackAnswer
		code   string
	}{
		{platformtest.SlackAnswer{Error: "channel_not_found"}, "channel_not_found"},
		{platformtest.SlackAnswer{Error: "not_in_channel"}, "not_in_channel"},
		{platformtest.SlackAnswer{Error: "invalid_auth"}, "invalid_auth"},
		{platformtest.SlackAnswer{Error: "fatal_error"}, "fatal_error"},       // Slack may have posted it
		{platformtest.SlackAnswer{Error: "internal_error"}, "internal_error"}, // and here too
	} {
		p.slack.Then(platformtest.Answering(c.answer))
		r, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "refused: " + c.code})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || r.Error.GetCode() != c.code || r.DeliveredAt != nil {
			t.Errorf("%s: answer %v", c.code, r)
		}
	}
	h := ts.history(sid)
	if len(h) != 5 {
		t.Fatalf("history holds %d messages, want the 5 refused, kept", len(h))
	}
	for _, m := range h {
		if m.Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || m.Error == nil {
			t.Fatalf("kept message %v, want FAILED with its error", m)
		}
	}
}

// A rate limit is "not now", never a refusal: the message is PENDING and
// retried, not before the platform asked. Slack's 429 asking for an hour,
// past the delivery's deadline, is retried after it (after 10 hours at
// most, whatever it asked); Meta's pair rate limit
// (131056) after 6 s, though the schedule's first step is 5 s; Meta's
// throughput limit (130429), Slack's ok:false service_unavailable and a
// Graph error answered with an HTTP 5xx on the schedule.
func TestPlatformRateLimitsAreRetried(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option())
	slackSes, _ := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{Platform: "slack", Channel: slackChan, User: "U0LIM"})
	ts.whatsAppWebhook(p.whatsapp.Message("wamid.RL0", "15551239999", "hi"))
	waSes := ts.sessionOf("whatsapp", "+15551239999")
	slackSends := func() int { return len(p.slack.Posts()) }
	waSends := func() int { return len(p.whatsapp.Sends()) }
	slackSays := func(a platformtest.SlackAnswer) func() { return func() { p.slack.Then(platformtest.Answering(a)) } }
	metaSays := func(a platformtest.WhatsAppAnswer) func() { return func() { p.whatsapp.Then(a) } }
	for _, c := range []struct {
		name     string
		then     func()
		sid      string
		sends    func() int
		notUntil time.Duration // the retry comes after this, not before
	}{
		{"slack 429, an hour", slackSays(platformtest.SlackAnswer{Status: 429, RetryAfter: 3600}), slackSes.Session.SessionId, slackSends, time.Hour},
		{"slack 429, 100 hours: 10 at most", slackSays(platformtest.SlackAnswer{Status: 429, RetryAfter: 360_000}), slackSes.Session.SessionId, slackSends, 10 * time.Hour},
		{"slack service_unavailable", slackSays(platformtest.SlackAnswer{Error: "service_unavailable"}), slackSes.Session.SessionId, slackSends, 5 * time.Second},
		{"whatsapp 131056", metaSays(platformtest.WhatsAppAnswer{Code: 131056, Title: "(Business Account, Consumer Account) pair rate limit hit"}),
			waSes.SessionId, waSends, 6 * time.Second},
		{"whatsapp 130429", metaSays(platformtest.WhatsAppAnswer{Code: 130429, Title: "Rate limit hit"}), waSes.SessionId, waSends, 5 * time.Second},
		{"whatsapp 5xx", metaSays(platformtest.WhatsAppAnswer{Status: 503, Code: 100, Title: "Invalid parameter"}), waSes.SessionId, waSends, 5 * time.Second},
	} {
		c.then()
		before := c.sends()
		r := ts.postFull(&pb.PostMessageRequest{SessionId: c.sid, Message: c.name})
		if r.Status != pb.MessageStatus_MESSAGE_STATUS_PENDING || r.Error != nil {
			t.Fatalf("%s: answer %v, want PENDING", c.name, r)
		}
		poll(t, ts.clk, 1, c.notUntil-time.Millisecond)
		if n := c.sends() - before; n != 1 {
			t.Fatalf("%s: %d calls before the wait asked for passed, want 1", c.name, n)
		}
		poll(t, ts.clk, 1, c.notUntil/10+time.Second) // past the jitter
		waitFor(t, c.name+": the retry", func() bool { return c.sends()-before == 2 })
		waitFor(t, c.name+": the message sent", func() bool {
			h := ts.history(c.sid)
			st := h[len(h)-1].Status
			return st == pb.MessageStatus_MESSAGE_STATUS_DELIVERED || st == pb.MessageStatus_MESSAGE_STATUS_SENT
		})
	}
}

// A platform that fails for a while is tried again on the adapter's
// schedule, on the injected clock: the post answers PENDING, and the status
// comes to the watcher when a retry gets through.
func TestTransientPlatformFailureIsRetried(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option(), func(c *serverConfig) { c.Metrics = prometheus.NewRegistry() })
	d := &deployment{a: ts, b: ts}
	ses, _ := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{Platform: "slack", Channel: slackChan, User: "U0RET"})
	sid := ses.Session.SessionId
	watch := ts.liveWatch(sid)
	p.slack.Then(platformtest.Answering(platformtest.SlackDown), platformtest.Answering(platformtest.SlackDown))
	r, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "eventually"})
	if err != nil || r.Status != pb.MessageStatus_MESSAGE_STATUS_PENDING {
		t.Fatalf("answer %v, %v; want PENDING", r, err)
	}
	if m := recvOrFail(t, watch.Recv).GetMessage(); m.GetStatus() != pb.MessageStatus_MESSAGE_STATUS_PENDING {
		t.Fatalf("the watcher got %v", m)
	}
	// The first retry is due 5 s (and up to a tenth more) after the
	// first attempt, the second 30 s after the first retry.
	for i, wait := range []time.Duration{6 * time.Second, 34 * time.Second} {
		// The clock moves on only once the last attempt's retry is
		// scheduled (its count follows).
		waitFor(t, "the retry to be scheduled", func() bool { return d.attempts("slack", "retry") == float64(i+1) })
		before := len(p.slack.Posts())
		waitFor(t, "the delivery poll to be armed", func() bool { return ts.clk.Timers() > 0 })
		ts.clk.Advance(wait)
		waitFor(t, "a retry", func() bool { return len(p.slack.Posts()) > before })
	}
	ch := recvOrFail(t, watch.Recv).GetMessageStatus()
	if ch.GetMessageId() != r.MessageId || ch.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED || ch.PlatformMessageId == "" {
		t.Fatalf("status event %v, want DELIVERED", ch)
	}
	if n := len(p.slack.Posts()); n != 3 {
		t.Fatalf("Slack was called %d times, want 3 (two failures, then the post)", n)
	}
}

// PostMessage waits for the platform up to the delivery deadline, then
// answers PENDING; the delivery goes on, and its outcome reaches watchers.
func TestPostAnswersPendingPastTheDeliveryDeadline(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option())
	ses, _ := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{Platform: "slack", Channel: slackChan, User: "U0SLOW"})
	sid := ses.Session.SessionId
	watch := ts.liveWatch(sid)
	release := p.slack.Hold()
	defer release()
	answer := make(chan *pb.PostMessageResponse, 1)
	go func() {
		r, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "slow"})
		if err != nil {
			t.Error(err)
		}
		answer <- r
	}()
	waitFor(t, "Slack to hold the post", func() bool { return p.slack.Held() == 1 })
	ts.clk.Advance(10 * time.Second)
	r := <-answer
	if r.Status != pb.MessageStatus_MESSAGE_STATUS_PENDING {
		t.Fatalf("past the deadline: %v, want PENDING", r)
	}
	recvOrFail(t, watch.Recv) // the message, PENDING
	release()
	if ch := recvOrFail(t, watch.Recv).GetMessageStatus(); ch.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED || ch.MessageId != r.MessageId {
		t.Fatalf("status event %v", ch)
	}
	if got, _ := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "x"}); got.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED {
		t.Fatalf("the next post: %v", got)
	}
}

// 500 posts at once into Slack sessions against a platform that answers
// in 100 ms finish together, not one after another.
func TestConcurrentPostsAreNotSerialised(t *testing.T) {
	p := newPlatforms(t)
	p.slack.Latency = 100 * time.Millisecond
	ts := start(t, nil, nil, p.option())
	var sids []string
	for i := range 50 {
		ses, err := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{Platform: "slack", Channel: slackChan, User: fmt.Sprint("U0C", i)})
		if err != nil {
			t.Fatal(err)
		}
		sids = append(sids, ses.Session.SessionId)
	}
	var wg sync.WaitGroup
	for i := range 500 {
		wg.Go(func() {
			r, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: sids[i%len(sids)], Message: fmt.Sprint("m", i)})
			if err != nil || r.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED {
				t.Errorf("post %d: %v %v", i, r, err)
			}
		})
	}
	wg.Wait()
	// Serialised, Slack would answer one call at a time (and 500 posts
	// take 50 s). How fast they go is chatbench's slack-slow scenario.
	n := p.slack.MostAtOnce()
	t.Logf("Slack answered up to %d calls at once", n)
	if n < 50 {
		t.Fatalf("Slack answered at most %d calls at once; want the 50 sessions' posts together", n)
	}
}

// A retried post with the same idempotency key never calls the platform
// again: it answers the first post's message, as it stands now.
func TestRetriedPostCallsThePlatformOnce(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		ses, _ := d.a.sessions.CreateSession(d.a.ctx(), &pb.CreateSessionRequest{Platform: "slack", Channel: slackChan, User: "U0IDEM"})
		req := &pb.PostMessageRequest{SessionId: ses.Session.SessionId, Message: "once", IdempotencyKey: "run-1"}
		first, err := d.a.chat.PostMessage(d.a.ctx(), req)
		if err != nil {
			t.Fatal(err)
		}
		again, err := d.b.chat.PostMessage(d.b.ctx(), req)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(p.slack.Posts()); n != 1 {
			t.Fatalf("Slack was called %d times, want once", n)
		}
		if again.MessageId != first.MessageId || again.Status != first.Status || again.PlatformMessageId != first.PlatformMessageId {
			t.Fatalf("the retry answered %v; the first %v", again, first)
		}
	})
}

// A replica that recorded a message and died before sending it leaves it
// PENDING only for the delivery's lease: then another replica claims it,
// sends it, and the status reaches the session's watchers.
func TestDeliveryLeftByADeadReplicaIsFinished(t *testing.T) {
	t.Parallel()
	p := newPlatforms(t)
	cl := startClusterWith(t, 2, clusterOptions{server: []option{p.option()}})
	a, b := cl.replicas[0], cl.replicas[1]
	ses, _ := a.sessions.CreateSession(a.ctx(), &pb.CreateSessionRequest{Platform: "slack", Channel: slackChan, User: "U0DEAD"})
	sid := ses.Session.SessionId
	watch := b.liveWatch(sid)
	// What replica A did before it died: the message is recorded, with
	// its delivery leased to A, and never sent.
	m, _, err := a.store.AppendOutbound(a.ctx(), store.OutboundMessage{Tenant: "default", SessionID: sid, Text: "left behind",
		Status: store.StatusPending, Delivery: &store.Delivery{ID: "dl_dead", Lease: 2 * time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	a.stop()
	recvOrFail(t, watch.Recv) // the message, PENDING
	if n := len(p.slack.Posts()); n != 0 {
		t.Fatalf("sent under the dead replica's lease")
	}
	waitFor(t, "B's delivery poll", func() bool { return b.clk.Timers() > 0 })
	b.clk.Advance(2*time.Minute + time.Second)
	ch := recvOrFail(t, watch.Recv).GetMessageStatus()
	if ch.MessageId != m.ID || ch.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED {
		t.Fatalf("status event %v", ch)
	}
	if posts := p.slack.Posts(); len(posts) != 1 || posts[0].Text != "left behind" || posts[0].Channel != slackChan {
		t.Fatalf("Slack got %+v", posts)
	}
}

// Meta's webhook check: the verify token answers the challenge; anything
// else is 403.
func TestWhatsAppWebhookVerification(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option())
	get := func(q string) restResp {
		resp, err := http.Get(ts.base + "/hooks/whatsapp/support?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return restResp{code: resp.StatusCode, body: b}
	}
	if r := get("hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=" + waVerify); r.code != 200 || string(r.body) != "1158201444" {
		t.Fatalf("verification: %d %q", r.code, r.body)
	}
	for _, q := range []string{"hub.mode=subscribe&hub.challenge=1&hub.verify_token=wrong", "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=" + waVerify, ""} {
		if r := get(q); r.code != 403 {
			t.Errorf("%q: HTTP %d, want 403", q, r.code)
		}
	}
}

// A WhatsApp conversation both ways: the customer's text reaches a wait on
// the other replica; the reply goes to the Graph API as Meta expects it and
// is SENT with its wamid; Meta's receipts move it to DELIVERED and READ, and
// the watcher sees each change.
func TestWhatsAppConversation(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		st, _ := d.a.receive(d.a.ctx(), &pb.ChatReceiveRequest{Channel: "support", FromUser: "+15551234567"})
		r := d.b.whatsAppWebhook(platformtest.WhatsAppMessage(waNumber, "wamid.IN1", "15551234567", "Does it come in blue?", d.a.clk.Now()))
		if r.code != 200 {
			t.Fatalf("webhook: %d %s", r.code, r.body)
		}
		s := recvOrFail(t, st.Recv).GetSuccess()
		if s.MessageText != "Does it come in blue?" || s.FromUser != "+15551234567" || s.FromChannel != waNumber ||
			s.RawMessage.AsMap()["id"] != "wamid.IN1" || s.RawMessage.AsMap()["type"] != "text" {
			t.Fatalf("success %v", s)
		}
		ses := d.a.sessionOf("whatsapp", "+15551234567")
		watch := d.a.liveWatch(ses.SessionId)
		post, err := d.b.chat.PostMessage(d.b.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "Yes, in navy."})
		if err != nil {
			t.Fatal(err)
		}
		sends := p.whatsapp.Sends()
		if len(sends) != 1 {
			t.Fatalf("%d sends", len(sends))
		}
		got, _ := json.Marshal(sends[0].Body)
		if want := `{"messaging_product":"whatsapp","recipient_type":"individual","text":{"body":"Yes, in navy."},"to":"15551234567","type":"text"}`; string(got) != want {
			t.Fatalf("the Graph API got %s\nwant %s", got, want)
		}
		if post.Status != pb.MessageStatus_MESSAGE_STATUS_SENT || post.PlatformMessageId != sends[0].ID {
			t.Fatalf("answer %v, want SENT with %s", post, sends[0].ID)
		}
		recvOrFail(t, watch.Recv) // the message
		if ch := recvOrFail(t, watch.Recv).GetMessageStatus(); ch.Status != pb.MessageStatus_MESSAGE_STATUS_SENT {
			t.Fatalf("first status event %v", ch)
		}
		for _, status := range []string{"delivered", "read", "delivered"} { // the last one stale
			if r := d.a.whatsAppWebhook(platformtest.WhatsAppStatus(waNumber, post.PlatformMessageId, status, "15551234567", time.Now(), 0)); r.code != 200 {
				t.Fatalf("%s receipt: %d", status, r.code)
			}
		}
		for _, want := range []pb.MessageStatus{pb.MessageStatus_MESSAGE_STATUS_DELIVERED, pb.MessageStatus_MESSAGE_STATUS_READ} {
			if ch := recvOrFail(t, watch.Recv).GetMessageStatus(); ch.Status != want || ch.MessageId != post.MessageId {
				t.Fatalf("status event %v, want %v", ch, want)
			}
		}
		h := d.b.history(ses.SessionId)
		if last := h[len(h)-1]; last.Status != pb.MessageStatus_MESSAGE_STATUS_READ || last.PlatformMessageId != post.PlatformMessageId {
			t.Fatalf("history's last message %v, want READ", last)
		}
	})
}

// The Graph API's refusals are FAILED with Meta's code, the message kept;
// a failed receipt after SENT is FAILED too. A bad signature is 401 and
// ingests nothing.
func TestWhatsAppRefusalsAndForgeries(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option())
	// The customer writes first: the reply window is open.
	ts.whatsAppWebhook(platformtest.WhatsAppMessage(waNumber, "wamid.R0", "15557654321", "hi", ts.clk.Now()))
	sid := ts.sessionOf("whatsapp", "+15557654321").SessionId
	p.whatsapp.Then(platformtest.WhatsAppWindowClosed, platformtest.WhatsAppUndeliverable)
	for _, c := range []struct{ code, reason string }{{"131047", "reply_window_closed"}, {"131026", "undeliverable"}} {
		r, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "hello?"})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || r.Error.GetCode() != c.code || r.Error.GetMessage() == "" ||
			r.Error.GetReason() != c.reason {
			t.Fatalf("answer %v, want FAILED %s (%s)", r, c.code, c.reason)
		}
	}
	sent, _ := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "third time"})
	if sent.Status != pb.MessageStatus_MESSAGE_STATUS_SENT {
		t.Fatalf("the third: %v", sent)
	}
	ts.whatsAppWebhook(platformtest.WhatsAppStatus(waNumber, sent.PlatformMessageId, "failed", "15557654321", time.Now(), 131047))
	h := ts.history(sid)
	if len(h) != 4 || h[3].Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || h[3].Error.GetCode() != "131047" {
		t.Fatalf("history %v", h)
	}
	body := platformtest.WhatsAppMessage(waNumber, "wamid.FORGED", "15550009999", "let me in", ts.clk.Now())
	for name, sig := range map[string]string{"none": "", "forged": platformtest.SignWhatsApp("not-the-secret", body), "not hex": "sha256=zz"} {
		if r := ts.hook("/hooks/whatsapp/support", body, http.Header{"X-Hub-Signature-256": {sig}}); r.code != 401 {
			t.Errorf("%s signature: HTTP %d, want 401", name, r.code)
		}
	}
	list, _ := ts.sessions.ListSessions(ts.ctx(), &pb.ListSessionsRequest{User: "+15550009999"})
	if len(list.GetSessions()) != 0 {
		t.Fatal("a forged webhook opened a session")
	}
	// Meta redelivers: the message is taken once. Meta's ids are base64,
	// with characters no id here may hold: two that differ only there are
	// two messages.
	for _, id := range []string{"wamid.HBgLMTU1NTAwMDg4ODgVAgASGBQzQUQ0QzE4RjVCMjA5RjU0QjYyMwA=",
		"wamid.HBgLMTU1NTAwMDg4ODgVAgASGBQzQUQ0QzE4RjVCMjA5RjU0QjYyMwA/"} {
		real := platformtest.WhatsAppMessage(waNumber, id, "15550008888", "once", ts.clk.Now())
		ts.whatsAppWebhook(real)
		ts.whatsAppWebhook(real)
	}
	h = ts.history(ts.sessionOf("whatsapp", "+15550008888").SessionId)
	if len(h) != 2 || !strings.Contains(string(h[0].Raw.GetFields()["id"].GetStringValue()), "=") {
		t.Fatalf("two messages, each delivered twice, were ingested %d times: %v", len(h), h)
	}
}

// A customer answers in more ways than text: a tap on a template's
// quick-reply button or an interactive reply resolves a ChatReceive with
// its title; a photo is taken with its caption, or none, its media id in
// the raw message; each opens the reply window. A system notice, or a
// reaction taken back, is not the customer's message.
func TestWhatsAppMessagesBeyondText(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option())
	const customer = "15551230077"
	send := func(id, kind string, body map[string]any) {
		t.Helper()
		if r := ts.whatsAppWebhook(platformtest.WhatsAppInbound(waNumber, id, customer, ts.clk.Now(), kind, body)); r.code != 200 {
			t.Fatalf("%s: HTTP %d %s", kind, r.code, r.body)
		}
	}
	cases := []struct {
		kind string
		body map[string]any
		said string
	}{
		{"button", map[string]any{"text": "Yes, call me", "payload": "CALL_ME"}, "Yes, call me"},
		{"interactive", map[string]any{"type": "button_reply", "button_reply": map[string]any{"id": "b1", "title": "Track order"}}, "Track order"},
		{"interactive", map[string]any{"type": "list_reply", "list_reply": map[string]any{"id": "r2", "title": "Returns", "description": "30 days"}}, "Returns"},
		{"image", map[string]any{"id": "1479537139650973", "mime_type": "image/jpeg", "sha256": "HgR…", "caption": "the damage"}, "the damage"},
	}
	for i, c := range cases {
		st, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{Channel: "support", FromUser: "+" + customer})
		ts.clk.Advance(time.Minute)
		send(fmt.Sprintf("wamid.K%d", i), c.kind, c.body)
		got := recvOrFail(t, st.Recv).GetSuccess()
		if got.GetMessageText() != c.said || got.GetRawMessage().GetFields()["type"].GetStringValue() != c.kind {
			t.Fatalf("%s: ChatReceive got %v, want %q", c.kind, got, c.said)
		}
	}
	ses := ts.sessionOf("whatsapp", "+"+customer)
	ts.clk.Advance(time.Hour)
	send("wamid.KAUDIO", "audio", map[string]any{"id": "2011113279346000", "mime_type": "audio/ogg; codecs=opus", "voice": true})
	h := ts.history(ses.SessionId)
	last := h[len(h)-1]
	if last.Text != "" || last.Raw.GetFields()["audio"].GetStructValue().GetFields()["id"].GetStringValue() != "2011113279346000" {
		t.Fatalf("a voice note: %v", last)
	}
	if got := ts.getSession(ses.SessionId).ReplyWindowClosesAt.AsTime(); !got.Equal(ts.clk.Now().Truncate(time.Second).Add(24 * time.Hour)) {
		t.Fatalf("a voice note left the window closing at %v", got)
	}
	send("wamid.KSYS", "system", map[string]any{"body": "the customer changed their number", "type": "user_changed_number"})
	send("wamid.KUNREACT", "reaction", map[string]any{"message_id": "wamid.X", "emoji": ""})
	if n := len(ts.history(ses.SessionId)); n != len(h) {
		t.Fatalf("a system notice or a reaction taken back was ingested: %d messages, want %d", n, len(h))
	}
}

// Meta sends every number's webhooks to its app's one callback URL: a
// number of the same app (the same app secret) takes a notification for
// it wherever it came, as its own channel and tenant, and its receipts
// too; a number of another app, whose secret did not sign it, does not.
func TestWhatsAppNumbersOfOneAppShareACallbackURL(t *testing.T) {
	p := newPlatforms(t)
	const second, foreign = "15550002222", "15550003333"
	salesMeta := platformtest.NewWhatsApp(waToken, second)
	t.Cleanup(salesMeta.Close)
	sales, err := whatsapp.New(whatsapp.Config{Name: "sales", Tenant: "acme", PhoneNumberID: second, AccessToken: waToken, AppSecret: waSecret,
		VerifyToken: waVerify, APIURL: salesMeta.URL(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	other, err := whatsapp.New(whatsapp.Config{Name: "other", PhoneNumberID: foreign, AccessToken: waToken, AppSecret: "another-apps-secret",
		VerifyToken: waVerify, APIURL: p.whatsapp.URL(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	support := p.accounts[1].(*whatsapp.Adapter)
	whatsapp.Link(support, sales, other)
	ts := start(t, nil, nil, withKeys(testKey{"key-default-0123456789", "default"}, testKey{"key-acme-0123456789", "acme"}),
		func(c *serverConfig) { c.Adapters = append(p.accounts, sales, other) })
	ts.key = "key-default-0123456789"

	// To support's URL (the app's), for the sales number and the foreign one.
	ts.whatsAppWebhook(platformtest.WhatsAppMessage(second, "wamid.S1", "15557770001", "for sales", ts.clk.Now()))
	ts.whatsAppWebhook(platformtest.WhatsAppMessage(foreign, "wamid.F1", "15557770002", "for another app", ts.clk.Now()))
	if r, _ := ts.sessions.ListSessions(ts.ctx(), &pb.ListSessionsRequest{Platform: "whatsapp"}); len(r.GetSessions()) != 0 {
		t.Fatalf("the default tenant got %v", r.GetSessions())
	}
	ts.key = "key-acme-0123456789"
	ses := ts.sessionOf("whatsapp", "+15557770001")
	if ses.Channel != second {
		t.Fatalf("sales's message landed on channel %s, want %s", ses.Channel, second)
	}
	if r, _ := ts.sessions.ListSessions(ts.ctx(), &pb.ListSessionsRequest{User: "+15557770002"}); len(r.GetSessions()) != 0 {
		t.Fatalf("another app's number took a notification its secret did not sign: %v", r.GetSessions())
	}
	// Its receipts come the same way.
	sent := ts.postFull(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: "hello from sales"})
	ts.whatsAppWebhook(platformtest.WhatsAppStatus(second, sent.PlatformMessageId, "read", "15557770001", ts.clk.Now(), 0))
	if h := ts.history(ses.SessionId); h[len(h)-1].Status != pb.MessageStatus_MESSAGE_STATUS_READ {
		t.Fatalf("the receipt through the app's URL: %v", h[len(h)-1])
	}
}

// ListSessions finds sessions by platform, channel, user and state, newest
// activity first, a page at a time, over gRPC and REST.
func TestListSessions(t *testing.T) {
	ts := start(t, nil, nil)
	var ids []string
	for i, req := range []*pb.CreateSessionRequest{
		{User: "u1"}, {Platform: "slack", Channel: "team", User: "U1"}, {Channel: "support", User: "+15550000001"}, {User: "u2"},
	} {
		ts.clk.Advance(time.Second)
		r, err := ts.sessions.CreateSession(ts.ctx(), req)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		ids = append(ids, r.Session.SessionId)
	}
	ts.clk.Advance(time.Second)
	ts.post(ids[0], "u1's session is the newest now")
	r, err := ts.sessions.ListSessions(ts.ctx(), &pb.ListSessionsRequest{PageSize: 2})
	if err != nil || len(r.Sessions) != 2 || r.Sessions[0].SessionId != ids[0] || r.Sessions[1].SessionId != ids[3] || r.NextPageToken == "" {
		t.Fatalf("first page %v, %v", r, err)
	}
	r2, err := ts.sessions.ListSessions(ts.ctx(), &pb.ListSessionsRequest{PageSize: 2, PageToken: r.NextPageToken})
	if err != nil || len(r2.Sessions) != 2 || r2.Sessions[0].SessionId != ids[2] || r2.Sessions[1].SessionId != ids[1] || r2.NextPageToken != "" {
		t.Fatalf("second page %v, %v", r2, err)
	}
	rr := ts.rest("GET", "/v1/sessions?channel=support", nil)
	if rr.code != 200 || !strings.Contains(string(rr.body), ids[2]) || strings.Contains(string(rr.body), ids[0]) {
		t.Fatalf("REST by channel: %d %s", rr.code, rr.body)
	}
	rr = ts.rest("GET", "/v1/sessions?platform=slack&user=U1&state=SESSION_STATE_OPEN", nil)
	if rr.code != 200 || !strings.Contains(string(rr.body), ids[1]) {
		t.Fatalf("REST by platform, user and state: %d %s", rr.code, rr.body)
	}
	wantREST(t, ts.rest("GET", "/v1/sessions?page_token=garbage", nil), 400, "INVALID_ARGUMENT")
	wantREST(t, ts.rest("GET", "/v1/sessions?platform=icq", nil), 400, "INVALID_ARGUMENT")
	_, err = ts.sessions.ListSessions(ts.ctx(), &pb.ListSessionsRequest{User: "a user"})
	wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", "user")
}

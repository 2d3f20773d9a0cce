package server_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/adapters/webhook"
	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/internal/platformtest"
	"github.com/prometheus/client_golang/prometheus"
)

// crmSecret signs the `crm` integration's webhooks both ways.
const crmSecret = "whsec_Y3JtLXdlYmhvb2stc2VjcmV0LWZvci10ZXN0cw=="

// crm is a generic integration (docs/design.md §9): its receiver on
// loopback, and the tenant "default"'s account for it, channel `crm`.
type crm struct {
	recv    *platformtest.WebhookReceiver
	account adapters.Adapter
}

func newCRM(t *testing.T) *crm {
	t.Helper()
	c := &crm{recv: platformtest.NewWebhookReceiver(crmSecret)}
	t.Cleanup(c.recv.Close)
	a, err := webhook.New(webhook.Config{Name: "crm", URL: c.recv.URL(), Secret: crmSecret, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	c.account = a
	return c
}

func (c *crm) option() option {
	return func(cfg *serverConfig) {
		cfg.Adapters = append(cfg.Adapters, c.account)
		cfg.Metrics = prometheus.NewRegistry()
	}
}

// onEachBackendWithCRM runs fn on memory (one server) and on Redis (two
// replicas sharing a clock), with the crm integration configured.
func onEachBackendWithCRM(t *testing.T, fn func(t *testing.T, d *deployment, c *crm)) {
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		c := newCRM(t)
		ts := start(t, nil, nil, c.option())
		fn(t, &deployment{a: ts, b: ts}, c)
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		c := newCRM(t)
		cl := startClusterWith(t, 2, clusterOptions{server: []option{c.option()}})
		fn(t, &deployment{a: cl.replicas[0], b: cl.replicas[1], redis: true}, c)
	})
}

func (d *deployment) replicas() int {
	if d.redis {
		return 2
	}
	return 1
}

// poll advances the shared clock by by once every replica's delivery poll
// is armed, and waits until they are armed again: each has claimed what
// was due (its attempts may still be on their way).
func poll(t *testing.T, clk *clock.Fake, replicas int, by time.Duration) {
	t.Helper()
	waitFor(t, "the delivery polls to be armed", func() bool { return clk.Timers() >= replicas })
	clk.Advance(by)
	waitFor(t, "the delivery polls to be armed again", func() bool { return clk.Timers() >= replicas })
}

// crmHook delivers a message from the integration, signed as it signs.
func (ts *testServer) crmHook(id string, at time.Time, body string) restResp {
	ts.t.Helper()
	return ts.hook("/hooks/webhook/crm", []byte(body), platformtest.SignWebhook(crmSecret, id, at, []byte(body)))
}

// crmSession opens the crm session of user by a message from the
// integration.
func (ts *testServer) crmSession(user string) string {
	ts.t.Helper()
	r := ts.crmHook("msg_open_"+user, time.Now(), fmt.Sprintf(`{"from_user":%q,"text":"hello"}`, user))
	if r.code != 200 {
		ts.t.Fatalf("opening message: HTTP %d %s", r.code, r.body)
	}
	return str(r.json(ts.t), "session", "session_id")
}

// Only the integration's signature, fresh, lets a message in: anything
// else is 401 and ingests nothing. A good one is answered as IngestMessage
// answers, and a redelivery (the same webhook-id) on another replica is
// ingested once.
func TestWebhookInboundIsVerifiedAndTakenOnce(t *testing.T) {
	t.Parallel()
	onEachBackendWithCRM(t, func(t *testing.T, d *deployment, c *crm) {
		body := []byte(`{"from_user":"cust-7","text":"Where is my order?","metadata":{"ticket":"T-1"},"raw":{"crm_id":42}}`)
		now := time.Now()
		for name, h := range map[string]http.Header{
			"unsigned":        {},
			"forged":          platformtest.SignWebhook("whsec_bm90LXRoZS1jcm0tc2VjcmV0LWF0LWFsbA==", "msg_in1", now, body),
			"stale":           platformtest.SignWebhook(crmSecret, "msg_in1", now.Add(-6*time.Minute), body),
			"from the future": platformtest.SignWebhook(crmSecret, "msg_in1", now.Add(6*time.Minute), body),
		} {
			if r := d.a.hook("/hooks/webhook/crm", body, h); r.code != 401 {
				t.Errorf("%s: HTTP %d, want 401", name, r.code)
			}
		}
		signed := platformtest.SignWebhook(crmSecret, "msg_in1", now, body)
		if r := d.a.hook("/hooks/webhook/crm", []byte(`{"from_user":"cust-7","text":"Where is my order?!"}`), signed); r.code != 401 {
			t.Errorf("a changed body: HTTP %d, want 401", r.code)
		}
		if list, err := d.a.sessions.ListSessions(d.a.ctx(), &pb.ListSessionsRequest{Platform: "webhook"}); err != nil || len(list.Sessions) != 0 {
			t.Fatalf("refused webhooks opened sessions: %v %v", list, err)
		}
		r := d.a.hook("/hooks/webhook/crm", body, signed)
		if r.code != 200 {
			t.Fatalf("signed: HTTP %d %s", r.code, r.body)
		}
		first := r.json(t)
		if str(first, "message", "text") != "Where is my order?" || str(first, "message", "channel") != "crm" ||
			str(first, "message", "platform") != "webhook" || str(first, "message", "from_user") != "cust-7" ||
			path(first, "message", "raw", "crm_id") != float64(42) || str(first, "message", "metadata", "ticket") != "T-1" ||
			path(first, "session_started") != true {
			t.Fatalf("answer %s", r.body)
		}
		again := d.b.hook("/hooks/webhook/crm", body, platformtest.SignWebhook(crmSecret, "msg_in1", time.Now(), body))
		if again.code != 200 || str(again.json(t), "message", "message_id") != str(first, "message", "message_id") {
			t.Fatalf("redelivery: HTTP %d %s", again.code, again.body)
		}
		sid := str(first, "session", "session_id")
		if h := d.b.history(sid); len(h) != 1 {
			t.Fatalf("history holds %d messages, want the one", len(h))
		}
		if n := max(0, d.b.scrape().value("chatrelay_inbound_events_total", "platform", "webhook", "result", "duplicate")); n != 1 {
			t.Fatalf("%v redeliveries counted as duplicates on the replica that took it, want 1", n)
		}
		// A body that is not IngestMessage's, or sets what belongs to the
		// integration, is a 400 naming the body; nothing is ingested.
		for _, bad := range []string{`{"from_user":"cust-7","text":"x","channel":"other"}`, `{"from_user":"cust-7","txt":"x"}`, `[]`} {
			wantREST(t, d.a.crmHook("msg_bad", time.Now(), bad), 400, "INVALID_ARGUMENT")
		}
		// A body past 1 MiB is refused before it is read further.
		big := fmt.Sprintf(`{"from_user":"cust-7","text":"x","metadata":{"pad":%q}}`, strings.Repeat("p", 1<<20))
		if r := d.a.crmHook("msg_big", time.Now(), big); r.code != 413 {
			t.Errorf("a body past 1 MiB: HTTP %d, want 413", r.code)
		}
		if h := d.b.history(sid); len(h) != 1 {
			t.Fatalf("history holds %d messages after bad bodies", len(h))
		}
	})
}

// A post into a webhook session is delivered as message.created, signed
// (the receiver checks it as a third party would). A 500 is tried again
// on the schedule, with the same webhook-id, and the status moves to
// DELIVERED when the receiver takes it.
func TestWebhookRetriedWithTheSameID(t *testing.T) {
	t.Parallel()
	onEachBackendWithCRM(t, func(t *testing.T, d *deployment, c *crm) {
		sid := d.a.crmSession("cust-8")
		watch := d.b.liveWatch(sid)
		c.recv.Then(platformtest.WebhookAnswer{Status: 500})
		r, err := d.a.chat.PostMessage(d.a.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "On its way.", Metadata: map[string]string{"order": "O-9"}})
		if err != nil || r.Status != pb.MessageStatus_MESSAGE_STATUS_PENDING {
			t.Fatalf("answer %v, %v; want PENDING", r, err)
		}
		recvOrFail(t, watch.Recv) // the message, PENDING
		poll(t, d.a.clk, d.replicas(), 6*time.Second)
		ch := recvOrFail(t, watch.Recv).GetMessageStatus()
		if ch.MessageId != r.MessageId || ch.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED {
			t.Fatalf("status event %v, want DELIVERED", ch)
		}
		hooks := c.recv.Hooks()
		if len(hooks) != 2 {
			t.Fatalf("%d webhooks, want 2", len(hooks))
		}
		for _, h := range hooks {
			if h.Refused != "" || h.ID != r.MessageId {
				t.Fatalf("webhook %q refused %q, want id %s, signed", h.ID, h.Refused, r.MessageId)
			}
		}
		ev := hooks[1].Event
		if str(ev, "type") != "message.created" || str(ev, "message", "text") != "On its way." || str(ev, "message", "message_id") != r.MessageId ||
			str(ev, "message", "direction") != "DIRECTION_OUTBOUND" || str(ev, "session", "session_id") != sid ||
			str(ev, "session", "user") != "cust-8" || str(ev, "message", "metadata", "order") != "O-9" {
			t.Fatalf("event %s", hooks[1].Body)
		}
	})
}

// A redirect is a failed attempt, as Standard Webhooks has it: not
// followed (a 302 would have turned the POST into a bodiless GET, which the
// other end answers 200), and retried to the configured URL.
func TestWebhookRedirectIsNotFollowed(t *testing.T) {
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the redirect was followed: %s %s", r.Method, r.URL)
	}))
	t.Cleanup(elsewhere.Close) // after the parallel subtests
	onEachBackendWithCRM(t, func(t *testing.T, d *deployment, c *crm) {
		sid := d.a.crmSession("cust-12")
		for _, status := range []int{http.StatusFound, http.StatusPermanentRedirect} {
			c.recv.Then(platformtest.WebhookAnswer{Status: status, Location: elsewhere.URL + "/moved"})
			r, err := d.a.chat.PostMessage(d.a.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: fmt.Sprint("redirected ", status)})
			if err != nil || r.Status != pb.MessageStatus_MESSAGE_STATUS_PENDING {
				t.Fatalf("HTTP %d: answer %v, %v; want PENDING", status, r, err)
			}
			poll(t, d.a.clk, d.replicas(), 6*time.Second)
			waitFor(t, "the retry DELIVERED", func() bool {
				h := d.b.history(sid)
				return h[len(h)-1].Status == pb.MessageStatus_MESSAGE_STATUS_DELIVERED
			})
		}
	})
}

// A 4xx other than 408 and 429 is a refusal: FAILED with its status, and
// no further attempt, however long one waits.
func TestWebhookGoneIsFailedForGood(t *testing.T) {
	t.Parallel()
	onEachBackendWithCRM(t, func(t *testing.T, d *deployment, c *crm) {
		sid := d.a.crmSession("cust-9")
		c.recv.Then(platformtest.WebhookAnswer{Status: 410, Body: map[string]string{"error": "endpoint removed"}})
		r, err := d.a.chat.PostMessage(d.a.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "hello?"})
		if err != nil || r.Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || r.Error.GetCode() != "410" {
			t.Fatalf("answer %v, %v; want FAILED 410", r, err)
		}
		for range 3 {
			poll(t, d.a.clk, d.replicas(), 11*time.Hour)
		}
		if n := len(c.recv.Hooks()); n != 1 {
			t.Fatalf("%d webhooks, want the one refused", n)
		}
		if h := d.b.history(sid); h[len(h)-1].Status != pb.MessageStatus_MESSAGE_STATUS_FAILED {
			t.Fatalf("history's last %v", h[len(h)-1])
		}
	})
}

// A receiver's Retry-After holds the retry past the schedule's step.
func TestWebhookRetryAfterIsHonoured(t *testing.T) {
	t.Parallel()
	onEachBackendWithCRM(t, func(t *testing.T, d *deployment, c *crm) {
		sid := d.a.crmSession("cust-10")
		c.recv.SetClock(d.a.clk.Now)
		c.recv.Then(platformtest.WebhookAnswer{Status: 429, RetryAfter: "120"})
		r, err := d.a.chat.PostMessage(d.a.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "busy?"})
		if err != nil || r.Status != pb.MessageStatus_MESSAGE_STATUS_PENDING {
			t.Fatalf("answer %v, %v; want PENDING", r, err)
		}
		// The schedule alone would try again after 5 s.
		for _, by := range []time.Duration{6 * time.Second, 54 * time.Second, 59 * time.Second} {
			poll(t, d.a.clk, d.replicas(), by)
		}
		if n := len(c.recv.Hooks()); n != 1 {
			t.Fatalf("%d webhooks before the Retry-After passed, want 1", n)
		}
		poll(t, d.a.clk, d.replicas(), 2*time.Second)
		waitFor(t, "the retry", func() bool { return len(c.recv.Hooks()) == 2 })
		// Whenever the receiver counted, the retry came no sooner than
		// the Retry-After, on the hub's clock.
		if hooks := c.recv.Hooks(); hooks[1].At.Sub(hooks[0].At) < 120*time.Second {
			t.Fatalf("the retry came %s after the first attempt, want at least the Retry-After's 2m0s", hooks[1].At.Sub(hooks[0].At))
		}
		waitFor(t, "DELIVERED", func() bool {
			h := d.b.history(sid)
			return h[len(h)-1].Status == pb.MessageStatus_MESSAGE_STATUS_DELIVERED
		})
	})
}

// A replica that dies with a retry pending leaves it in the backend: the
// other replica makes it when it is due, with the same webhook-id.
func TestWebhookRetryOfADeadReplicaIsMadeByAnother(t *testing.T) {
	t.Parallel()
	c := newCRM(t)
	cl := startClusterWith(t, 2, clusterOptions{server: []option{c.option()}})
	a, b := cl.replicas[0], cl.replicas[1]
	sid := a.crmSession("cust-11")
	watch := b.liveWatch(sid)
	c.recv.Then(platformtest.WebhookAnswer{Status: 503})
	r, err := a.chat.PostMessage(a.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "survive this"})
	if err != nil || r.Status != pb.MessageStatus_MESSAGE_STATUS_PENDING {
		t.Fatalf("answer %v, %v; want PENDING", r, err)
	}
	recvOrFail(t, watch.Recv)
	a.stop()
	poll(t, b.clk, 1, 6*time.Second)
	if ch := recvOrFail(t, watch.Recv).GetMessageStatus(); ch.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED || ch.MessageId != r.MessageId {
		t.Fatalf("status event %v", ch)
	}
	hooks := c.recv.Hooks()
	if len(hooks) != 2 || hooks[0].ID != hooks[1].ID || hooks[1].Refused != "" {
		t.Fatalf("webhooks %+v, want two with the same id", hooks)
	}
}

// A retried PostMessage with the same idempotency key delivers nothing
// again, on either replica.
func TestWebhookRetriedPostDeliversOnce(t *testing.T) {
	t.Parallel()
	onEachBackendWithCRM(t, func(t *testing.T, d *deployment, c *crm) {
		sid := d.a.crmSession("cust-12")
		req := &pb.PostMessageRequest{SessionId: sid, Message: "once", IdempotencyKey: "wf-run-7"}
		first, err := d.a.chat.PostMessage(d.a.ctx(), req)
		if err != nil || first.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED {
			t.Fatalf("first: %v %v", first, err)
		}
		again, err := d.b.chat.PostMessage(d.b.ctx(), req)
		if err != nil || again.MessageId != first.MessageId || again.Status != first.Status {
			t.Fatalf("retry: %v %v", again, err)
		}
		rr := d.b.rest("POST", "/v1/sessions/"+sid+"/messages", map[string]string{"message": "once", "idempotency_key": "wf-run-7"})
		if rr.code != 200 || str(rr.json(t), "message_id") != first.MessageId {
			t.Fatalf("REST retry: %d %s", rr.code, rr.body)
		}
		poll(t, d.a.clk, d.replicas(), 3*time.Minute)
		if n := len(c.recv.Hooks()); n != 1 {
			t.Fatalf("%d webhooks, want 1", n)
		}
	})
}

// A receiver down for good is tried on the whole schedule (immediately,
// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), each attempt counted, then
// the message is FAILED unreachable, which the metrics show.
func TestWebhookScheduleEndsInFailed(t *testing.T) {
	c := newCRM(t)
	c.recv.Answer(func(platformtest.Webhook) platformtest.WebhookAnswer { return platformtest.WebhookAnswer{Status: 502} })
	ts := start(t, nil, nil, c.option())
	d := &deployment{a: ts, b: ts}
	sid := ts.crmSession("cust-13")
	r, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "anyone?"})
	if err != nil || r.Status != pb.MessageStatus_MESSAGE_STATUS_PENDING {
		t.Fatalf("answer %v, %v", r, err)
	}
	for i, step := range webhook.Schedule {
		poll(t, ts.clk, 1, step+step/10+time.Second)
		// Counted once its outcome is recorded: the next wait starts from
		// there.
		waitFor(t, fmt.Sprint("attempt ", i+2), func() bool { return d.attempts("webhook", "retry")+d.attempts("webhook", "failed") == float64(i+2) })
	}
	if n := len(c.recv.Hooks()); n != 8 {
		t.Fatalf("%d webhooks after the schedule, want 8", n)
	}
	waitFor(t, "FAILED", func() bool {
		h := ts.history(sid)
		return h[len(h)-1].Status == pb.MessageStatus_MESSAGE_STATUS_FAILED
	})
	h := ts.history(sid)
	if e := h[len(h)-1].Error; e.GetCode() != "unreachable" {
		t.Fatalf("error %v", e)
	}
	poll(t, ts.clk, 1, 24*time.Hour)
	if n := len(c.recv.Hooks()); n != 8 {
		t.Fatalf("%d attempts, want 8", n)
	}
	if n := d.attempts("webhook", "retry"); n != 7 {
		t.Errorf("%v attempts counted as retried, want 7", n)
	}
	if n := d.attempts("webhook", "failed"); n != 1 {
		t.Errorf("%v attempts counted as failed, want 1", n)
	}
}

// The integration's name is a channel: a chatbot started from it greets
// the user through the integration, as message.created.
func TestChatbotGreetingGoesToTheIntegration(t *testing.T) {
	t.Parallel()
	onEachBackendWithCRM(t, func(t *testing.T, d *deployment, c *crm) {
		r, err := d.a.chat.SendChatbotMessage(d.a.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "bot_plain", From: "crm", To: "cust-14"})
		if err != nil || r.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SENT || r.GreetingStatus != pb.MessageStatus_MESSAGE_STATUS_DELIVERED ||
			r.Platform != "webhook" || r.Channel != "crm" {
			t.Fatalf("SendChatbotMessage: %v, %v", r, err)
		}
		hooks := c.recv.Hooks()
		if len(hooks) != 1 || hooks[0].Refused != "" || hooks[0].ID != r.MessageId || str(hooks[0].Event, "message", "text") != "Hello!" ||
			str(hooks[0].Event, "message", "from_user") != "bot_plain" || str(hooks[0].Event, "session", "user") != "cust-14" {
			t.Fatalf("webhooks %+v", hooks)
		}
	})
}

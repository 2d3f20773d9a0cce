package server_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/server"
	"github.com/chatrelay/chatrelay/store"
)

// testWidgetSecret signs widget tokens on every test server, so replicas of
// one cluster accept each other's.
const testWidgetSecret = "test-widget-secret-0123456789abcdef"

// withWidget changes the widget's configuration.
func withWidget(f func(*server.Widget)) option {
	return func(c *server.Config) { f(&c.Widget) }
}

func (ts *testServer) webSession(user string) *pb.Session {
	ts.t.Helper()
	r, err := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{Platform: "web", User: user})
	if err != nil {
		ts.t.Fatalf("CreateSession: %v", err)
	}
	return r.Session
}

// widgetToken mints a token for a session over gRPC.
func (ts *testServer) widgetToken(sessionID string) string {
	ts.t.Helper()
	r, err := ts.sessions.CreateWidgetToken(ts.ctx(), &pb.CreateWidgetTokenRequest{SessionId: sessionID})
	if err != nil {
		ts.t.Fatalf("CreateWidgetToken: %v", err)
	}
	return r.Token
}

// sseEvent is one Server-Sent Event, or a comment (a heartbeat).
type sseEvent struct {
	id, name, data string
	comment        bool
	retry          string
}

// sse is a widget event stream read event by event.
type sse struct {
	t      *testing.T
	resp   *http.Response
	events chan sseEvent
	cancel context.CancelFunc
}

// widgetEvents opens /widget/v1/events with query and headers (name,
// value, …) and fails unless it answers 200.
func (ts *testServer) widgetEvents(query url.Values, header ...string) *sse {
	ts.t.Helper()
	s, r := ts.openEvents(query, header...)
	if r.code != 0 {
		ts.t.Fatalf("events: %d %s", r.code, r.body)
	}
	return s
}

// openEvents opens the stream; a refusal comes back as restResp.
func (ts *testServer) openEvents(query url.Values, header ...string) (*sse, restResp) {
	ts.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", ts.base+"/widget/v1/events?"+query.Encode(), nil)
	if err != nil {
		ts.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	headerTimer := time.AfterFunc(10*time.Second, cancel)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || !headerTimer.Stop() {
		cancel()
		ts.t.Fatalf("events: no response headers within 10s: %v", err)
	}
	if resp.StatusCode != 200 {
		defer cancel()
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return nil, restResp{code: resp.StatusCode, body: body, header: resp.Header}
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		ts.t.Fatalf("events: Content-Type %q", ct)
	}
	s := &sse{t: ts.t, resp: resp, events: make(chan sseEvent, 64), cancel: cancel}
	go s.read()
	ts.t.Cleanup(func() { cancel(); resp.Body.Close() })
	return s, restResp{}
}

// read parses the stream as a browser does (the fields this server sends).
func (s *sse) read() {
	defer close(s.events)
	sc := bufio.NewScanner(s.resp.Body)
	var ev sseEvent
	started := false
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if started {
				s.events <- ev
			}
			ev, started = sseEvent{}, false
			continue
		}
		started = true
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "":
			ev.comment = true
		case "id":
			ev.id = value
		case "event":
			ev.name = value
		case "data":
			ev.data = value
		case "retry":
			ev.retry = value
		}
	}
}

// next is the next event that is not a heartbeat or the retry field.
func (s *sse) next() sseEvent {
	s.t.Helper()
	for {
		ev := s.nextAny()
		if !ev.comment && ev.retry == "" {
			return ev
		}
	}
}

func (s *sse) nextAny() sseEvent {
	s.t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			s.t.Fatal("event stream ended")
		}
		return ev
	case <-time.After(10 * time.Second):
		s.t.Fatal("no event within 10s")
	}
	return sseEvent{}
}

// message is the next event, which must be a message: its JSON.
func (s *sse) message() map[string]any {
	s.t.Helper()
	ev := s.next()
	var m map[string]any
	if ev.name != "" || json.Unmarshal([]byte(ev.data), &m) != nil || ev.id == "" || ev.id != m["id"] {
		s.t.Fatalf("event %+v is not a message with its id", ev)
	}
	return m
}

// end asserts the stream ends with no further event but heartbeats.
func (s *sse) end() {
	s.t.Helper()
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return
			}
			if !ev.comment {
				s.t.Fatalf("unexpected event after the last: %+v", ev)
			}
		case <-time.After(10 * time.Second):
			s.t.Fatal("event stream did not end within 10s")
		}
	}
}

func (s *sse) close() { s.cancel() }

func eventsQuery(sessionID, token string, more ...string) url.Values {
	q := url.Values{"session_id": {sessionID}, "token": {token}}
	for i := 0; i+1 < len(more); i += 2 {
		q.Set(more[i], more[i+1])
	}
	return q
}

// widgetPost posts the visitor's text with token as its bearer.
func (ts *testServer) widgetPost(sessionID, token string, body any, header ...string) restResp {
	ts.t.Helper()
	data, err := json.Marshal(body)
	if s, ok := body.(string); ok {
		data = []byte(s)
	}
	if err != nil {
		ts.t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(ts.ctx(), "POST", ts.base+"/widget/v1/messages?session_id="+url.QueryEscape(sessionID), strings.NewReader(string(data)))
	if err != nil {
		ts.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	return restResp{code: resp.StatusCode, body: got, header: resp.Header}
}

func TestCreateWidgetTokenOverGRPCAndREST(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.webSession("visitor-1")

	r, err := ts.sessions.CreateWidgetToken(ts.ctx(), &pb.CreateWidgetTokenRequest{SessionId: ses.SessionId})
	if err != nil {
		t.Fatal(err)
	}
	if r.SessionId != ses.SessionId || !r.ExpiresAt.AsTime().Equal(epoch.Add(time.Hour)) || !strings.HasPrefix(r.Token, "v1.") {
		t.Fatalf("CreateWidgetToken = %v; want the session, an hour from now, a v1 token", r)
	}
	// The claims are readable (the widget learns its session from them).
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(r.Token, ".")[1])
	if err != nil || !strings.Contains(string(payload), `"session_id":"`+ses.SessionId+`"`) {
		t.Fatalf("claims %s, %v", payload, err)
	}

	rest := ts.rest("POST", "/v1/sessions/"+ses.SessionId+"/widget-tokens", map[string]any{"ttl": "7200s"})
	if rest.code != 200 || str(rest.json(t), "expires_at") != "2026-05-01T11:00:00Z" || str(rest.json(t), "token") == "" {
		t.Fatalf("REST: %d %s", rest.code, rest.body)
	}
	// A token from REST works on the widget's endpoints like one from gRPC.
	ts.widgetEvents(eventsQuery(ses.SessionId, str(rest.json(t), "token"))).close()
}

func TestCreateWidgetTokenRefusals(t *testing.T) {
	ts := start(t, nil, nil, withWidget(func(w *server.Widget) { w.MaxTokenTTL = 2 * time.Hour }))
	web := ts.webSession("visitor-1")
	api := ts.createSession("api-user")
	closed := ts.webSession("visitor-2")
	if _, err := ts.sessions.CloseSession(ts.ctx(), &pb.CloseSessionRequest{SessionId: closed.SessionId}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		req    *pb.CreateWidgetTokenRequest
		code   codes.Code
		reason string
		field  string
		http   int
	}{
		{"a ttl past max_token_ttl", &pb.CreateWidgetTokenRequest{SessionId: web.SessionId, Ttl: durationpb.New(2*time.Hour + time.Second)},
			codes.InvalidArgument, "INVALID_ARGUMENT", "ttl", 400},
		{"a negative ttl", &pb.CreateWidgetTokenRequest{SessionId: web.SessionId, Ttl: durationpb.New(-time.Second)},
			codes.InvalidArgument, "INVALID_ARGUMENT", "ttl", 400},
		{"no session", &pb.CreateWidgetTokenRequest{}, codes.InvalidArgument, "INVALID_ARGUMENT", "session_id", 400},
		{"a session that is not web", &pb.CreateWidgetTokenRequest{SessionId: api.SessionId}, codes.InvalidArgument, "INVALID_ARGUMENT", "session_id", 400},
		{"an unknown session", &pb.CreateWidgetTokenRequest{SessionId: "ses_nope"}, codes.NotFound, "SESSION_NOT_FOUND", "", 404},
		{"a closed session", &pb.CreateWidgetTokenRequest{SessionId: closed.SessionId}, codes.FailedPrecondition, "SESSION_CLOSED", "", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ts.sessions.CreateWidgetToken(ts.ctx(), tc.req)
			wantStatus(t, err, tc.code, tc.reason, tc.field)
			body := map[string]any{}
			if tc.req.Ttl != nil {
				body["ttl"] = fmt.Sprintf("%gs", tc.req.Ttl.AsDuration().Seconds())
			}
			id := tc.req.SessionId
			if id == "" {
				id = "not!an-id" // the path needs one
			}
			wantREST(t, ts.rest("POST", "/v1/sessions/"+id+"/widget-tokens", body), tc.http, tc.reason)
		})
	}
	// The maximum itself is fine.
	if _, err := ts.sessions.CreateWidgetToken(ts.ctx(), &pb.CreateWidgetTokenRequest{SessionId: web.SessionId, Ttl: durationpb.New(2 * time.Hour)}); err != nil {
		t.Fatalf("a ttl of max_token_ttl: %v", err)
	}
}

func TestCreateWidgetTokenNeedsASecretAndAKey(t *testing.T) {
	none := start(t, nil, nil, withWidget(func(w *server.Widget) { w.Secret = "" }))
	ses := none.webSession("visitor-1")
	_, err := none.sessions.CreateWidgetToken(none.ctx(), &pb.CreateWidgetTokenRequest{SessionId: ses.SessionId})
	wantStatus(t, err, codes.FailedPrecondition, "FAILED_PRECONDITION", "")

	keyed := start(t, nil, nil, withKeys(testKey{"key-of-tenant-a-0123", "a"}, testKey{"key-of-tenant-b-0123", "b"}))
	keyed.key = "key-of-tenant-a-0123"
	sesA := keyed.webSession("visitor-1")
	keyed.key = ""
	_, err = keyed.sessions.CreateWidgetToken(keyed.ctx(), &pb.CreateWidgetTokenRequest{SessionId: sesA.SessionId})
	wantStatus(t, err, codes.Unauthenticated, "UNAUTHENTICATED", "")
	keyed.key = "key-of-tenant-b-0123"
	_, err = keyed.sessions.CreateWidgetToken(keyed.ctx(), &pb.CreateWidgetTokenRequest{SessionId: sesA.SessionId})
	wantStatus(t, err, codes.NotFound, "SESSION_NOT_FOUND", "")

	// Tenant a's token streams tenant a's session, though the widget sends
	// no API key.
	keyed.key = "key-of-tenant-a-0123"
	tok := keyed.widgetToken(sesA.SessionId)
	post := keyed.post(sesA.SessionId, "hello a")
	keyed.key = ""
	ev := keyed.widgetEvents(eventsQuery(sesA.SessionId, tok))
	if m := ev.message(); m["id"] != post || m["text"] != "hello a" {
		t.Fatalf("got %v", m)
	}
}

func TestWidgetTokensRefused(t *testing.T) {
	ts := start(t, nil, nil)
	other := start(t, nil, nil, withWidget(func(w *server.Widget) { w.Secret = "another-deployment-secret-0123456789" }))
	ses := ts.webSession("visitor-1")
	ses2 := ts.webSession("visitor-2")
	tok := ts.widgetToken(ses.SessionId)
	otherSes := other.webSession("visitor-1")
	foreign := other.widgetToken(otherSes.SessionId)
	parts := strings.Split(tok, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"tenant":"default","session_id":"`+ses2.SessionId+`","exp":99999999999999}`)) + "." + parts[2]

	for _, tc := range []struct {
		name, session, token string
		http                 int
		reason               string
	}{
		{"no token", ses.SessionId, "", 401, "UNAUTHENTICATED"},
		{"garbage", ses.SessionId, "not-a-token", 401, "UNAUTHENTICATED"},
		{"claims changed under the signature", ses2.SessionId, tampered, 401, "UNAUTHENTICATED"},
		{"another deployment's token", otherSes.SessionId, foreign, 401, "UNAUTHENTICATED"},
		{"a token of another session", ses2.SessionId, tok, 403, "PERMISSION_DENIED"},
		{"no session named", "", tok, 400, "INVALID_ARGUMENT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, r := ts.openEvents(eventsQuery(tc.session, tc.token))
			wantREST(t, r, tc.http, tc.reason)
			r = ts.widgetPost(tc.session, tc.token, map[string]any{"text": "hi"})
			wantREST(t, r, tc.http, tc.reason)
		})
	}
	if n := len(ts.history(ses2.SessionId)) + len(ts.history(ses.SessionId)); n != 0 {
		t.Fatalf("refused posts stored %d messages", n)
	}

	// Past its expiry the token is refused, on both endpoints.
	ts.clk.Advance(time.Hour)
	_, r := ts.openEvents(eventsQuery(ses.SessionId, tok))
	wantREST(t, r, 401, "UNAUTHENTICATED")
	if !strings.Contains(string(r.body), "expired") {
		t.Fatalf("expired token: %s", r.body)
	}
	wantREST(t, ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "hi"}), 401, "UNAUTHENTICATED")
}

func TestWidgetEventsHistoryThenLive(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.webSession("visitor-1")
	tok := ts.widgetToken(ses.SessionId)
	first := ts.post(ses.SessionId, "Hi! How can we help?")
	second := ts.post(ses.SessionId, "We reply within minutes.")

	ev := ts.widgetEvents(eventsQuery(ses.SessionId, tok))
	if retry := ev.nextAny(); retry.retry == "" {
		t.Fatalf("first field %+v, want the reconnect delay", retry)
	}
	m := ev.message()
	if m["id"] != first || m["direction"] != "outbound" || m["text"] != "Hi! How can we help?" || m["status"] != "delivered" || m["at"] != "2026-05-01T09:00:00Z" {
		t.Fatalf("first event %v", m)
	}
	if _, leaked := m["metadata"]; leaked {
		t.Fatalf("the widget sees the tenant's metadata: %v", m)
	}
	if m := ev.message(); m["id"] != second {
		t.Fatalf("second event %v, want %s", m, second)
	}
	live := ts.post(ses.SessionId, "Still there?")
	if m := ev.message(); m["id"] != live {
		t.Fatalf("live event %v, want %s", m, live)
	}
	// The visitor's own message comes back on the stream.
	r := ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "Yes, here"})
	if r.code != 200 {
		t.Fatalf("post: %d %s", r.code, r.body)
	}
	mine := r.json(t)
	if mine["direction"] != "inbound" || mine["status"] != "received" || mine["text"] != "Yes, here" {
		t.Fatalf("post answered %v", mine)
	}
	if m := ev.message(); m["id"] != mine["id"] || m["direction"] != "inbound" {
		t.Fatalf("event %v, want the visitor's %v", m, mine["id"])
	}

	// A heartbeat when the clock moves on.
	ts.clk.Advance(15 * time.Second)
	if hb := ev.nextAny(); !hb.comment {
		t.Fatalf("got %+v, want a heartbeat", hb)
	}

	// The end of the session ends the stream.
	if _, err := ts.sessions.CloseSession(ts.ctx(), &pb.CloseSessionRequest{SessionId: ses.SessionId}); err != nil {
		t.Fatal(err)
	}
	if end := ev.next(); end.name != "ended" || end.data != `{"state":"closed"}` || end.id != "" {
		t.Fatalf("got %+v, want the end", end)
	}
	ev.end()
}

func TestWidgetEventsResumeAfterLastEventIDWithNoGapOrDuplicate(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.webSession("visitor-1")
	tok := ts.widgetToken(ses.SessionId)
	ids := []string{ts.post(ses.SessionId, "one"), ts.post(ses.SessionId, "two")}

	ev := ts.widgetEvents(eventsQuery(ses.SessionId, tok))
	ev.message()
	ev.close()
	// While the page is away.
	ids = append(ids, ts.post(ses.SessionId, "three"))

	for _, how := range []struct {
		name   string
		query  url.Values
		header []string
	}{
		{"Last-Event-ID, as the browser reconnects", eventsQuery(ses.SessionId, tok), []string{"Last-Event-ID", ids[0]}},
		{"?after=, as the widget reconnects by itself", eventsQuery(ses.SessionId, tok, "after", ids[0]), nil},
	} {
		t.Run(how.name, func(t *testing.T) {
			ev := ts.widgetEvents(how.query, how.header...)
			for _, want := range ids[1:] {
				if m := ev.message(); m["id"] != want {
					t.Fatalf("got %v, want %s", m, want)
				}
			}
			live := ts.post(ses.SessionId, "four "+how.name)
			if m := ev.message(); m["id"] != live {
				t.Fatalf("got %v, want the live %s", m, live)
			}
			ids = append(ids, live)
			ev.close()
		})
	}

	// A Last-Event-ID that is not a message of this session is refused.
	other := ts.webSession("visitor-2")
	foreign := ts.post(other.SessionId, "elsewhere")
	_, r := ts.openEvents(eventsQuery(ses.SessionId, tok), "Last-Event-ID", foreign)
	wantREST(t, r, 400, "INVALID_ARGUMENT")
}

func TestWidgetEventsEndWhenTheTokenExpires(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.webSession("visitor-1")
	r, err := ts.sessions.CreateWidgetToken(ts.ctx(), &pb.CreateWidgetTokenRequest{SessionId: ses.SessionId, Ttl: durationpb.New(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	id := ts.post(ses.SessionId, "hello")
	ev := ts.widgetEvents(eventsQuery(ses.SessionId, r.Token))
	if m := ev.message(); m["id"] != id {
		t.Fatalf("first event %v, want the message %s", m, id)
	}
	ts.clk.Advance(10 * time.Minute)
	end := ev.next()
	if end.name != "failed" || !strings.Contains(end.data, `"reason":"UNAUTHENTICATED"`) {
		t.Fatalf("got %+v, want the stream failed for the expired token", end)
	}
	ev.end()
}

func TestWidgetPostIsAnIngest(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.webSession("visitor-1")
	tok := ts.widgetToken(ses.SessionId)

	// A ChatReceive waiting on the session matches the visitor's reply.
	st, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{SessionId: ses.SessionId, KeywordFilter: "yes", TimeoutMinutes: 5})
	r := ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "yes please", "idempotency_key": "w-1"})
	if r.code != 200 {
		t.Fatalf("post: %d %s", r.code, r.body)
	}
	id := str(r.json(t), "id")
	s := recvOrFail(t, st.Recv).GetSuccess()
	if s.GetMessageText() != "yes please" || s.FromUser != "visitor-1" || s.MessageId != id {
		t.Fatalf("ChatReceive got %v, want the visitor's message %s", s, id)
	}

	// The same key again is the same message, stored once.
	again := ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "yes please", "idempotency_key": "w-1"})
	if again.code != 200 || str(again.json(t), "id") != id {
		t.Fatalf("replay: %d %s, want %s", again.code, again.body, id)
	}
	if h := ts.history(ses.SessionId); len(h) != 1 || h[0].FromUser != "visitor-1" || h[0].Direction != pb.Direction_DIRECTION_INBOUND {
		t.Fatalf("history %v", h)
	}
	// The key with other text is a mistake.
	wantREST(t, ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "no", "idempotency_key": "w-1"}), 400, "IDEMPOTENCY_KEY_REUSED")

	// Into an ended session, nothing is taken.
	if _, err := ts.sessions.CloseSession(ts.ctx(), &pb.CloseSessionRequest{SessionId: ses.SessionId}); err != nil {
		t.Fatal(err)
	}
	wantREST(t, ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "hello?"}), 400, "SESSION_CLOSED")
}

func TestWidgetPostLimits(t *testing.T) {
	lim := server.DefaultLimits()
	lim.MessageBytes, lim.RequestBytes = 64, 1024
	ts := start(t, nil, nil, func(c *server.Config) { c.Limits = lim })
	ses := ts.webSession("visitor-1")
	tok := ts.widgetToken(ses.SessionId)
	for _, tc := range []struct {
		name  string
		body  any
		field string
	}{
		{"text past message_bytes", map[string]any{"text": strings.Repeat("x", 65)}, "text"},
		{"empty text", map[string]any{"text": ""}, "text"},
		{"a bad idempotency key", map[string]any{"text": "hi", "idempotency_key": "not ok!"}, "idempotency_key"},
		{"a body past request_bytes", map[string]any{"text": "hi", "idempotency_key": strings.Repeat("k", 1100)}, ""},
		{"an unknown field", map[string]any{"text": "hi", "user": "someone-else"}, ""},
		{"not JSON", "text=hi", ""},
		{"two objects", `{"text":"a"}{"text":"b"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ts.widgetPost(ses.SessionId, tok, tc.body)
			wantREST(t, r, 400, "INVALID_ARGUMENT")
			if tc.field != "" && !strings.Contains(string(r.body), `"field":"`+tc.field+`"`) {
				t.Fatalf("no violation on %s: %s", tc.field, r.body)
			}
		})
	}
	if h := ts.history(ses.SessionId); len(h) != 0 {
		t.Fatalf("refused posts stored %v", h)
	}
	if r := ts.widgetPost(ses.SessionId, tok, map[string]any{"text": strings.Repeat("x", 64)}); r.code != 200 {
		t.Fatalf("a text of message_bytes: %d %s", r.code, r.body)
	}
}

// A session's visitor may send widget.messages_per_minute, and no more:
// past it a send is 429 RATE_LIMITED with Retry-After, and stores nothing;
// another session's budget is its own; the budget refills with time.
func TestWidgetMessagesPerMinute(t *testing.T) {
	ts := start(t, nil, nil, withWidget(func(w *server.Widget) { w.MessagesPerMinute = 6 }))
	ses, other := ts.webSession("visitor-1"), ts.webSession("visitor-2")
	tok := ts.widgetToken(ses.SessionId)
	send := func(sid, tok string, i int) restResp {
		return ts.widgetPost(sid, tok, map[string]any{"text": fmt.Sprint("message ", i)})
	}
	for i := range 6 {
		if r := send(ses.SessionId, tok, i); r.code != 200 {
			t.Fatalf("message %d: %d %s", i, r.code, r.body)
		}
	}
	r := send(ses.SessionId, tok, 6)
	wantREST(t, r, 429, "RATE_LIMITED")
	if got := r.header.Get("Retry-After"); got != "10" {
		t.Fatalf("Retry-After %q, want 10 (a message every 10 s)", got)
	}
	if h := ts.history(ses.SessionId); len(h) != 6 {
		t.Fatalf("%d messages stored, want the 6 taken", len(h))
	}
	if r := send(other.SessionId, ts.widgetToken(other.SessionId), 0); r.code != 200 {
		t.Fatalf("another session's visitor: %d %s", r.code, r.body)
	}
	ts.clk.Advance(10 * time.Second)
	if r := send(ses.SessionId, tok, 7); r.code != 200 {
		t.Fatalf("after 10 s: %d %s", r.code, r.body)
	}
}

// A tenant's widget streams have their own cap, widget.streams, apart from
// limits.streams: visitors who reach it are refused, and the backend's
// ChatReceive and WatchSession still get theirs.
func TestWidgetStreamsAreCountedApartFromTheBackends(t *testing.T) {
	ts := start(t, nil, nil, withWidget(func(w *server.Widget) { w.Streams = 2 }), withLimits(func(l *server.Limits) { l.Streams = 1 }))
	for i := range 2 {
		ses := ts.webSession(fmt.Sprint("visitor-", i))
		ts.widgetEvents(eventsQuery(ses.SessionId, ts.widgetToken(ses.SessionId)))
	}
	third := ts.webSession("visitor-3")
	_, r := ts.openEvents(eventsQuery(third.SessionId, ts.widgetToken(third.SessionId)))
	wantREST(t, r, 429, "TOO_MANY_LISTENERS")
	if !strings.Contains(string(r.body), "widget.streams") {
		t.Fatalf("the refusal does not name its limit: %s", r.body)
	}
	ts.liveWatch(third.SessionId) // the backend's one stream
}

func TestWidgetConnectionsPerSession(t *testing.T) {
	ts := start(t, nil, nil, withWidget(func(w *server.Widget) { w.ConnectionsPerSession = 2 }))
	ses := ts.webSession("visitor-1")
	other := ts.webSession("visitor-2")
	tok := ts.widgetToken(ses.SessionId)
	first := ts.widgetEvents(eventsQuery(ses.SessionId, tok))
	ts.widgetEvents(eventsQuery(ses.SessionId, tok))
	_, r := ts.openEvents(eventsQuery(ses.SessionId, tok))
	wantREST(t, r, 429, "TOO_MANY_LISTENERS")
	// Another session has its own.
	ts.widgetEvents(eventsQuery(other.SessionId, ts.widgetToken(other.SessionId)))
	// A connection that closes frees its place.
	first.close()
	waitFor(t, "the closed connection's place", func() bool {
		s, r := ts.openEvents(eventsQuery(ses.SessionId, tok))
		if s != nil {
			s.close()
		}
		return r.code == 0
	})
}

func TestWidgetCORS(t *testing.T) {
	ts := start(t, nil, nil, withWidget(func(w *server.Widget) { w.AllowedOrigins = []string{"https://shop.example"} }))
	ses := ts.webSession("visitor-1")
	tok := ts.widgetToken(ses.SessionId)

	preflight := func(origin string) *http.Response {
		req, _ := http.NewRequestWithContext(ts.ctx(), "OPTIONS", ts.base+"/widget/v1/messages", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	ok := preflight("https://shop.example")
	if ok.StatusCode != 204 || ok.Header.Get("Access-Control-Allow-Origin") != "https://shop.example" ||
		!strings.Contains(ok.Header.Get("Access-Control-Allow-Headers"), "Authorization") ||
		!strings.Contains(ok.Header.Get("Access-Control-Allow-Methods"), "POST") {
		t.Fatalf("preflight from an allowed origin: %d %v", ok.StatusCode, ok.Header)
	}
	for _, origin := range []string{"https://evil.example", "https://shop.example.evil", "http://shop.example", "null"} {
		if bad := preflight(origin); bad.StatusCode != 403 || bad.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("preflight from %s: %d %v", origin, bad.StatusCode, bad.Header)
		}
	}

	// The allowed origin's requests carry the header the browser checks.
	r := ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "from the shop"}, "Origin", "https://shop.example")
	if r.code != 200 || r.header.Get("Access-Control-Allow-Origin") != "https://shop.example" {
		t.Fatalf("post from the shop: %d %v", r.code, r.header)
	}
	ev, _ := ts.openEvents(eventsQuery(ses.SessionId, tok))
	if ev == nil {
		t.Fatal("events without an Origin refused")
	}
	ev.close()
	evShop := ts.widgetEvents(eventsQuery(ses.SessionId, tok), "Origin", "https://shop.example")
	if evShop.resp.Header.Get("Access-Control-Allow-Origin") != "https://shop.example" {
		t.Fatalf("events for the shop: %v", evShop.resp.Header)
	}
	// Another origin's post is refused before anything is stored (a
	// simple request is not preflighted).
	wantREST(t, ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "from evil"}, "Origin", "https://evil.example"), 403, "PERMISSION_DENIED")
	_, r = ts.openEvents(eventsQuery(ses.SessionId, tok), "Origin", "https://evil.example")
	wantREST(t, r, 403, "PERMISSION_DENIED")
	// The server's own pages need no entry.
	self := ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "from the demo"}, "Origin", ts.base)
	if self.code != 200 {
		t.Fatalf("post from the server's own origin: %d %s", self.code, self.body)
	}
	if h := ts.history(ses.SessionId); len(h) != 2 {
		t.Fatalf("history %v, want the shop's and the demo's", h)
	}
}

// widget.no_demo leaves the demo page out, and the script in.
func TestWidgetDemoCanBeLeftOut(t *testing.T) {
	for _, noDemo := range []bool{false, true} {
		ts := start(t, nil, nil, withWidget(func(w *server.Widget) { w.NoDemo = noDemo }))
		tok := ts.widgetToken(ts.webSession("visitor-1").SessionId)
		want := map[bool]int{false: 200, true: 404}[noDemo]
		for _, path := range []string{"/widget/demo?token=" + tok, "/widget/demo.css"} {
			if r := ts.rest("GET", path, nil); r.code != want {
				t.Errorf("no_demo %v: GET %s: HTTP %d, want %d", noDemo, path, r.code, want)
			}
		}
		if r := ts.rest("GET", "/widget.js", nil); r.code != 200 {
			t.Errorf("no_demo %v: GET /widget.js: HTTP %d", noDemo, r.code)
		}
	}
}

func TestWidgetConfigRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    server.Widget
	}{
		{"a short secret", server.Widget{Secret: "short"}},
		{"an origin with a path", server.Widget{Secret: testWidgetSecret, AllowedOrigins: []string{"https://shop.example/"}}},
		{"an origin without a scheme", server.Widget{Secret: testWidgetSecret, AllowedOrigins: []string{"shop.example"}}},
		{"token_ttl past max_token_ttl", server.Widget{Secret: testWidgetSecret, TokenTTL: 2 * time.Hour, MaxTokenTTL: time.Hour}},
		{"negative connections", server.Widget{Secret: testWidgetSecret, ConnectionsPerSession: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := server.Config{Store: start(t, nil, nil).store, Widget: tc.w}
			if _, err := server.New(cfg); err == nil || !strings.Contains(err.Error(), "widget") {
				t.Fatalf("New = %v, want a widget error", err)
			}
		})
	}
}

func TestReplicasAcceptEachOthersWidgetTokens(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 2)
	a, b := cl.replicas[0], cl.replicas[1]
	ses := b.webSession("visitor-1")
	tok := b.widgetToken(ses.SessionId)
	ev := a.widgetEvents(eventsQuery(ses.SessionId, tok))
	ev.nextAny() // retry: the stream is set up
	id := b.post(ses.SessionId, "from B")
	if m := ev.message(); m["id"] != id {
		t.Fatalf("A's stream got %v, want %s", m, id)
	}
	r := b.widgetPost(ses.SessionId, tok, map[string]any{"text": "to B", "idempotency_key": "k1"})
	if r.code != 200 {
		t.Fatalf("post on B: %d %s", r.code, r.body)
	}
	if m := ev.message(); m["id"] != str(r.json(t), "id") {
		t.Fatalf("A's stream got %v", m)
	}
}

func TestWidgetPostRetriedAfterAFaultIsTakenOnce(t *testing.T) {
	t.Parallel()
	var proxy *redistest.Proxy
	cl := startClusterVia(t, 1, func(_ int, addr string) string {
		proxy = redistest.NewProxy(t, addr)
		return proxy.Addr
	})
	ts := cl.replicas[0]
	ses := ts.webSession("visitor-1")
	tok := ts.widgetToken(ses.SessionId)
	for _, fault := range []redistest.Fault{redistest.DropRequest, redistest.DropReply, redistest.StallReply} {
		t.Run(fault.String(), func(t *testing.T) {
			key := "w-" + strings.ReplaceAll(fault.String(), " ", "-")
			tripped := proxy.Break(ses.SessionId, fault)
			r := ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "hello " + key, "idempotency_key": key})
			<-tripped
			wantREST(t, r, 503, "BACKEND_UNAVAILABLE")
			var again restResp
			waitFor(t, "the retry to be taken", func() bool {
				again = ts.widgetPost(ses.SessionId, tok, map[string]any{"text": "hello " + key, "idempotency_key": key})
				return again.code == 200
			})
			n := 0
			for _, m := range ts.history(ses.SessionId) {
				if m.Text == "hello "+key {
					n++
				}
			}
			if n != 1 || str(again.json(t), "id") == "" {
				t.Fatalf("%d messages after the retry (%s), want 1", n, again.body)
			}
		})
	}
}

// trappedStore springs trap on the reads of one session a widget stream
// makes (its history, and the session on a resync).
type trappedStore struct {
	keptSubs
	session string
	trap    func()
}

func newTrappedStore(t *testing.T, clk *clock.Fake) *trappedStore {
	return &trappedStore{keptSubs: keptSubs{Store: memoryStore(t, store.Options{Clock: clk})}}
}

func (s *trappedStore) set(session string, trap func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.session, s.trap = session, trap
}

func (s *trappedStore) spring(session string) {
	s.mu.Lock()
	trap := s.trap
	if session != s.session {
		trap = nil
	}
	s.mu.Unlock()
	if trap != nil {
		trap()
	}
}

func (s *trappedStore) ListMessages(ctx context.Context, tenant, sessionID, afterID string, limit int) ([]store.Message, error) {
	s.spring(sessionID)
	return s.Store.ListMessages(ctx, tenant, sessionID, afterID, limit)
}

func (s *trappedStore) GetSession(ctx context.Context, tenant, id string) (store.Session, error) {
	s.spring(id)
	return s.Store.GetSession(ctx, tenant, id)
}

// A widget stream runs on a goroutine of its own, not net/http's: a panic
// in it ends that stream as an internal error, before it opened or after,
// and the server and the other streams go on.
func TestAPanicInAWidgetStreamEndsOnlyIt(t *testing.T) {
	clk := clock.NewFake(epoch)
	st := newTrappedStore(t, clk)
	ts := start(t, st, clk)
	doomed, live, fine := ts.webSession("visitor-1"), ts.webSession("visitor-2"), ts.webSession("visitor-3")
	bug := func() { panic("a bug in a read") }

	token := ts.widgetToken(doomed.SessionId)
	st.set(doomed.SessionId, bug)
	_, r := ts.openEvents(eventsQuery(doomed.SessionId, token))
	wantREST(t, r, 500, "INTERNAL")

	ev := ts.widgetEvents(eventsQuery(live.SessionId, ts.widgetToken(live.SessionId)))
	ev.nextAny() // the retry field: the stream is open
	st.set(live.SessionId, bug)
	st.resync("default", live.SessionId)
	if end := ev.next(); end.name != "failed" || !strings.Contains(end.data, `"reason":"INTERNAL"`) {
		t.Fatalf("got %+v, want the stream failed as an internal error", end)
	}
	ev.end()

	other := ts.widgetEvents(eventsQuery(fine.SessionId, ts.widgetToken(fine.SessionId)))
	if id := ts.post(fine.SessionId, "still here"); other.message()["id"] != id {
		t.Fatal("the other stream did not get the post")
	}
}

// Shutdown waits for the widget streams, which net/http's Shutdown does
// not once they own their connections: a stream stuck in a store call
// holds it to its timeout, which it says (without the wait nothing is
// said); a stream that ends on shutdown lets it finish without one.
func TestShutdownWaitsForWidgetStreams(t *testing.T) {
	for _, stuck := range []bool{true, false} {
		t.Run(map[bool]string{true: "stuck", false: "ending"}[stuck], func(t *testing.T) {
			clk := clock.NewFake(epoch)
			st := newTrappedStore(t, clk)
			logs := &logLines{}
			ts := start(t, st, clk, func(c *serverConfig) {
				c.Logger = slog.New(slog.NewJSONHandler(logs, nil))
				c.ShutdownTimeout = 500 * time.Millisecond
			})
			ses := ts.webSession("visitor-1")
			ev := ts.widgetEvents(eventsQuery(ses.SessionId, ts.widgetToken(ses.SessionId)))
			ev.nextAny() // the retry field: the stream owns its connection
			release := make(chan struct{})
			if stuck {
				entered := make(chan struct{})
				st.set(ses.SessionId, func() {
					st.set("", nil) // once: the stream reads the session again after
					close(entered)
					<-release
				})
				st.resync("default", ses.SessionId)
				<-entered
			}
			ts.stop()
			close(release)
			warned := strings.Contains(logs.String(), "widget streams still open at the shutdown timeout")
			if warned != stuck {
				t.Fatalf("a stream stuck: %v; shutdown said it timed out waiting for one: %v; logs:\n%s", stuck, warned, logs.String())
			}
			if !stuck {
				ev.end()
			}
		})
	}
}

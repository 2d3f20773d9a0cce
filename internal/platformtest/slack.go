// Package platformtest runs local fakes of the chat platforms' APIs, for
// tests, the benchmark and the README's walkthrough. Each checks requests
// as the platform does (method, path, authentication, body) and answers
// with the platform's own response and error shapes; each signs callbacks
// as the platform does.
package platformtest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatrelay/chatrelay/internal/jsonw"
)

// Slack is a fake of Slack's Web API: chat.postMessage.
type Slack struct {
	srv   *httptest.Server
	token string
	// Latency is added before every answer.
	Latency time.Duration
	gate    gate

	mu     sync.Mutex
	posts  []SlackPost
	script []func(SlackPost) SlackAnswer
	onPost func(*http.Request, SlackPost)
	seq    atomic.Int64
	// inFlight and mostAtOnce count calls being answered.
	inFlight, mostAtOnce atomic.Int64
}

// SlackPost is a chat.postMessage call the fake received.
type SlackPost struct {
	Token, Channel, Text, ThreadTS string
}

// SlackAnswer is how the fake answers a call: Status 0 is 200.
type SlackAnswer struct {
	Status     int
	RetryAfter int // seconds, for 429
	Error      string
}

// Slack's own answers.
var (
	SlackRateLimited = SlackAnswer{Status: http.StatusTooManyRequests, RetryAfter: 30}
	SlackDown        = SlackAnswer{Status: http.StatusInternalServerError}
)

// NewSlack starts a fake that accepts token as the bot token, on a free
// loopback port. Close it.
func NewSlack(token string) *Slack {
	s := &Slack{token: token}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// NewSlackOn starts the fake on l.
func NewSlackOn(l net.Listener, token string) *Slack {
	s := &Slack{token: token}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.Listener.Close()
	s.srv.Listener = l
	s.srv.Start()
	return s
}

// OnPost, when set, is told of each call as the fake reads it.
func (s *Slack) OnPost(fn func(r *http.Request, p SlackPost)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onPost = fn
}

// URL is the API URL to configure (slack's api_url).
func (s *Slack) URL() string { return s.srv.URL + "/api/" }

func (s *Slack) Close() { s.srv.Close() }

// Then queues how the next calls are answered, in order; calls past the
// queue are answered as Slack answers them (ok, or its token and channel
// errors).
func (s *Slack) Then(answers ...func(SlackPost) SlackAnswer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.script = append(s.script, answers...)
}

// Answering is an answer for Then.
func Answering(a SlackAnswer) func(SlackPost) SlackAnswer {
	return func(SlackPost) SlackAnswer { return a }
}

// Posts returns the calls so far.
func (s *Slack) Posts() []SlackPost {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SlackPost(nil), s.posts...)
}

// MostAtOnce is the most calls the fake was answering at one time.
func (s *Slack) MostAtOnce() int { return int(s.mostAtOnce.Load()) }

func (s *Slack) serve(w http.ResponseWriter, r *http.Request) {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for m := s.mostAtOnce.Load(); n > m && !s.mostAtOnce.CompareAndSwap(m, n); m = s.mostAtOnce.Load() {
	}
	s.gate.pass()
	if s.Latency > 0 {
		time.Sleep(s.Latency) // the platform's own latency, simulated
	}
	if r.Method != http.MethodPost || r.URL.Path != "/api/chat.postMessage" {
		http.Error(w, "unknown method", http.StatusNotFound)
		return
	}
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		slackJSON(w, http.StatusOK, map[string]any{"ok": false, "error": "invalid_form_data"})
		return
	}
	if err := r.ParseForm(); err != nil {
		slackJSON(w, http.StatusOK, map[string]any{"ok": false, "error": "invalid_form_data"})
		return
	}
	// Slack takes the token as a form field or a Bearer header.
	token := r.PostForm.Get("token")
	if h, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		token = h
	}
	p := SlackPost{Token: token, Channel: r.PostForm.Get("channel"), Text: r.PostForm.Get("text"), ThreadTS: r.PostForm.Get("thread_ts")}
	s.mu.Lock()
	s.posts = append(s.posts, p)
	if s.onPost != nil {
		s.onPost(r, p)
	}
	var a SlackAnswer
	if len(s.script) > 0 {
		a = s.script[0](p)
		s.script = s.script[1:]
	}
	s.mu.Unlock()
	switch {
	case a.Status == http.StatusTooManyRequests:
		w.Header().Set("Retry-After", strconv.Itoa(a.RetryAfter))
		slackJSON(w, a.Status, map[string]any{"ok": false, "error": "ratelimited"})
		return
	case a.Status >= 500:
		http.Error(w, "<html>Internal Server Error</html>", a.Status)
		return
	case a.Error != "":
		slackJSON(w, http.StatusOK, map[string]any{"ok": false, "error": a.Error})
		return
	case token == "":
		slackJSON(w, http.StatusOK, map[string]any{"ok": false, "error": "not_authed"})
		return
	case token != s.token:
		slackJSON(w, http.StatusOK, map[string]any{"ok": false, "error": "invalid_auth"})
		return
	case p.Channel == "" || !strings.ContainsAny(p.Channel[:1], "CDG"):
		slackJSON(w, http.StatusOK, map[string]any{"ok": false, "error": "channel_not_found"})
		return
	case p.Text == "":
		slackJSON(w, http.StatusOK, map[string]any{"ok": false, "error": "no_text"})
		return
	}
	// Written by hand: the benchmark runs this fake beside the server it
	// measures, and encoding/json's reflection would be most of its cost.
	ts := strconv.AppendInt(nil, time.Now().Unix(), 10)
	ts = fmt.Appendf(ts, ".%06d", s.seq.Add(1)%1_000_000)
	b := make([]byte, 0, 256+2*len(p.Text))
	b = append(b, `{"ok":true,"channel":`...)
	b, _ = jsonw.AppendString(b, p.Channel, jsonw.EncodingJSON)
	b = append(b, `,"ts":"`...)
	b = append(b, ts...)
	b = append(b, `","message":{"bot_id":"B0FAKEBOT","type":"message","text":`...)
	b, _ = jsonw.AppendString(b, p.Text, jsonw.EncodingJSON)
	b = append(b, `,"user":"U0FAKEBOT","ts":"`...)
	b = append(b, ts...)
	b = append(b, `","app_id":"A0FAKEAPP","team":"T0FAKE"`...)
	if p.ThreadTS != "" {
		b = append(b, `,"thread_ts":`...)
		b, _ = jsonw.AppendString(b, p.ThreadTS, jsonw.EncodingJSON)
	}
	b = append(b, "}}\n"...)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(b)
}

func slackJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// SlackEvent is the body of an Events API callback carrying a message
// event, as Slack sends one. Extra fields go into the inner event.
func SlackEvent(eventID, channel, user, text string, extra map[string]any) []byte {
	ts := fmt.Sprintf("%d.000100", time.Now().Unix())
	ev := map[string]any{"type": "message", "channel": channel, "user": user, "text": text, "ts": ts, "event_ts": ts,
		"channel_type": "channel", "team": "T0FAKE", "client_msg_id": "c0ffee00-0000-4000-8000-" + fmt.Sprintf("%012d", time.Now().UnixNano()%1e12)}
	for k, v := range extra {
		ev[k] = v
	}
	b, _ := json.Marshal(map[string]any{
		"token": "XXYYZZ", "team_id": "T0FAKE", "api_app_id": "A0FAKEAPP", "event": ev, "type": "event_callback",
		"event_id": eventID, "event_time": time.Now().Unix(), "is_ext_shared_channel": false,
		"authorizations": []any{map[string]any{"enterprise_id": nil, "team_id": "T0FAKE", "user_id": "U0FAKEBOT", "is_bot": true, "is_enterprise_install": false}},
	})
	return b
}

// SignSlack signs body as Slack signs a callback sent at at: the headers
// X-Slack-Request-Timestamp and X-Slack-Signature (v0= and the hex
// HMAC-SHA256 of "v0:<timestamp>:<body>" under the signing secret).
func SignSlack(secret string, at time.Time, body []byte) http.Header {
	ts := strconv.FormatInt(at.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(mac, "v0:%s:%s", ts, body)
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("X-Slack-Request-Timestamp", ts)
	h.Set("X-Slack-Signature", "v0="+hex.EncodeToString(mac.Sum(nil)))
	return h
}

// gate holds requests while a test keeps it shut: a platform that does not
// answer yet.
type gate struct {
	mu      sync.Mutex
	shut    chan struct{}
	waiting atomic.Int64
}

func (g *gate) pass() {
	g.mu.Lock()
	shut := g.shut
	g.mu.Unlock()
	if shut != nil {
		g.waiting.Add(1)
		<-shut
		g.waiting.Add(-1)
	}
}

// Hold makes the fake hold every request until the returned function is
// called; Held says how many it holds.
func (s *Slack) Hold() (release func()) { return s.gate.hold() }

// Held is how many requests the fake is holding.
func (s *Slack) Held() int { return int(s.gate.waiting.Load()) }

// Hold makes the fake hold every request until the returned function is
// called.
func (w *WhatsApp) Hold() (release func()) { return w.gate.hold() }

// Held is how many requests the fake is holding.
func (w *WhatsApp) Held() int { return int(w.gate.waiting.Load()) }

func (g *gate) hold() func() {
	g.mu.Lock()
	defer g.mu.Unlock()
	shut := make(chan struct{})
	g.shut = shut
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.shut == shut {
				g.shut = nil
			}
			close(shut)
		})
	}
}

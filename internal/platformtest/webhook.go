package platformtest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// WebhookReceiver is a third party's endpoint for Standard Webhooks, on
// loopback: a CRM taking message.created, or a chatbot taking
// message.received. It checks every webhook as the standard tells a
// receiver to, on its own (not with adapters/webhook): the HMAC-SHA256 of
// `{webhook-id}.{webhook-timestamp}.{raw body}` under the secret's bytes,
// one of the listed `v1,` signatures, a timestamp within 5 minutes of its
// own clock. A webhook that fails is answered 401 and kept, marked.
type WebhookReceiver struct {
	srv *httptest.Server
	key []byte

	mu       sync.Mutex
	hooks    []Webhook
	script   []WebhookAnswer
	answer   func(Webhook) WebhookAnswer
	inFlight int
	// maxInFlight is the most webhooks it was answering at once.
	maxInFlight int
	// now, when set (SetClock), stamps each webhook's At.
	now func() time.Time
}

// SetClock makes the receiver stamp each webhook it takes with now's time
// (a test's fake clock, so that when retries came can be checked).
func (w *WebhookReceiver) SetClock(now func() time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.now = now
}

// Webhook is one request the receiver took.
type Webhook struct {
	ID, Timestamp, Signature string
	Body                     []byte
	// Event is the body decoded.
	Event map[string]any
	// Refused says why the receiver refused its signature ("" for none).
	Refused string
	// At is when it came, on the clock SetClock gave (zero without one).
	At time.Time
}

// WebhookAnswer is how the receiver answers a webhook: Status (default
// 200), a Retry-After header when set, and a JSON body when set.
type WebhookAnswer struct {
	Status     int
	RetryAfter string
	// Location, with a 3xx Status, is where the receiver redirects.
	Location string
	Body     any
}

// NewWebhookReceiver receives webhooks signed with secret (whsec_<base64>).
func NewWebhookReceiver(secret string) *WebhookReceiver {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		panic(err)
	}
	w := &WebhookReceiver{key: key}
	w.srv = httptest.NewServer(http.HandlerFunc(w.serve))
	return w
}

func (w *WebhookReceiver) URL() string { return w.srv.URL + "/hooks" }
func (w *WebhookReceiver) Close()      { w.srv.Close() }

// Then scripts the next answers, in order; after them, Answer's, or 200.
func (w *WebhookReceiver) Then(answers ...WebhookAnswer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.script = append(w.script, answers...)
}

// Answer sets how webhooks past the script are answered. fn runs while
// the request is open.
func (w *WebhookReceiver) Answer(fn func(Webhook) WebhookAnswer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.answer = fn
}

// Hooks are the webhooks received so far, in order.
func (w *WebhookReceiver) Hooks() []Webhook {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Webhook(nil), w.hooks...)
}

// MaxInFlight is the most webhooks the receiver was answering at once.
func (w *WebhookReceiver) MaxInFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.maxInFlight
}

func (w *WebhookReceiver) serve(rw http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h := Webhook{ID: r.Header.Get("webhook-id"), Timestamp: r.Header.Get("webhook-timestamp"),
		Signature: r.Header.Get("webhook-signature"), Body: body, Refused: w.check(r, body)}
	_ = json.Unmarshal(body, &h.Event)
	w.mu.Lock()
	if w.now != nil {
		h.At = w.now()
	}
	w.hooks = append(w.hooks, h)
	w.inFlight++
	w.maxInFlight = max(w.maxInFlight, w.inFlight)
	a, answer := WebhookAnswer{}, w.answer
	if len(w.script) > 0 {
		a, w.script, answer = w.script[0], w.script[1:], nil
	}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.inFlight--
		w.mu.Unlock()
	}()
	if h.Refused != "" {
		http.Error(rw, h.Refused, http.StatusUnauthorized)
		return
	}
	if answer != nil {
		a = answer(h)
	}
	if a.RetryAfter != "" {
		rw.Header().Set("Retry-After", a.RetryAfter)
	}
	if a.Location != "" {
		rw.Header().Set("Location", a.Location)
	}
	if a.Status == 0 {
		a.Status = http.StatusOK
	}
	if a.Body == nil {
		rw.WriteHeader(a.Status)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(a.Status)
	_ = json.NewEncoder(rw).Encode(a.Body)
}

// check verifies a webhook as a receiver must, and says what is wrong.
func (w *WebhookReceiver) check(r *http.Request, body []byte) string {
	id, ts, sigs := r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return "missing headers"
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "bad timestamp"
	}
	if d := time.Since(time.Unix(sec, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return "stale timestamp"
	}
	mac := hmac.New(sha256.New, w.key)
	mac.Write([]byte(id + "." + ts + "." + string(body)))
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	for _, s := range strings.Split(sigs, " ") {
		if hmac.Equal([]byte(s), []byte(want)) {
			return ""
		}
	}
	return "bad signature"
}

// SignWebhook signs body as a Standard Webhooks sender does, with id, sent
// at at, under secret (whsec_<base64>).
func SignWebhook(secret, id string, at time.Time, body []byte) http.Header {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		panic(err)
	}
	ts := strconv.FormatInt(at.Unix(), 10)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "." + string(body)))
	return http.Header{"Webhook-Id": {id}, "Webhook-Timestamp": {ts},
		"Webhook-Signature": {"v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))}, "Content-Type": {"application/json"}}
}

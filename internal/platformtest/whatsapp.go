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
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// WhatsApp is a fake of the WhatsApp Cloud API (Graph API v21.0): the
// messages endpoint of one phone number.
type WhatsApp struct {
	srv           *httptest.Server
	token         string
	phoneNumberID string
	// Latency is added before every answer.
	Latency time.Duration
	gate    gate

	mu     sync.Mutex
	sends  []WhatsAppSend
	script []WhatsAppAnswer
	onSend func(*http.Request, WhatsAppSend)
	seq    atomic.Int64
	// now, when set, holds customers to the 24-hour window: wrote is
	// when each (by wa_id) last wrote.
	now   func() time.Time
	wrote map[string]time.Time
}

// WhatsAppSend is a message the fake was asked to send, as the Graph API
// takes it.
type WhatsAppSend struct {
	Token string
	// Body is the request's JSON as decoded.
	Body map[string]any
	To   string
	Text string
	ID   string // the wamid answered, if accepted
}

// WhatsAppAnswer is how the fake answers a send: Code 0 accepts it; else a
// Graph error with that code, on HTTP Status (default 400).
type WhatsAppAnswer struct {
	Status  int
	Code    int
	Title   string
	Details string
}

// Graph errors as Meta answers them.
var (
	WhatsAppWindowClosed = WhatsAppAnswer{Code: 131047, Title: "Re-engagement message",
		Details: "More than 24 hours have passed since the recipient last replied to the sender number."}
	WhatsAppUndeliverable = WhatsAppAnswer{Code: 131026, Title: "Message undeliverable"}
	WhatsAppDown          = WhatsAppAnswer{Status: http.StatusInternalServerError, Code: 131000, Title: "Something went wrong"}
)

// NewWhatsApp starts a fake for phoneNumberID that accepts token, on a
// free loopback port. Close it.
func NewWhatsApp(token, phoneNumberID string) *WhatsApp {
	w := &WhatsApp{token: token, phoneNumberID: phoneNumberID}
	w.srv = httptest.NewServer(http.HandlerFunc(w.serve))
	return w
}

// NewWhatsAppOn starts the fake on l.
func NewWhatsAppOn(l net.Listener, token, phoneNumberID string) *WhatsApp {
	w := &WhatsApp{token: token, phoneNumberID: phoneNumberID}
	w.srv = httptest.NewUnstartedServer(http.HandlerFunc(w.serve))
	w.srv.Listener.Close()
	w.srv.Listener = l
	w.srv.Start()
	return w
}

// OnSend, when set, is told of each send as the fake reads it.
func (w *WhatsApp) OnSend(fn func(r *http.Request, s WhatsAppSend)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.onSend = fn
}

// EnforceWindow makes the fake hold customers to Meta's 24-hour
// customer-service window, on the clock now: free text to a customer who
// has not written (Message) within the 24 hours before now is refused with
// 131047, as Meta refuses it.
func (w *WhatsApp) EnforceWindow(now func() time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.now = now
}

// Message is the webhook notification of a customer's text, as Meta sends
// it (WhatsAppMessage); to the fake, the customer wrote at its clock's now,
// which opens their window.
func (w *WhatsApp) Message(id, from, text string) []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	at := time.Now()
	if w.now != nil {
		at = w.now()
	}
	if w.wrote == nil {
		w.wrote = map[string]time.Time{}
	}
	w.wrote[from] = at
	return whatsAppMessage(w.phoneNumberID, id, from, text, at)
}

// windowClosed reports whether free text to wa_id to is outside its
// window, when the fake keeps windows. Called with mu held.
func (w *WhatsApp) windowClosed(to string) bool {
	if w.now == nil {
		return false
	}
	last, ok := w.wrote[to]
	return !ok || !w.now().Before(last.Add(24*time.Hour))
}

// URL is the API URL to configure (whatsapp's api_url).
func (w *WhatsApp) URL() string { return w.srv.URL + "/v21.0/" }

func (w *WhatsApp) Close() { w.srv.Close() }

// Then queues how the next sends are answered, in order.
func (w *WhatsApp) Then(answers ...WhatsAppAnswer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.script = append(w.script, answers...)
}

// Sends returns the sends so far.
func (w *WhatsApp) Sends() []WhatsAppSend {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]WhatsAppSend(nil), w.sends...)
}

func (w *WhatsApp) serve(rw http.ResponseWriter, r *http.Request) {
	w.gate.pass()
	if w.Latency > 0 {
		time.Sleep(w.Latency) // the platform's own latency, simulated
	}
	if r.Method != http.MethodPost || r.URL.Path != "/v21.0/"+w.phoneNumberID+"/messages" {
		graphError(rw, http.StatusBadRequest, 100, "Unsupported post request.", "")
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token != w.token {
		graphError(rw, http.StatusUnauthorized, 190, "Invalid OAuth access token - Cannot parse access token", "")
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		graphError(rw, http.StatusBadRequest, 100, "Invalid parameter", "the body is not JSON")
		return
	}
	s := WhatsAppSend{Token: token, Body: body}
	s.To, _ = body["to"].(string)
	if text, ok := body["text"].(map[string]any); ok {
		s.Text, _ = text["body"].(string)
	}
	var a WhatsAppAnswer
	w.mu.Lock()
	if len(w.script) > 0 {
		a, w.script = w.script[0], w.script[1:]
	}
	switch {
	case a.Code != 0:
	case body["messaging_product"] != "whatsapp" || body["recipient_type"] != "individual" || s.To == "":
		a = WhatsAppAnswer{Code: 100, Title: "Invalid parameter", Details: "messaging_product and to are required"}
	case body["type"] == "text" && s.Text == "":
		a = WhatsAppAnswer{Code: 100, Title: "Invalid parameter", Details: "text.body is required"}
	case body["type"] == "text" && w.windowClosed(s.To):
		a = WhatsAppWindowClosed
	default:
		s.ID = fmt.Sprintf("wamid.FAKE%020d", w.seq.Add(1))
	}
	w.sends = append(w.sends, s)
	if w.onSend != nil {
		w.onSend(r, s)
	}
	w.mu.Unlock()
	if a.Code != 0 {
		status := a.Status
		if status == 0 {
			status = http.StatusBadRequest
		}
		graphError(rw, status, a.Code, a.Title, a.Details)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(map[string]any{
		"messaging_product": "whatsapp",
		"contacts":          []any{map[string]any{"input": s.To, "wa_id": strings.TrimPrefix(s.To, "+")}},
		"messages":          []any{map[string]any{"id": s.ID}},
	})
}

func graphError(w http.ResponseWriter, status, code int, title, details string) {
	e := map[string]any{"message": fmt.Sprintf("(#%d) %s", code, title), "type": "OAuthException", "code": code,
		"fbtrace_id": "AbCdEfGhIjKlMnOp"}
	if details != "" {
		e["error_data"] = map[string]any{"messaging_product": "whatsapp", "details": details}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": e})
}

// WhatsAppMessage is a webhook notification carrying one inbound text
// message, as Meta sends it.
func WhatsAppMessage(phoneNumberID, id, from, text string) []byte {
	return whatsAppMessage(phoneNumberID, id, from, text, time.Now())
}

func whatsAppMessage(phoneNumberID, id, from, text string, at time.Time) []byte {
	return whatsAppNotification(phoneNumberID, map[string]any{
		"contacts": []any{map[string]any{"profile": map[string]any{"name": "Ada"}, "wa_id": from}},
		"messages": []any{map[string]any{"from": from, "id": id, "timestamp": fmt.Sprint(at.Unix()),
			"type": "text", "text": map[string]any{"body": text}}},
	})
}

// WhatsAppStatus is a webhook notification carrying one status of a sent
// message: sent, delivered, read or failed (with errorCode).
func WhatsAppStatus(phoneNumberID, wamid, status, recipient string, at time.Time, errorCode int) []byte {
	st := map[string]any{"id": wamid, "status": status, "timestamp": fmt.Sprint(at.Unix()), "recipient_id": recipient}
	if errorCode != 0 {
		st["errors"] = []any{map[string]any{"code": errorCode, "title": "Re-engagement message", "message": "Re-engagement message",
			"error_data": map[string]any{"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."}}}
	}
	return whatsAppNotification(phoneNumberID, map[string]any{"statuses": []any{st}})
}

func whatsAppNotification(phoneNumberID string, value map[string]any) []byte {
	value["messaging_product"] = "whatsapp"
	value["metadata"] = map[string]any{"display_phone_number": "15550783881", "phone_number_id": phoneNumberID}
	b, _ := json.Marshal(map[string]any{"object": "whatsapp_business_account", "entry": []any{map[string]any{
		"id": "102290129340398", "changes": []any{map[string]any{"value": value, "field": "messages"}},
	}}})
	return b
}

// SignWhatsApp is the X-Hub-Signature-256 header Meta sends with body:
// sha256= and the hex HMAC-SHA256 of the raw body under the app secret.
func SignWhatsApp(appSecret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(appSecret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

package platformtest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
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
	// approved are the templates the number may send: how many body
	// parameters each (name and language) takes.
	approved map[[2]string]int
}

// WhatsAppSend is a message the fake was asked to send, as the Graph API
// takes it.
type WhatsAppSend struct {
	Token string
	// Raw is the request's body as it came; Body its JSON as decoded.
	Raw  []byte
	Body map[string]any
	To   string
	Text string
	// Template is a template message's template, as read from the body.
	Template *WhatsAppTemplate
	ID       string // the wamid answered, if accepted
}

// WhatsAppTemplate is a template message's template.name,
// template.language.code and its body component's text parameters.
type WhatsAppTemplate struct {
	Name       string
	Language   string
	Parameters []string
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
	at := time.Now()
	if w.now != nil {
		at = w.now()
	}
	w.mu.Unlock()
	return w.MessageSentAt(id, from, text, at)
}

// MessageSentAt is Message for a text the customer sent at at, by Meta's
// clock, and Meta delivers only now (it retries a webhook for hours): the
// customer's window runs from at.
func (w *WhatsApp) MessageSentAt(id, from, text string, at time.Time) []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.wrote == nil {
		w.wrote = map[string]time.Time{}
	}
	if at.After(w.wrote[from]) { // a late, older message leaves the window as it was
		w.wrote[from] = at
	}
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

// Approve makes a template one the number may send, in language, with
// params body parameters; any other is refused as Meta refuses it.
func (w *WhatsApp) Approve(name, language string, params int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.approved == nil {
		w.approved = map[[2]string]int{}
	}
	w.approved[[2]string{name, language}] = params
}

// readTemplate reads a template message's template as Meta does, or says
// what Meta would answer instead. Called with mu held.
func (w *WhatsApp) readTemplate(body map[string]any) (*WhatsAppTemplate, WhatsAppAnswer) {
	invalid := func(details string) (*WhatsAppTemplate, WhatsAppAnswer) {
		return nil, WhatsAppAnswer{Code: 100, Title: "Invalid parameter", Details: details}
	}
	tpl, ok := body["template"].(map[string]any)
	if !ok {
		return invalid("template is required for a template message")
	}
	t := &WhatsAppTemplate{}
	t.Name, _ = tpl["name"].(string)
	lang, _ := tpl["language"].(map[string]any)
	t.Language, _ = lang["code"].(string)
	if t.Name == "" || t.Language == "" {
		return invalid("template.name and template.language.code are required")
	}
	comps, _ := tpl["components"].([]any)
	for _, c := range comps {
		comp, _ := c.(map[string]any)
		if comp["type"] != "body" {
			return invalid(fmt.Sprintf("a component of type %v; this fake knows body components only", comp["type"]))
		}
		params, ok := comp["parameters"].([]any)
		if !ok {
			return invalid("components[].parameters is required")
		}
		for _, p := range params {
			param, _ := p.(map[string]any)
			text, _ := param["text"].(string)
			if param["type"] != "text" || text == "" {
				return invalid("each parameter must be {\"type\":\"text\",\"text\":…} with a text")
			}
			if strings.ContainsAny(text, "\n\t") || strings.Contains(text, "     ") {
				return nil, WhatsAppAnswer{Code: 132018, Title: "There was an issue with the parameters in your template.",
					Details: "Param text cannot have new-line/tab characters or more than 4 consecutive spaces"}
			}
			t.Parameters = append(t.Parameters, text)
		}
	}
	want, ok := w.approved[[2]string{t.Name, t.Language}]
	switch {
	case !ok:
		return t, WhatsAppAnswer{Code: 132001, Title: "Template name does not exist in the translation",
			Details: fmt.Sprintf("template name (%s) does not exist in %s", t.Name, t.Language)}
	case want != len(t.Parameters):
		return t, WhatsAppAnswer{Code: 132000, Title: "Number of parameters does not match the expected number of params",
			Details: fmt.Sprintf("body: number of localizable_params (%d) does not match the expected number of params (%d)", len(t.Parameters), want)}
	}
	return t, WhatsAppAnswer{}
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
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var body map[string]any
	if err != nil || json.Unmarshal(raw, &body) != nil {
		graphError(rw, http.StatusBadRequest, 100, "Invalid parameter", "the body is not JSON")
		return
	}
	s := WhatsAppSend{Token: token, Raw: raw, Body: body}
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
	case body["type"] == "template":
		s.Template, a = w.readTemplate(body)
	case body["type"] != "text":
		a = WhatsAppAnswer{Code: 100, Title: "Invalid parameter", Details: fmt.Sprintf("this fake sends text and template messages, not %v", body["type"])}
	}
	if a.Code == 0 {
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
// message, sent at at, as Meta sends it.
func WhatsAppMessage(phoneNumberID, id, from, text string, at time.Time) []byte {
	return whatsAppMessage(phoneNumberID, id, from, text, at)
}

func whatsAppMessage(phoneNumberID, id, from, text string, at time.Time) []byte {
	return WhatsAppInbound(phoneNumberID, id, from, at, "text", map[string]any{"body": text})
}

// WhatsAppInbound is a webhook notification carrying one inbound message
// of type kind ("button", "interactive", "image", …), whose object of that
// name is body, as Meta sends it.
func WhatsAppInbound(phoneNumberID, id, from string, at time.Time, kind string, body map[string]any) []byte {
	return whatsAppNotification(phoneNumberID, map[string]any{
		"contacts": []any{map[string]any{"profile": map[string]any{"name": "Ada"}, "wa_id": from}},
		"messages": []any{map[string]any{"from": from, "id": id, "timestamp": fmt.Sprint(at.Unix()),
			"type": kind, kind: body}},
	})
}

// WhatsAppStatus is a webhook notification carrying one status of a sent
// message: sent, delivered, read or failed (with errorCode).
func WhatsAppStatus(phoneNumberID, wamid, status, recipient string, at time.Time, errorCode int) []byte {
	st := map[string]any{"id": wamid, "status": status, "timestamp": fmt.Sprint(at.Unix()), "recipient_id": recipient}
	if errorCode != 0 {
		e, ok := statusErrors[errorCode]
		if !ok {
			e = [2]string{"Something went wrong", "Message failed to send."}
		}
		st["errors"] = []any{map[string]any{"code": errorCode, "title": e[0], "message": e[0],
			"error_data": map[string]any{"details": e[1]}}}
	}
	return whatsAppNotification(phoneNumberID, map[string]any{"statuses": []any{st}})
}

// statusErrors are the title and details Meta gives a failed status's
// error, by code.
var statusErrors = map[int][2]string{
	131047: {"Re-engagement message", "Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
	131026: {"Message undeliverable", "Unable to deliver message. Reasons can include: The recipient phone number is not a WhatsApp phone number."},
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

// Package whatsapp is the WhatsApp Cloud API adapter (docs/design.md §9):
// outbound through the Graph API's messages endpoint, inbound through the
// webhook at /hooks/whatsapp/<name>. The API surface is one POST, so the
// client is written here on net/http.
package whatsapp

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/store"
)

// DefaultAPIURL is Meta's Graph API, at the version this adapter speaks.
const DefaultAPIURL = "https://graph.facebook.com/v21.0/"

// Config is one WhatsApp business phone number.
type Config struct {
	// Name is the number's name: its webhook is /hooks/whatsapp/<name>.
	Name   string
	Tenant string
	// PhoneNumberID is the number's id in the Graph API, and its sessions'
	// channel.
	PhoneNumberID string
	// AccessToken calls the Graph API; AppSecret signs webhooks;
	// VerifyToken answers Meta's webhook verification.
	AccessToken string
	AppSecret   string
	VerifyToken string
	// APIURL is the Graph API; default DefaultAPIURL.
	APIURL     string
	HTTPClient *http.Client
	Logger     *slog.Logger
}

// Adapter is a WhatsApp business number.
type Adapter struct {
	cfg Config
	url string // the messages endpoint
	// app are the numbers of the same Meta app (Link), by phone number
	// id, this one included: Meta sends every number's webhooks to the
	// app's one callback URL.
	app map[string]*Adapter
}

// Link makes the numbers of each Meta app (those sharing an app secret)
// take each other's webhooks, whichever number's callback URL the app
// has. Call it once, with every number configured, before serving.
func Link(numbers ...*Adapter) {
	apps := map[string]map[string]*Adapter{}
	for _, a := range numbers {
		if apps[a.cfg.AppSecret] == nil {
			apps[a.cfg.AppSecret] = map[string]*Adapter{}
		}
		apps[a.cfg.AppSecret][a.cfg.PhoneNumberID] = a
		a.app = apps[a.cfg.AppSecret]
	}
}

var _ adapters.Adapter = (*Adapter)(nil)

// New checks c and returns its Adapter.
func New(c Config) (*Adapter, error) {
	switch {
	case c.Name == "":
		return nil, errors.New("whatsapp: name is required")
	case c.PhoneNumberID == "":
		return nil, fmt.Errorf("whatsapp %s: phone_number_id is required", c.Name)
	case strings.Trim(c.PhoneNumberID, "0123456789") != "":
		return nil, fmt.Errorf("whatsapp %s: phone_number_id must be digits", c.Name)
	case c.AccessToken == "" || c.AppSecret == "" || c.VerifyToken == "":
		return nil, fmt.Errorf("whatsapp %s: the access token, app secret and verify token are required", c.Name)
	}
	if c.Tenant == "" {
		c.Tenant = "default"
	}
	if c.APIURL == "" {
		c.APIURL = DefaultAPIURL
	}
	if !strings.HasSuffix(c.APIURL, "/") {
		c.APIURL += "/"
	}
	if c.HTTPClient == nil {
		c.HTTPClient = adapters.Client(nil)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	a := &Adapter{cfg: c, url: c.APIURL + c.PhoneNumberID + "/messages"}
	a.app = map[string]*Adapter{c.PhoneNumberID: a}
	return a, nil
}

func (a *Adapter) Platform() string { return "whatsapp" }
func (a *Adapter) Name() string     { return a.cfg.Name }
func (a *Adapter) Tenant() string   { return a.cfg.Tenant }

// Delivers the sessions of its own number.
func (a *Adapter) Delivers(channel string) bool { return channel == a.cfg.PhoneNumberID }

func (a *Adapter) Retry(attempt int) (time.Duration, bool) {
	return adapters.PlatformSchedule.Retry(attempt)
}

// message is the Graph API's body for a message: text, or a template.
type message struct {
	MessagingProduct string        `json:"messaging_product"`
	RecipientType    string        `json:"recipient_type"`
	To               string        `json:"to"`
	Type             string        `json:"type"`
	Text             *textBody     `json:"text,omitempty"`
	Template         *templateBody `json:"template,omitempty"`
}

type textBody struct {
	Body string `json:"body"`
}

type templateBody struct {
	Name       string      `json:"name"`
	Language   language    `json:"language"`
	Components []component `json:"components,omitempty"`
}

type language struct {
	Code string `json:"code"`
}

// component is a part of a template filled in: here only the body, with
// its text parameters in order.
type component struct {
	Type       string      `json:"type"`
	Parameters []parameter `json:"parameters"`
}

type parameter struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// graphMessage is the Graph API's body for out: its template when it has one,
// else its text.
func graphMessage(out *adapters.Outbound) message {
	m := message{MessagingProduct: "whatsapp", RecipientType: "individual", To: strings.TrimPrefix(out.User, "+")}
	t := out.Template
	if t == nil {
		m.Type, m.Text = "text", &textBody{Body: out.Text}
		return m
	}
	m.Type, m.Template = "template", &templateBody{Name: t.Name, Language: language{Code: t.Language}}
	if len(t.Parameters) > 0 {
		ps := make([]parameter, len(t.Parameters))
		for i, p := range t.Parameters {
			ps[i] = parameter{Type: "text", Text: p}
		}
		m.Template.Components = []component{{Type: "body", Parameters: ps}}
	}
	return m
}

// sendResponse is the Graph API's answer: the message's id, or an error.
type sendResponse struct {
	Messages []struct {
		ID string `json:"id"`
	} `json:"messages"`
	Error *graphError `json:"error"`
}

type graphError struct {
	Message   string `json:"message"`
	Type      string `json:"type"`
	Code      int    `json:"code"`
	ErrorData struct {
		Details string `json:"details"`
	} `json:"error_data"`
	FBTraceID string `json:"fbtrace_id"`
}

// transientCodes are Graph errors that say "not now" rather than "no":
// unknown errors, outages, and rate limits (4: the app's calls, 80007: the
// business account's, 130429: the number's throughput). Everything else
// is a refusal, unless Meta answered it with an HTTP 5xx.
var transientCodes = map[int]bool{1: true, 2: true, 4: true, 80007: true, 130429: true, 131000: true, 131016: true, 131057: true}

// pairRateCode is Meta's "too many messages to this customer" (about one
// per 6 s to one number): retried after pairPause.
const (
	pairRateCode = 131056
	pairPause    = 6 * time.Second
)

// Send posts out to the session's user, as a text message or as its
// template. Accepted is SENT: delivery and reading come later, as
// receipts.
func (a *Adapter) Send(ctx context.Context, out *adapters.Outbound) (adapters.Result, error) {
	b, err := json.Marshal(graphMessage(out))
	if err != nil {
		return adapters.Result{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url, bytes.NewReader(b))
	if err != nil {
		return adapters.Result{}, err
	}
	req.Header.Set("Authorization", "Bearer "+a.cfg.AccessToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.cfg.HTTPClient.Do(req)
	if err != nil {
		return adapters.Result{}, fmt.Errorf("whatsapp: send: %w", err)
	}
	defer resp.Body.Close()
	var r sendResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&r); err != nil {
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			return adapters.Result{}, fmt.Errorf("whatsapp: send: HTTP %d", resp.StatusCode)
		}
		return adapters.Result{}, fmt.Errorf("whatsapp: send: HTTP %d with an unreadable answer: %w", resp.StatusCode, err)
	}
	switch {
	case r.Error != nil && r.Error.Code == pairRateCode:
		return adapters.Result{}, &adapters.RetryAfter{Wait: pairPause, Err: fmt.Errorf("whatsapp: send: error %d: %s", r.Error.Code, r.Error.Message)}
	case r.Error != nil && (transientCodes[r.Error.Code] || resp.StatusCode >= 500):
		return adapters.Result{}, fmt.Errorf("whatsapp: send: error %d: %s", r.Error.Code, r.Error.Message)
	case r.Error != nil:
		msg := r.Error.Message
		if r.Error.ErrorData.Details != "" {
			msg += ": " + r.Error.ErrorData.Details
		}
		return adapters.Refused(strconv.Itoa(r.Error.Code), msg), nil
	case resp.StatusCode == http.StatusOK && len(r.Messages) > 0 && r.Messages[0].ID != "":
		return adapters.Accepted(store.StatusSent, r.Messages[0].ID), nil
	}
	return adapters.Result{}, fmt.Errorf("whatsapp: send: HTTP %d without a message id", resp.StatusCode)
}

// maxWebhookBytes bounds a webhook's body; Meta's are up to 3 MB.
const maxWebhookBytes = 3 << 20

// Handler serves the webhook: Meta's verification (GET), and
// notifications (POST), signed with the app secret. Text messages to this
// number are ingested (keyed by their id, so Meta's redeliveries are taken
// once), and statuses are applied to the messages they name.
func (a *Adapter) Handler(hub adapters.Hub) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			a.verifyWebhook(w, r)
		case http.MethodPost:
			a.notification(w, r, hub)
		default:
			w.Header().Set("Allow", "GET, POST")
			adapters.Answer(w, http.StatusMethodNotAllowed, "GET or POST")
		}
	})
}

// verifyWebhook answers Meta's subscription check with its challenge.
func (a *Adapter) verifyWebhook(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("hub.mode") != "subscribe" || subtle.ConstantTimeCompare([]byte(q.Get("hub.verify_token")), []byte(a.cfg.VerifyToken)) != 1 {
		adapters.Answer(w, http.StatusForbidden, "verification failed")
		return
	}
	adapters.Answer(w, http.StatusOK, q.Get("hub.challenge"))
}

// notification is a webhook's body, what of it the hub reads.
type notification struct {
	Entry []struct {
		Changes []struct {
			Field string      `json:"field"`
			Value changeValue `json:"value"`
		} `json:"changes"`
	} `json:"entry"`
}

// changeValue is what a change of field "messages" carries, for one
// number.
type changeValue struct {
	Metadata struct {
		PhoneNumberID string `json:"phone_number_id"`
	} `json:"metadata"`
	Messages []json.RawMessage `json:"messages"`
	Statuses []status          `json:"statuses"`
}

type inboundMessage struct {
	From      string `json:"from"`
	ID        string `json:"id"`
	Timestamp string `json:"timestamp"`
	Type      string `json:"type"`
	Text      struct {
		Body string `json:"body"`
	} `json:"text"`
	// A tap on a template's quick-reply button.
	Button struct {
		Text string `json:"text"`
	} `json:"button"`
	// A tap on an interactive message's reply button or list row.
	Interactive struct {
		ButtonReply struct {
			Title string `json:"title"`
		} `json:"button_reply"`
		ListReply struct {
			Title string `json:"title"`
		} `json:"list_reply"`
	} `json:"interactive"`
	Image, Video, Document caption
	Reaction               struct {
		Emoji string `json:"emoji"`
	} `json:"reaction"`
}

type caption struct {
	Caption string `json:"caption"`
}

// said is what the customer said, as text, for the types a customer sends
// (their raw object, kept with the message, has the rest: a media id to
// fetch, a location's coordinates, the message a reaction is to): each
// opens Meta's window as text does. Other types (system notices, ones Meta
// does not support) are not the customer's messages.
func (m *inboundMessage) said() (string, bool) {
	switch m.Type {
	case "text":
		return m.Text.Body, true
	case "button":
		return m.Button.Text, true
	case "interactive":
		return m.Interactive.ButtonReply.Title + m.Interactive.ListReply.Title, true
	case "image":
		return m.Image.Caption, true
	case "video":
		return m.Video.Caption, true
	case "document":
		return m.Document.Caption, true
	case "reaction":
		return m.Reaction.Emoji, m.Reaction.Emoji != "" // "": a reaction taken back
	case "audio", "sticker", "location", "contacts", "order":
		return "", true
	}
	return "", false
}

type status struct {
	ID        string `json:"id"`
	Status    string `json:"status"`
	Timestamp string `json:"timestamp"`
	Errors    []struct {
		Code      int    `json:"code"`
		Title     string `json:"title"`
		Message   string `json:"message"`
		ErrorData struct {
			Details string `json:"details"`
		} `json:"error_data"`
	} `json:"errors"`
}

var receiptStatus = map[string]store.MessageStatus{
	"sent": store.StatusSent, "delivered": store.StatusDelivered, "read": store.StatusRead, "failed": store.StatusFailed,
}

func (a *Adapter) notification(w http.ResponseWriter, r *http.Request, hub adapters.Hub) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxWebhookBytes+1))
	if err != nil || len(body) > maxWebhookBytes {
		adapters.Answer(w, http.StatusBadRequest, "unreadable body")
		return
	}
	if !a.signed(r.Header.Get("X-Hub-Signature-256"), body) {
		a.cfg.Logger.Warn("whatsapp: webhook refused: bad signature", "account", a.cfg.Name)
		hub.Refused("whatsapp", adapters.BadSignature)
		adapters.Answer(w, http.StatusUnauthorized, "bad signature")
		return
	}
	var n notification
	if err := json.Unmarshal(body, &n); err != nil {
		a.cfg.Logger.Debug("whatsapp: unreadable webhook", "account", a.cfg.Name, "err", err)
		adapters.Answer(w, http.StatusOK, "ignored")
		return
	}
	var failed error
	for _, e := range n.Entry {
		for _, c := range e.Changes {
			if c.Field != "messages" {
				continue
			}
			number := a.app[c.Value.Metadata.PhoneNumberID]
			if number == nil {
				a.cfg.Logger.Warn("whatsapp: a webhook for a number not configured with this app's secret",
					"account", a.cfg.Name, "phone_number_id", c.Value.Metadata.PhoneNumberID)
				continue
			}
			failed = firstRetry(failed, number.take(r.Context(), &c.Value, hub))
		}
	}
	adapters.IngestAnswer(w, failed)
}

// take hands what a notification's change for this number carries to the
// hub: its messages and its statuses. It answers the first error worth a
// retry, having tried them all.
func (a *Adapter) take(ctx context.Context, v *changeValue, hub adapters.Hub) error {
	var failed error
	for _, raw := range v.Messages {
		var m inboundMessage
		if json.Unmarshal(raw, &m) != nil || m.From == "" {
			hub.Refused("whatsapp", adapters.Ignored)
			continue
		}
		text, ok := m.said()
		if !ok {
			hub.Refused("whatsapp", adapters.Ignored)
			continue
		}
		err := hub.Ingest(ctx, &adapters.Inbound{Tenant: a.cfg.Tenant, Platform: "whatsapp",
			Channel: a.cfg.PhoneNumberID, User: "+" + m.From, Text: text, Raw: raw, Key: m.ID, SentAt: sentAt(m.Timestamp)})
		failed = firstRetry(failed, err)
	}
	for _, s := range v.Statuses {
		st, ok := receiptStatus[s.Status]
		if !ok || s.ID == "" {
			continue
		}
		rc := store.Receipt{Tenant: a.cfg.Tenant, Platform: "whatsapp", PlatformID: s.ID, Status: st, At: receiptTime(s.Timestamp)}
		if len(s.Errors) > 0 {
			e := s.Errors[0]
			msg := e.Title
			if e.ErrorData.Details != "" {
				msg += ": " + e.ErrorData.Details
			}
			rc.Error = &store.PlatformError{Code: strconv.Itoa(e.Code), Message: msg}
		}
		failed = firstRetry(failed, hub.Receipt(ctx, rc))
	}
	return failed
}

// firstRetry keeps the first error worth a retry.
func firstRetry(first, err error) error {
	if first == nil && errors.Is(err, adapters.ErrRetry) {
		return err
	}
	return first
}

// sentAt is a message's timestamp, zero when it has none that reads.
func sentAt(s string) time.Time {
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil || sec <= 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

// receiptTime is a status's timestamp, now when it has none that reads.
func receiptTime(s string) time.Time {
	if t := sentAt(s); !t.IsZero() {
		return t
	}
	return time.Now()
}

// signed checks X-Hub-Signature-256: sha256= and the hex HMAC-SHA256 of the
// raw body under the app secret.
func (a *Adapter) signed(header string, body []byte) bool {
	got, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	sig, err := hex.DecodeString(got)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(a.cfg.AppSecret))
	mac.Write(body)
	return hmac.Equal(sig, mac.Sum(nil))
}

// Package webhook is the generic webhook platform (docs/design.md §9), on
// the Standard Webhooks scheme (https://www.standardwebhooks.com): any
// system that is not Slack or WhatsApp (a CRM, a helpdesk, an in-house
// app) exchanges a session's messages with the hub over signed HTTP.
// Outbound, each message is POSTed to the integration's URL as
// `message.created`; inbound, POST /hooks/webhook/<name> takes the
// integration's users' messages. The same signing carries a session's
// inbound messages to a running chatbot's webhook (Bot, docs/design.md
// §9).
//
// The signer and verifier are written here (sign.go): the Go module of
// the standard is at v0.0.1, and signs with an empty secret.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/store"
)

// Schedule is when a webhook is tried again after each failed attempt:
// Standard Webhooks' schedule after the first, immediate attempt (jitter
// is the caller's). With it spent, the delivery fails.
var Schedule = adapters.Schedule{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour,
	5 * time.Hour, 10 * time.Hour, 10 * time.Hour}

// maxAnswerBytes bounds what is read of a receiver's answer.
const maxAnswerBytes = 1 << 20

// Config is one integration.
type Config struct {
	// Name is the integration's name: its sessions' channel, and its
	// inbound URL /hooks/webhook/<name>.
	Name   string
	Tenant string
	// URL is where its sessions' outbound messages are delivered.
	URL string
	// Secret signs both ways: whsec_<base64>, several separated by spaces
	// while rotating.
	Secret     string
	HTTPClient *http.Client
	Logger     *slog.Logger
}

// Adapter is a webhook integration.
type Adapter struct {
	cfg Config
	out *sender
}

var _ adapters.Adapter = (*Adapter)(nil)

// New checks c and returns its Adapter.
func New(c Config) (*Adapter, error) {
	if c.Name == "" {
		return nil, errors.New("webhook: name is required")
	}
	keys, err := ParseKeys(c.Secret)
	if err != nil {
		return nil, fmt.Errorf("webhook %s: %w", c.Name, err)
	}
	if err := checkURL(c.URL); err != nil {
		return nil, fmt.Errorf("webhook %s: %w", c.Name, err)
	}
	if c.Tenant == "" {
		c.Tenant = "default"
	}
	if c.HTTPClient == nil {
		c.HTTPClient = adapters.Client(nil)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Adapter{cfg: c, out: &sender{url: c.URL, keys: keys, client: c.HTTPClient}}, nil
}

func checkURL(u string) error {
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return fmt.Errorf("url %q: an http or https URL is required", u)
	}
	return nil
}

func (a *Adapter) Platform() string { return "webhook" }
func (a *Adapter) Name() string     { return a.cfg.Name }
func (a *Adapter) Tenant() string   { return a.cfg.Tenant }

// Delivers the sessions of its own channel: its name.
func (a *Adapter) Delivers(channel string) bool { return channel == a.cfg.Name }

func (a *Adapter) Retry(attempt int) (time.Duration, bool) { return Schedule.Retry(attempt) }

// Event is the body of a webhook: what happened, and to what.
type Event struct {
	Type    string   `json:"type"`
	Session *Session `json:"session"`
	Message *Message `json:"message"`
	Contact *Contact `json:"contact,omitempty"`
}

// Session, Message and Contact are the hub's records, with the REST API's
// field names.
type Session struct {
	SessionID string            `json:"session_id"`
	Platform  string            `json:"platform"`
	Channel   string            `json:"channel"`
	User      string            `json:"user"`
	State     string            `json:"state,omitempty"`
	ChatbotID string            `json:"chatbot_id,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
}

type Message struct {
	MessageID string            `json:"message_id"`
	SessionID string            `json:"session_id"`
	Direction string            `json:"direction"`
	Text      string            `json:"text"`
	FromUser  string            `json:"from_user,omitempty"`
	Platform  string            `json:"platform"`
	Channel   string            `json:"channel"`
	CreatedAt string            `json:"created_at"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	Raw       json.RawMessage   `json:"raw,omitempty"`
}

type Contact struct {
	Platform string            `json:"platform"`
	User     string            `json:"user"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// Send delivers out as `message.created`, its webhook-id the message's id
// on every attempt, so the receiver can drop a copy. A 2xx is DELIVERED; a
// 4xx other than 408 and 429 is a refusal (FAILED, its code the HTTP
// status); anything else is tried again on Schedule, or after the
// receiver's Retry-After if that is later.
func (a *Adapter) Send(ctx context.Context, out *adapters.Outbound) (adapters.Result, error) {
	body, err := json.Marshal(Event{
		Type:    "message.created",
		Session: &Session{SessionID: out.SessionID, Platform: "webhook", Channel: out.Channel, User: out.User},
		Message: &Message{MessageID: out.MessageID, SessionID: out.SessionID, Direction: "DIRECTION_OUTBOUND", Text: out.Text,
			FromUser: out.FromUser, Platform: "webhook", Channel: out.Channel, CreatedAt: stamp(out.CreatedAt), Metadata: out.Metadata},
	})
	if err != nil {
		return adapters.Result{}, err
	}
	_, refused, err := a.out.post(ctx, out.MessageID, body)
	switch {
	case err != nil:
		return adapters.Result{}, err
	case refused != nil:
		return adapters.Result{Status: store.StatusFailed, Error: refused}, nil
	}
	return adapters.Accepted(store.StatusDelivered, ""), nil
}

// sender POSTs signed webhooks to one URL.
type sender struct {
	url    string
	keys   Keys
	client *http.Client
}

// post sends body as webhook id, signed now, and answers the receiver's
// 2xx body; or its refusal; or an error worth a retry (an
// adapters.RetryAfter when it said when).
func (s *sender) post(ctx context.Context, id string, body []byte) ([]byte, *store.PlatformError, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	s.keys.Sign(req.Header, id, time.Now(), body)
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("webhook: %w", err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes+1))
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300 && err == nil && len(answer) <= maxAnswerBytes:
		return answer, nil, nil
	case code >= 200 && code < 300:
		return nil, &store.PlatformError{Code: "bad_answer", Message: fmt.Sprintf("the answer is over %d bytes or unreadable", maxAnswerBytes)}, nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500 || code >= 300 && code < 400:
		err := fmt.Errorf("webhook: HTTP %d", code)
		if wait, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return nil, nil, &adapters.RetryAfter{Wait: wait, Err: err}
		}
		return nil, nil, err
	}
	return nil, &store.PlatformError{Code: strconv.Itoa(code), Message: refusal(code, answer)}, nil
}

// refusal describes a receiver's refusal: its status, and the start of
// its answer.
func refusal(code int, answer []byte) string {
	msg := fmt.Sprintf("HTTP %d %s", code, http.StatusText(code))
	if s := strings.TrimSpace(string(answer)); s != "" {
		if len(s) > 200 {
			s = s[:200]
		}
		msg += ": " + strings.ToValidUTF8(s, "?")
	}
	return msg
}

// retryAfter reads a Retry-After header: seconds or an HTTP date, bounded
// by adapters.MaxRetryAfter.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if secs, err := strconv.Atoi(v); err == nil {
		d = time.Duration(secs) * time.Second
	} else if at, err := http.ParseTime(v); err == nil {
		d = at.Sub(now)
	} else {
		return 0, false
	}
	return min(max(d, 0), adapters.MaxRetryAfter), true
}

// maxInboundBytes bounds an inbound webhook's body.
const maxInboundBytes = 1 << 20

// Handler serves POST /hooks/webhook/<name>: a webhook signed with the
// integration's secret, within Tolerance, whose body is IngestMessage's
// `{"from_user","text","session_id","metadata","raw"}`. It is ingested on
// the integration's channel with its webhook-id as the idempotency key,
// so a redelivery is taken once, and answered as IngestMessage answers.
func (a *Adapter) Handler(hub adapters.Hub) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			adapters.Answer(w, http.StatusMethodNotAllowed, "POST")
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxInboundBytes+1))
		if err != nil || len(body) > maxInboundBytes {
			adapters.Answer(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is over %d bytes", maxInboundBytes))
			return
		}
		id, err := a.out.keys.Verify(r.Header, body, time.Now())
		if err != nil {
			a.cfg.Logger.Warn("webhook: refused", "account", a.cfg.Name, "err", err)
			hub.Refused("webhook", adapters.BadSignature)
			adapters.Answer(w, http.StatusUnauthorized, err.Error())
			return
		}
		code, answer := hub.IngestRequest(r.Context(), &adapters.Request{Tenant: a.cfg.Tenant, Platform: "webhook",
			Channel: a.cfg.Name, Key: id, Body: body})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = w.Write(answer)
	})
}

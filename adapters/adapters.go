// Package adapters connects the hub to the chat platforms where sessions
// live (docs/design.md §9). An adapter is one configured account on a
// platform: it sends outbound messages there and reports what the platform
// said, and it serves the platform's HTTP callbacks, verifies them, and
// hands what they carry to the hub. The server consumes Adapter; one
// package per platform implements it (adapters/slack, adapters/whatsapp,
// adapters/webhook).
//
// web and api sessions need no adapter: the hub delivers their messages to
// its own watchers.
package adapters

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/telemetry"
	"github.com/chatrelay/chatrelay/store"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"
)

// Adapter is one configured account on a platform.
type Adapter interface {
	// Platform is the adapter's platform: "slack", "whatsapp", "webhook".
	Platform() string
	// Name is the account's configured name; its callbacks are served at
	// /hooks/<platform>/<name>.
	Name() string
	// Tenant owns every session the adapter delivers to and everything it
	// ingests.
	Tenant() string
	// Delivers reports whether the adapter delivers the outbound messages
	// of channel, one of its tenant's channels on its platform.
	Delivers(channel string) bool
	// Send delivers out and reports how the platform took it: SENT or
	// DELIVERED (with its id for the message), or FAILED with its refusal.
	// An error is a failure that may not last (the network, the platform
	// unwell): the delivery is tried again, as Retry says, or later if the
	// error is a RetryAfter.
	Send(ctx context.Context, out *Outbound) (Result, error)
	// Retry says how long to wait after failed attempt n (1, 2, …) before
	// the next, or false when there is to be none: the message then fails.
	Retry(attempt int) (time.Duration, bool)
	// Handler serves the platform's callbacks, feeding hub.
	Handler(hub Hub) http.Handler
}

// Outbound is a message on its way to a platform.
type Outbound struct {
	Tenant    string
	SessionID string
	MessageID string
	// Channel is the session's channel id on the platform (a Slack
	// channel, a WhatsApp phone number id).
	Channel string
	// User is the session's user: the recipient on WhatsApp.
	User     string
	Text     string
	Metadata map[string]string
	// Template, when set, is the WhatsApp template the message goes as
	// instead of Text.
	Template *store.Template
	// Thread, when set, is the thread it goes to (a Slack thread_ts).
	Thread string
	// FromUser is who on the tenant's side said it (a chatbot's id), if
	// anyone; CreatedAt is when it was recorded.
	FromUser  string
	CreatedAt time.Time
}

// Result is how a platform took a message.
type Result struct {
	Status     store.MessageStatus
	PlatformID string
	Error      *store.PlatformError
}

// Accepted is the Result of a message the platform took with id.
func Accepted(status store.MessageStatus, id string) Result {
	return Result{Status: status, PlatformID: id}
}

// Refused is the Result of a message the platform refused.
func Refused(code, msg string) Result {
	return Result{Status: store.StatusFailed, Error: &store.PlatformError{Code: code, Message: msg}}
}

// Hub is the hub as an adapter sees it: where what the platform sends
// goes. It runs the same path as IngestMessage (limits, idempotency,
// matching).
type Hub interface {
	// Ingest hands the hub an inbound message; a message with the same
	// Key as one before is taken once. An error wrapping ErrRetry is one
	// the platform should retry on (the hub's backend is unreachable):
	// the callback then answers 503.
	Ingest(ctx context.Context, in *Inbound) error
	// Receipt applies a platform's report on a message it took; errors as
	// Ingest's.
	Receipt(ctx context.Context, r store.Receipt) error
	// Refused counts a callback refused before it reached Ingest:
	// BadSignature, or Ignored (not a user's message).
	Refused(platform, why string)
	// IngestRequest runs IngestMessage for a platform whose callback is
	// IngestMessage's REST body (webhook), and answers as the REST API
	// would: the HTTP status and its JSON body.
	IngestRequest(ctx context.Context, r *Request) (code int, body []byte)
}

// Request is an inbound message as IngestMessage's REST JSON body, with
// where it came from: the platform and channel of the account that took
// it, and the platform's id for the delivery (Key), so a redelivery is
// taken once.
type Request struct {
	Tenant   string
	Platform string
	Channel  string
	Key      string
	Body     []byte
}

// Why a callback was refused, for Hub.Refused.
const (
	BadSignature = "bad_signature"
	Ignored      = "ignored"
)

// Inbound is a user's message as a platform delivered it.
type Inbound struct {
	Tenant   string
	Platform string
	Channel  string
	User     string
	Text     string
	// Raw is the platform's own object for the message, kept with it and
	// handed to ChatReceive.
	Raw json.RawMessage
	// Key is the platform's id for the delivery (a Slack event_id, a
	// WhatsApp message id): a redelivery is taken once.
	Key string
	// Thread is the thread the message was in (a Slack thread_ts), if
	// any: replies into the session go there.
	Thread string
	// SentAt is when the platform says the user sent it (a WhatsApp
	// message's timestamp), zero when unknown: WhatsApp's reply window
	// runs from it, not from when the hub heard (docs/design.md §9).
	SentAt time.Time
}

// ErrRetry marks a failure the platform should retry on.
var ErrRetry = errors.New("temporarily unavailable")

// RetryAfter is a failure that may not last, whose platform said when to
// try again (a Retry-After header): not before Wait.
type RetryAfter struct {
	Wait time.Duration
	Err  error
}

func (e *RetryAfter) Error() string { return fmt.Sprintf("%v (retry after %s)", e.Err, e.Wait) }
func (e *RetryAfter) Unwrap() error { return e.Err }

// Schedule is a retry schedule: the waits after each failed attempt.
type Schedule []time.Duration

// Retry implements Adapter.Retry.
func (s Schedule) Retry(attempt int) (time.Duration, bool) {
	if attempt < 1 || attempt > len(s) {
		return 0, false
	}
	return s[attempt-1], true
}

// PlatformSchedule retries a platform API that failed for a while: over
// about three quarters of an hour, then the message fails.
var PlatformSchedule = Schedule{5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute, 30 * time.Minute}

// Answer ends a callback with code and a short plain-text body.
func Answer(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

// IngestAnswer answers a callback after ingesting: 503 when the platform
// should retry, 200 otherwise (a refusal of bad input is logged by the
// hub; retrying would not mend it).
func IngestAnswer(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrRetry) {
		Answer(w, http.StatusServiceUnavailable, "retry")
		return
	}
	Answer(w, http.StatusOK, "ok")
}

// Transport is the HTTP transport adapters share: keep-alive connections
// enough for the concurrency a hub sends with (the default keeps 2 per
// host, and a burst of posts would open and close hundreds).
var Transport = sync.OnceValue(func() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 512, 256
	return t
})

// MaxRetryAfter bounds the wait a platform may ask for before a retry (a
// Retry-After): the longest step of Standard Webhooks' schedule. A message
// is not left waiting longer on a platform's word.
const MaxRetryAfter = 10 * time.Hour

// Client is an HTTP client for a platform's API, on Transport, with a 30 s
// limit on each call. It never follows a redirect: a 301 or 302 would turn
// a POST into a GET without its body, whose 2xx would pass for a delivery,
// and a 307 would send a signed body wherever it points; a 3xx is the
// platform's answer. With a tracer provider, each call is a span and
// carries the trace to the platform (docs/design.md §11); nil traces
// nothing.
func Client(tp trace.TracerProvider) *http.Client {
	rt := Transport()
	if tp != nil {
		rt = otelhttp.NewTransport(rt, otelhttp.WithTracerProvider(tp), otelhttp.WithPropagators(telemetry.Propagators))
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: rt,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

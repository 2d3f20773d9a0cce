// Package slack is the Slack adapter (docs/design.md §9): outbound through
// chat.postMessage, inbound through the Events API at
// /hooks/slack/<name>, on github.com/slack-go/slack.
package slack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/slack-go/slack"
	"github.com/slack-go/slack/slackevents"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/store"
)

// DefaultAPIURL is Slack's Web API.
const DefaultAPIURL = "https://slack.com/api/"

// Config is one Slack app installation: a workspace's bot.
type Config struct {
	// Name is the account's name: events arrive at /hooks/slack/<name>.
	Name string
	// Tenant owns the account's sessions.
	Tenant string
	// BotToken (xoxb-…) and SigningSecret are the app's credentials.
	BotToken      string
	SigningSecret string
	// APIURL is Slack's Web API; default DefaultAPIURL. Tests point it at
	// a local fake.
	APIURL string
	// HTTPClient makes the calls; default one with a 30 s timeout.
	HTTPClient *http.Client
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Adapter is a Slack account.
type Adapter struct {
	cfg Config
	api *slack.Client
}

var _ adapters.Adapter = (*Adapter)(nil)

// New checks c and returns its Adapter.
func New(c Config) (*Adapter, error) {
	switch {
	case c.Name == "":
		return nil, errors.New("slack: name is required")
	case c.BotToken == "":
		return nil, fmt.Errorf("slack %s: the bot token is required", c.Name)
	case c.SigningSecret == "":
		return nil, fmt.Errorf("slack %s: the signing secret is required", c.Name)
	}
	if c.Tenant == "" {
		c.Tenant = "default"
	}
	if c.APIURL == "" {
		c.APIURL = DefaultAPIURL
	}
	if !strings.HasSuffix(c.APIURL, "/") {
		c.APIURL += "/" // slack-go appends method names to it as they are
	}
	if c.HTTPClient == nil {
		c.HTTPClient = adapters.Client(nil)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Adapter{cfg: c, api: slack.New(c.BotToken, slack.OptionAPIURL(c.APIURL), slack.OptionHTTPClient(c.HTTPClient))}, nil
}

func (a *Adapter) Platform() string { return "slack" }
func (a *Adapter) Name() string     { return a.cfg.Name }
func (a *Adapter) Tenant() string   { return a.cfg.Tenant }

// Delivers every channel: one Slack app per tenant.
func (a *Adapter) Delivers(string) bool { return true }

func (a *Adapter) Retry(attempt int) (time.Duration, bool) {
	return adapters.PlatformSchedule.Retry(attempt)
}

// Send posts out with chat.postMessage, into out.Thread when set. Slack's
// error strings are the refusal's code, but for transientErrors, which are
// retried. On HTTP 429 it waits Retry-After if the call's deadline allows,
// else the delivery is retried once Retry-After has passed.
func (a *Adapter) Send(ctx context.Context, out *adapters.Outbound) (adapters.Result, error) {
	opts := []slack.MsgOption{slack.MsgOptionText(out.Text, false)}
	if out.Thread != "" {
		opts = append(opts, slack.MsgOptionTS(out.Thread))
	}
	for {
		_, ts, err := a.api.PostMessageContext(ctx, out.Channel, opts...)
		var refused slack.SlackErrorResponse
		var limited *slack.RateLimitedError
		switch {
		case err == nil && ts != "":
			return adapters.Accepted(store.StatusDelivered, ts), nil
		case err == nil:
			return adapters.Refused("unknown_error", "Slack answered ok:false without an error"), nil
		case errors.As(err, &refused) && transientErrors[refused.Err]:
			return adapters.Result{}, fmt.Errorf("slack: chat.postMessage: %s", refused.Err)
		case errors.As(err, &refused):
			return adapters.Refused(refused.Err, "Slack refused the message: "+refused.Err), nil
		case errors.As(err, &limited):
			// Waited out here when it fits the delivery's deadline, else
			// the delivery is retried once it has passed.
			later := &adapters.RetryAfter{Wait: limited.RetryAfter, Err: fmt.Errorf("slack: rate-limited for %s", limited.RetryAfter)}
			if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < limited.RetryAfter {
				return adapters.Result{}, later
			}
			t := time.NewTimer(limited.RetryAfter)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
				return adapters.Result{}, later
			}
		default:
			return adapters.Result{}, fmt.Errorf("slack: chat.postMessage: %w", err)
		}
	}
}

// userSubtypes are the message subtypes that are a user's own message.
var userSubtypes = map[string]bool{"": true, "file_share": true, "thread_broadcast": true}

// transientErrors are chat.postMessage errors that say "not now": the
// message is retried. internal_error and fatal_error are not: Slack says
// part of the call may have succeeded, and a retry could post it twice.
var transientErrors = map[string]bool{"service_unavailable": true, "request_timeout": true, "ratelimited": true}

// maxEventBytes bounds an event callback's body; Slack's are a few KiB.
const maxEventBytes = 1 << 20

// Handler serves the Events API: url_verification, and message events,
// ingested with their event_id as the key so that Slack's redeliveries
// are taken once. Messages from bots (ours included) and subtypes
// (edits, joins…) are not the user speaking: they are acknowledged and
// left out; a file shared with a message, and a thread reply also sent to
// the channel, are the user speaking (userSubtypes).
func (a *Adapter) Handler(hub adapters.Hub) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			adapters.Answer(w, http.StatusMethodNotAllowed, "POST only")
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxEventBytes+1))
		if err != nil || len(body) > maxEventBytes {
			adapters.Answer(w, http.StatusBadRequest, "unreadable body")
			return
		}
		if err := a.verify(r.Header, body); err != nil {
			a.cfg.Logger.Warn("slack: event refused", "account", a.cfg.Name, "err", err)
			hub.Refused("slack", adapters.BadSignature)
			adapters.Answer(w, http.StatusUnauthorized, "bad signature")
			return
		}
		ev, err := slackevents.ParseEvent(body, slackevents.OptionNoVerifyToken())
		if err != nil {
			// Signed by Slack, but not an event we read: acknowledged, so
			// Slack does not retry it.
			a.cfg.Logger.Debug("slack: unreadable event", "account", a.cfg.Name, "err", err)
			hub.Refused("slack", adapters.Ignored)
			adapters.Answer(w, http.StatusOK, "ignored")
			return
		}
		switch ev.Type {
		case slackevents.URLVerification:
			if v, ok := ev.Data.(*slackevents.EventsAPIURLVerificationEvent); ok {
				adapters.Answer(w, http.StatusOK, v.Challenge)
				return
			}
		case slackevents.CallbackEvent:
			cb, ok := ev.Data.(*slackevents.EventsAPICallbackEvent)
			m, isMsg := ev.InnerEvent.Data.(*slackevents.MessageEvent)
			if ok && isMsg && cb.InnerEvent != nil && userSubtypes[m.SubType] && m.BotID == "" && m.User != "" {
				adapters.IngestAnswer(w, hub.Ingest(r.Context(), &adapters.Inbound{
					Tenant: a.cfg.Tenant, Platform: "slack", Channel: m.Channel, User: m.User, Text: m.Text,
					Raw: json.RawMessage(*cb.InnerEvent), Key: cb.EventID, Thread: m.ThreadTimeStamp,
				}))
				return
			}
		}
		hub.Refused("slack", adapters.Ignored)
		adapters.Answer(w, http.StatusOK, "ignored")
	})
}

// verify checks X-Slack-Signature over the raw body, and that the request
// is no more than 5 minutes old (or new).
func (a *Adapter) verify(h http.Header, body []byte) error {
	v, err := slack.NewSecretsVerifier(h, a.cfg.SigningSecret)
	if err != nil {
		return err
	}
	if _, err := v.Write(body); err != nil {
		return err
	}
	return v.Ensure()
}

package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/store"
)

// Bot is a running chatbot's webhook (docs/design.md §9): while a session
// is BOT with the chatbot, each of its inbound messages is delivered to it
// as `message.received`, and its answer says what the bot says back.
type Bot struct {
	out *sender
}

// NewBot is the webhook at url, signed with secret (whsec_<base64>,
// several while rotating).
func NewBot(url, secret string, client *http.Client) (*Bot, error) {
	keys, err := ParseKeys(secret)
	if err != nil {
		return nil, err
	}
	if err := checkURL(url); err != nil {
		return nil, err
	}
	if client == nil {
		client = adapters.Client(nil)
	}
	return &Bot{out: &sender{url: url, keys: keys, client: client}}, nil
}

// Answer is what a bot's 2xx answer may carry: replies to post into the
// session, in order; End to end the bot (the session is OPEN again);
// Handoff to hand the session to a human (IN_PROGRESS).
type Answer struct {
	Replies []Reply `json:"replies"`
	End     bool    `json:"end"`
	Handoff bool    `json:"handoff"`
}

type Reply struct {
	Text string `json:"text"`
}

// Deliver sends m, an inbound message of ses from ct, to the bot, its
// webhook-id the message's id on every attempt. It answers the bot's
// Answer (a 2xx that is not a JSON object answers nothing); or its refusal, as Adapter.Send
// (an answer that is not an Answer is refused as bad_answer); or an error
// worth a retry.
func (b *Bot) Deliver(ctx context.Context, ses *store.Session, m *store.Message, ct *store.Contact) (Answer, *store.PlatformError, error) {
	ev := Event{
		Type: "message.received",
		Session: &Session{SessionID: ses.ID, Platform: ses.Platform, Channel: ses.Channel, User: ses.User,
			State: "SESSION_STATE_" + ses.State.String(), ChatbotID: ses.ChatbotID, Metadata: ses.Metadata},
		Message: &Message{MessageID: m.ID, SessionID: m.SessionID, Direction: "DIRECTION_INBOUND", Text: m.Text, FromUser: m.FromUser,
			Platform: m.Platform, Channel: m.Channel, CreatedAt: stamp(m.CreatedAt), Metadata: m.Metadata, Raw: m.Raw},
		Contact: &Contact{Platform: ct.Platform, User: ct.User, Metadata: ct.Metadata},
	}
	if ct.User == "" {
		ev.Contact = &Contact{Platform: ses.Platform, User: ses.User}
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return Answer{}, nil, err
	}
	raw, refused, err := b.out.post(ctx, m.ID, body)
	if err != nil || refused != nil {
		return Answer{}, refused, err
	}
	var a Answer
	if raw = bytes.TrimSpace(raw); len(raw) == 0 || raw[0] != '{' {
		return a, nil, nil // a plain "ok": nothing to say
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return Answer{}, &store.PlatformError{Code: "bad_answer", Message: fmt.Sprintf("the bot's answer is not {\"replies\",\"end\",\"handoff\"}: %v", err)}, nil
	}
	return a, nil, nil
}

package redisstore

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// CreateSession costs 1 round trip.
func (s *Store) CreateSession(ctx context.Context, ns store.NewSession) (store.Session, error) {
	tag := userTag(ns.Tenant, ns.User)
	slotp := s.slot(tag)
	return s.sessionAnswer(s.reply(ctx, createScript,
		[]string{slotp + "a:" + ns.Tenant + ":" + ns.Platform + ":" + ns.Channel + ":" + ns.User},
		slotp, s.now(), ms(s.o.SessionTTL), ms(s.o.EndedRetention),
		ns.Tenant, ns.Platform, ns.Channel, ns.User, ids.TaggedSession(tag), jsonMap(ns.Metadata)))
}

// GetSession costs 1 round trip.
func (s *Store) GetSession(ctx context.Context, tenant, id string) (store.Session, error) {
	m, err := s.c.HGetAll(ctx, s.sessionKey(id)).Result()
	if err != nil {
		return store.Session{}, unavailable(err)
	}
	if len(m) == 0 || m["tn"] != tenant {
		return store.Session{}, store.ErrSessionNotFound
	}
	return sessionFromMap(m, s.o.Clock.Now())
}

// UpdateSession costs 1 round trip.
func (s *Store) UpdateSession(ctx context.Context, tenant, id string, u store.SessionUpdate) (store.Session, error) {
	remove, _ := json.Marshal(u.RemoveMetadata)
	if u.RemoveMetadata == nil {
		remove = []byte("[]")
	}
	endBot := "0"
	if u.EndBot {
		endBot = "1"
	}
	return s.sessionAnswer(s.reply(ctx, updateScript, []string{s.sessionKey(id)},
		s.now(), tenant, int(u.State), endBot, string(remove), jsonMap(u.Metadata)))
}

// CloseSession costs 1 round trip.
func (s *Store) CloseSession(ctx context.Context, tenant, id string) (store.Session, error) {
	return s.sessionAnswer(s.reply(ctx, closeScript, []string{s.sessionKey(id)},
		s.now(), tenant, ms(s.o.EndedRetention), s.sessionSlot(id), s.sessionEventPrefix()))
}

// maxChatbotAttempts bounds optimistic retries when the session changes
// between StartChatbot's read and its write.
const maxChatbotAttempts = 10

// StartChatbot reads the sessions and contact (1 round trip), decides with
// store.PlanChatbot and renders the greeting in Go, then writes the plan if
// nothing changed meanwhile (1 round trip; read again on a conflict). So 2
// round trips, plus 1 more to tell a foreign session id from a missing one.
func (s *Store) StartChatbot(ctx context.Context, c store.ChatbotStart) (store.ChatbotResult, error) {
	tag := userTag(c.Tenant, c.User)
	slotp := s.slot(tag)
	if c.SessionID != "" {
		// A named session of this user lives in this slot; any other id
		// is someone else's session, or none.
		if t, ok := ids.TagOf(c.SessionID); !ok || t != tag {
			if _, err := s.GetSession(ctx, c.Tenant, c.SessionID); err != nil {
				return store.ChatbotResult{}, err
			}
			return store.ChatbotResult{}, store.ErrSessionMismatch
		}
	}
	pointer := slotp + "a:" + c.Tenant + ":" + c.Platform + ":" + c.Channel + ":" + c.User
	contactKey := slotp + "c:" + c.Tenant + ":" + c.Platform + ":" + c.User
	idemKey := s.idemKey(slotp, c.Tenant, "chatbot", c.Platform+":"+c.Channel+":"+c.User, c.Idempotency)
	for range maxChatbotAttempts {
		now := s.o.Clock.Now()
		code, out, err := s.reply(ctx, chatbotReadScript, []string{pointer},
			now.UnixMilli(), c.Tenant, c.SessionID, slotp, contactKey, idemKey, c.Idempotency.Fingerprint)
		if err != nil {
			return store.ChatbotResult{}, err
		}
		switch code {
		case "OK":
		case "REPLAY":
			r, err := s.decodeChatbot(out[0], &c)
			r.Replayed = true
			return r, err
		default:
			return store.ChatbotResult{}, codeErr(code)
		}
		// The records read, each decoded once: the named session, the
		// tuple's active session, and the contact. Their versions ("v")
		// let the write check that nothing moved.
		named, namedRec, err := optionalSession(out[0], now)
		if err != nil {
			return store.ChatbotResult{}, err
		}
		active, activeRec, err := optionalSession(out[1], now)
		if err != nil {
			return store.ChatbotResult{}, err
		}
		if active != nil && !active.State.Active() {
			active = nil
		}
		contactRec, err := decodeRecord("contact", out[3])
		if err != nil {
			return store.ChatbotResult{}, err
		}
		contact, err := contactFromMap(contactRec, c.Tenant, c.Platform, c.User)
		if err != nil {
			return store.ChatbotResult{}, err
		}
		plan, err := store.PlanChatbot(&c, named, active)
		if err != nil {
			return store.ChatbotResult{}, err
		}
		// The session the plan acts on and its version.
		action, subject, version := "open", "", ""
		var subj *store.Session
		switch {
		case plan.Skip != store.NotSkipped:
			action, subj = "skip", plan.Reuse
		case plan.Close != nil:
			action, subj = "close", plan.Close
		case plan.Reuse != nil:
			action, subj = "reuse", plan.Reuse
		}
		if subj != nil {
			subject = subj.ID
			for _, rec := range []map[string]string{namedRec, activeRec} {
				if rec["id"] == subj.ID {
					version = rec["v"]
				}
			}
		}
		greeting := ""
		if action != "skip" && c.Greeting != nil {
			// Render from the state the write will commit: merged
			// metadata on the reused session, or a fresh one.
			base := store.Session{Tenant: c.Tenant, Platform: c.Platform, Channel: c.Channel, User: c.User}
			if action == "reuse" {
				base = *subj
			}
			base.Metadata = mergeMaps(base.Metadata, c.SessionMetadata)
			base.State, base.ChatbotID = store.StateBot, c.ChatbotID
			ct := contact
			ct.Metadata = mergeMaps(contact.Metadata, c.ContactMetadata)
			greeting = c.Greeting(base, ct)
		}
		suffix, err := messageSuffix(&store.Message{
			Direction: store.Outbound, Text: greeting, FromUser: c.ChatbotID, Status: c.GreetingStatus, Error: c.GreetingError,
		})
		if err != nil {
			return store.ChatbotResult{}, err
		}
		code, out2, err := s.reply(ctx, chatbotWriteScript, []string{pointer},
			now.UnixMilli(), c.Tenant, c.Platform, c.Channel, c.User, action, out[2], subject, version, contactRec["v"],
			ids.TaggedSession(tag), c.ChatbotID, jsonMap(c.SessionMetadata), jsonMap(c.ContactMetadata), suffix,
			ids.MessageRandom(), ms(s.o.SessionTTL), ms(s.o.EndedRetention), s.o.HistoryLimit, slotp, s.sessionEventPrefix(),
			idemKey, c.Idempotency.Fingerprint, ms(s.o.IdempotencyTTL), int(plan.Skip))
		if err != nil {
			return store.ChatbotResult{}, err
		}
		switch code {
		case "CONFLICT":
			continue
		case "OK", "REPLAY":
			r, err := s.decodeChatbot(out2[0], &c)
			r.Replayed = code == "REPLAY"
			return r, err
		default:
			return store.ChatbotResult{}, codeErr(code)
		}
	}
	return store.ChatbotResult{}, fmt.Errorf("%w: the session kept changing; retry", store.ErrUnavailable)
}

func (s *Store) decodeChatbot(raw string, c *store.ChatbotStart) (store.ChatbotResult, error) {
	var w struct {
		Skip    int             `json:"skip"`
		Session json.RawMessage `json:"s"`
		Contact json.RawMessage `json:"c"`
		Message json.RawMessage `json:"m"`
		Started bool            `json:"started"`
		Closed  json.RawMessage `json:"closed"`
	}
	if err := json.Unmarshal([]byte(raw), &w); err != nil {
		return store.ChatbotResult{}, fmt.Errorf("redisstore: chatbot result: %w", err)
	}
	t := s.o.Clock.Now()
	var r store.ChatbotResult
	var err error
	r.Skip = store.SkipReason(w.Skip)
	r.SessionStarted = w.Started
	if r.Session, err = decodeSession(string(w.Session), t); err != nil {
		return r, err
	}
	if r.Contact, err = decodeContact(string(w.Contact), c.Tenant, c.Platform, c.User); err != nil {
		return r, err
	}
	if len(w.Message) > 0 {
		if r.Greeting, err = decodeMessage(string(w.Message)); err != nil {
			return r, err
		}
	}
	if len(w.Closed) > 0 && string(w.Closed) != "null" {
		closed, err := decodeSession(string(w.Closed), t)
		if err != nil {
			return r, err
		}
		r.Closed = &closed
	}
	return r, nil
}

// optionalSession decodes a session record a script answered, "" for none,
// and returns the record too (for its version).
func optionalSession(raw string, now time.Time) (*store.Session, map[string]string, error) {
	m, err := decodeRecord("session", raw)
	if m == nil || err != nil {
		return nil, nil, err
	}
	ses, err := sessionFromMap(m, now)
	if err != nil {
		return nil, nil, err
	}
	return &ses, m, nil
}

// mergeMaps is a with b's entries over it, in a new map (nil when both
// are empty).
func mergeMaps(a, b map[string]string) map[string]string {
	if len(a) == 0 && len(b) == 0 {
		return nil
	}
	out := maps.Clone(a)
	if out == nil {
		out = make(map[string]string, len(b))
	}
	maps.Copy(out, b)
	return out
}

// sessionAnswer reads a script's answer that is a session record on "OK"
// and a refusal otherwise.
func (s *Store) sessionAnswer(code string, out []string, err error) (store.Session, error) {
	if err != nil {
		return store.Session{}, err
	}
	if code != "OK" {
		return store.Session{}, codeErr(code)
	}
	return decodeSession(out[0], s.o.Clock.Now())
}

package redisstore

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
	"github.com/redis/go-redis/v9"
)

// CreateSession costs 1 round trip.
func (s *Store) CreateSession(ctx context.Context, ns store.NewSession) (store.Session, error) {
	tag := userTag(ns.Tenant, ns.User)
	slotp := s.slot(tag)
	code, out, err := s.reply(ctx, createScript,
		[]string{slotp + "a:" + ns.Tenant + ":" + ns.Platform + ":" + ns.Channel + ":" + ns.User},
		slotp, s.now(), ms(s.o.SessionTTL), ms(s.o.EndedRetention),
		ns.Tenant, ns.Platform, ns.Channel, ns.User, ids.TaggedSession(tag), jsonMap(ns.Metadata), s.scriptActivityKey(ns.Tenant))
	if code == "EXISTS" && len(out) == 1 {
		return store.Session{ID: out[0]}, store.ErrSessionExists
	}
	ses, err := s.sessionAnswer(code, out, err)
	if err != nil {
		return ses, err
	}
	return ses, s.trackActivity(ctx, ns.Tenant, ses.ID, ses.LastActivityAt)
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

// GetContact costs 1 round trip.
func (s *Store) GetContact(ctx context.Context, tenant, platform, user string) (store.Contact, error) {
	key := s.slot(userTag(tenant, user)) + "c:" + tenant + ":" + platform + ":" + user
	m, err := s.c.HGetAll(ctx, key).Result()
	if err != nil {
		return store.Contact{}, unavailable(err)
	}
	if len(m) == 0 {
		return store.Contact{Tenant: tenant, Platform: platform, User: user}, nil
	}
	return contactFromMap(m, tenant, platform, user)
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
		s.now(), tenant, int(u.State), endBot, string(remove), jsonMap(u.Metadata), u.IfChatbot, u.MaxMetadata))
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
		// Checked on what was read; the write commits only if none of it
		// changed since.
		if plan.TooMuchMetadata(&c, contact.Metadata) {
			return store.ChatbotResult{}, store.ErrTooMuchMetadata
		}
		var greeting store.Outgoing
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
		status, perr, delivery := c.GreetingStatus, c.GreetingError, c.GreetingDelivery
		if greeting.Refused != nil {
			status, perr, delivery = store.StatusFailed, greeting.Refused, nil
		}
		suffix, err := messageSuffix(&store.Message{
			Direction: store.Outbound, Text: greeting.Text, FromUser: c.ChatbotID, Status: status, Error: perr,
			Template: greeting.Template,
		})
		if err != nil {
			return store.ChatbotResult{}, err
		}
		// The session the greeting goes to: its delivery is recorded
		// before the greeting is (delivery.go).
		newSID, did := ids.TaggedSession(tag), ""
		if action != "skip" && delivery != nil {
			target := newSID
			if action == "reuse" {
				target = subject
			}
			if err := s.enqueue(ctx, c.Tenant, target, delivery); err != nil {
				return store.ChatbotResult{}, err
			}
			did = delivery.ID
		}
		code, out2, err := s.reply(ctx, chatbotWriteScript, []string{pointer},
			now.UnixMilli(), c.Tenant, c.Platform, c.Channel, c.User, action, out[2], subject, version, contactRec["v"],
			newSID, c.ChatbotID, jsonMap(c.SessionMetadata), jsonMap(c.ContactMetadata), suffix,
			ids.MessageRandom(), ms(s.o.SessionTTL), ms(s.o.EndedRetention), s.o.HistoryLimit, slotp, s.sessionEventPrefix(),
			idemKey, c.Idempotency.Fingerprint, ms(s.o.IdempotencyTTL), int(plan.Skip), s.scriptActivityKey(c.Tenant), did)
		if err != nil {
			return store.ChatbotResult{}, err
		}
		switch code {
		case "CONFLICT":
			continue
		case "OK", "REPLAY":
			r, err := s.decodeChatbot(out2[0], &c)
			r.Replayed = code == "REPLAY"
			if err == nil && !r.Replayed && r.Skip == store.NotSkipped {
				err = s.trackActivity(ctx, c.Tenant, r.Session.ID, r.Greeting.CreatedAt)
			}
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

// How many sessions ListSessions reads per call at most, whatever it
// finds: a filter that selects few of many still answers in bounded time,
// with a shorter page and a cursor to go on from.
const listScanBudget = 1000

// ListSessions reads the user's index (ListSessions by user: a user has
// few sessions, all read and sorted), or the tenant's activity index from
// the cursor; then the sessions' records, pipelined. 2 round trips, or a
// few more when filters reject much of what the index holds.
func (s *Store) ListSessions(ctx context.Context, tenant string, f store.SessionFilter, after store.SessionCursor, limit int) ([]store.Session, store.SessionCursor, error) {
	now := s.o.Clock.Now()
	if f.User != "" {
		slotp := s.slot(userTag(tenant, f.User))
		sids, err := s.c.ZRevRange(ctx, slotp+"su:"+tenant+":"+f.User, 0, listScanBudget-1).Result()
		if err != nil {
			return nil, store.SessionCursor{}, unavailable(err)
		}
		all, err := s.loadSessions(ctx, tenant, sids, now)
		if err != nil {
			return nil, store.SessionCursor{}, err
		}
		var out []store.Session
		for i := range all {
			if all[i].ID != "" && f.Selects(&all[i]) && after.Before(&all[i]) {
				out = append(out, all[i])
			}
		}
		sortByActivity(out)
		if len(out) <= limit {
			return out, store.SessionCursor{}, nil
		}
		return out[:limit], store.CursorAt(&out[limit-1]), nil
	}

	key := s.activityKey(tenant)
	max := "+inf"
	if after.ID != "" {
		max = strconv.FormatInt(after.At.UnixMilli(), 10)
	}
	var out []store.Session
	var stale []any
	scanned, offset := 0, int64(0)
	for scanned < listScanBudget {
		batch := min(int64(limit*2+16), int64(listScanBudget-scanned))
		zs, err := s.c.ZRevRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{Max: max, Min: "-inf", Offset: offset, Count: batch}).Result()
		if err != nil {
			return nil, store.SessionCursor{}, unavailable(err)
		}
		sids := make([]string, len(zs))
		for i, z := range zs {
			sids[i] = z.Member.(string)
		}
		loaded, err := s.loadSessions(ctx, tenant, sids, now)
		if err != nil {
			return nil, store.SessionCursor{}, err
		}
		for i := range loaded {
			scanned++
			offset++
			ses := &loaded[i]
			if ses.ID == "" {
				stale = append(stale, sids[i])
				continue
			}
			// The index's score is the cursor's order; the record has
			// the same time (to the millisecond) once written.
			ses.LastActivityAt = time.UnixMilli(int64(zs[i].Score)).UTC()
			if !after.Before(ses) || !f.Selects(ses) {
				continue
			}
			out = append(out, *ses)
			if len(out) == limit {
				s.dropStale(key, stale)
				return out, store.CursorAt(ses), nil
			}
		}
		if int64(len(zs)) < batch {
			s.dropStale(key, stale)
			return out, store.SessionCursor{}, nil // the index is read to its end
		}
	}
	s.dropStale(key, stale)
	// The budget ran out: go on from the last session looked at.
	last, err := s.c.ZRevRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{Max: max, Min: "-inf", Offset: offset - 1, Count: 1}).Result()
	if err != nil || len(last) == 0 {
		return out, store.SessionCursor{}, unavailable(err)
	}
	return out, store.SessionCursor{At: time.UnixMilli(int64(last[0].Score)), ID: last[0].Member.(string)}, nil
}

// loadSessions reads session records, pipelined; a session that is gone
// (or another tenant's) comes back zero.
func (s *Store) loadSessions(ctx context.Context, tenant string, sids []string, now time.Time) ([]store.Session, error) {
	if len(sids) == 0 {
		return nil, nil
	}
	pipe := s.c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(sids))
	for i, sid := range sids {
		cmds[i] = pipe.HGetAll(ctx, s.sessionKey(sid))
	}
	_, _ = pipe.Exec(ctx)
	out := make([]store.Session, len(sids))
	for i, c := range cmds {
		m, err := c.Result()
		if err != nil {
			return nil, unavailable(err)
		}
		if len(m) == 0 || m["tn"] != tenant {
			continue
		}
		if out[i], err = sessionFromMap(m, now); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *Store) dropStale(key string, sids []any) {
	if len(sids) == 0 {
		return
	}
	s.background(func(ctx context.Context) { _ = s.c.ZRem(ctx, key, sids...).Err() })
}

func sortByActivity(ss []store.Session) {
	slices.SortFunc(ss, func(a, b store.Session) int {
		if c := cmp.Compare(b.LastActivityAt.UnixMilli(), a.LastActivityAt.UnixMilli()); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
}

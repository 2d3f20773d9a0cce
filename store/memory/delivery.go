package memory

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// outboxEntry is an unfinished delivery: its message, and when it is due
// (the end of its lease, or its retry time).
type outboxEntry struct {
	id        string
	tenant    string
	sessionID string
	messageID string
	due       time.Time
	attempt   int
	// bot marks a session's chatbot queue: one entry per session, its
	// head the message to deliver.
	bot bool
}

// botQueued is an inbound message queued for the chatbot it came to.
type botQueued struct{ messageID, chatbotID string }

// botEntry is the outbox id of a session's chatbot queue.
func botEntry(sessionID string) string { return "@bot:" + sessionID }

// queueForBot queues msg, just appended to ses, for the chatbot that runs
// ses, if it runs on a webhook (bots), and makes the queue due if it was
// idle. s.mu held.
func (s *Store) queueForBot(ses *session, msg *store.Message, bots []string, now time.Time) {
	if ses.State != store.StateBot || !slices.Contains(bots, ses.ChatbotID) {
		return
	}
	ses.botQueue = append(ses.botQueue, botQueued{msg.ID, ses.ChatbotID})
	id := botEntry(ses.ID)
	if s.outbox[id] == nil {
		s.outbox[id] = &outboxEntry{id: id, tenant: ses.Tenant, sessionID: ses.ID, due: now, bot: true}
	}
}

// claimBot leases the head of a session's chatbot queue, dropping what
// the session's chatbot no longer runs for; false when nothing is left.
// s.mu held.
func (s *Store) claimBot(e *outboxEntry, now time.Time, lease time.Duration) (store.DeliveryClaim, bool) {
	ses := s.sessions[e.sessionID]
	if ses == nil {
		return store.DeliveryClaim{}, false
	}
	s.settle(ses, now)
	for len(ses.botQueue) > 0 {
		if ses.State != store.StateBot {
			ses.botQueue = nil
			break
		}
		q := ses.botQueue[0]
		m := s.message(ses.ID, q.messageID)
		if q.chatbotID != ses.ChatbotID || m == nil {
			ses.botQueue = ses.botQueue[1:]
			continue
		}
		e.due, e.attempt = now.Add(lease), e.attempt+1
		bot := &store.BotDelivery{ChatbotID: q.chatbotID, Session: cloneSession(&ses.Session)}
		if ct := s.contacts[contactKey{ses.Tenant, ses.Platform, ses.User}]; ct != nil {
			bot.Contact = cloneContact(ct)
		}
		return store.DeliveryClaim{ID: e.id, Tenant: e.tenant, SessionID: e.sessionID, Message: cloneMessage(m), Attempt: e.attempt, Bot: bot}, true
	}
	return store.DeliveryClaim{}, false
}

// finishBot ends the delivery of d's message to the chatbot, if it is
// still the queue's head, and makes the next one due. A claim that lost
// the head to another (its lease ran out) changes nothing. s.mu held.
func (s *Store) finishBot(d store.DeliveryClaim, now time.Time) {
	ses := s.sessions[d.SessionID]
	if ses != nil {
		if len(ses.botQueue) == 0 || ses.botQueue[0].messageID != d.Message.ID {
			return
		}
		ses.botQueue = ses.botQueue[1:]
	}
	if ses == nil || len(ses.botQueue) == 0 {
		delete(s.outbox, d.ID)
		return
	}
	e := s.outbox[d.ID]
	if e == nil {
		e = &outboxEntry{id: d.ID, tenant: d.Tenant, sessionID: d.SessionID, bot: true}
		s.outbox[d.ID] = e
	}
	e.due, e.attempt = now, 0
}

// platformKey is a message's id on its platform.
type platformKey struct{ tenant, platform, id string }

// platformRef is what the hub knows of a platform id: the message it
// names, or receipts that came before the message was known by it.
type platformRef struct {
	sessionID, messageID string
	early                []store.Receipt
	expires              time.Time
}

// schedule records d for msg, leased to the caller. s.mu held.
func (s *Store) schedule(d *store.Delivery, msg *store.Message, now time.Time) {
	if d == nil {
		return
	}
	s.outbox[d.ID] = &outboxEntry{id: d.ID, tenant: s.sessions[msg.SessionID].Tenant, sessionID: msg.SessionID,
		messageID: msg.ID, due: now.Add(d.Lease), attempt: 1}
}

func (s *Store) ClaimDeliveries(_ context.Context, n int, lease time.Duration) ([]store.DeliveryClaim, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	var due []*outboxEntry
	for _, e := range s.outbox {
		if !now.Before(e.due) {
			due = append(due, e)
		}
	}
	slices.SortFunc(due, func(a, b *outboxEntry) int { return a.due.Compare(b.due) })
	var out []store.DeliveryClaim
	for _, e := range due {
		if len(out) == n {
			break
		}
		if e.bot {
			c, ok := s.claimBot(e, now, lease)
			if !ok {
				delete(s.outbox, e.id)
				continue
			}
			out = append(out, c)
			continue
		}
		m := s.message(e.sessionID, e.messageID)
		if m == nil || m.Status.Settled() {
			delete(s.outbox, e.id)
			continue
		}
		e.due, e.attempt = now.Add(lease), e.attempt+1
		out = append(out, store.DeliveryClaim{ID: e.id, Tenant: e.tenant, SessionID: e.sessionID, Message: cloneMessage(m), Attempt: e.attempt})
	}
	return out, nil
}

func (s *Store) FinishDelivery(_ context.Context, d store.DeliveryClaim, o store.DeliveryOutcome) (store.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.Status == 0 {
		if e := s.outbox[d.ID]; e != nil {
			e.due = o.RetryAt
		}
		return d.Message, nil
	}
	if d.Bot != nil {
		s.finishBot(d, s.opts.Clock.Now())
		return d.Message, nil
	}
	m := s.message(d.SessionID, d.Message.ID)
	delete(s.outbox, d.ID)
	if m == nil {
		return store.Message{}, store.ErrMessageNotFound
	}
	now := s.opts.Clock.Now()
	s.advance(d.Tenant, m, o.Status, o.PlatformID, o.Error, now)
	if o.PlatformID != "" {
		k := platformKey{d.Tenant, m.Platform, o.PlatformID}
		ref := s.platformIDs[k]
		s.platformIDs[k] = &platformRef{sessionID: m.SessionID, messageID: m.ID, expires: now.Add(store.PlatformIDRetention)}
		if ref != nil && ref.sessionID == "" {
			for _, r := range ref.early {
				s.advance(d.Tenant, m, r.Status, "", r.Error, r.At)
			}
		}
	}
	return cloneMessage(m), nil
}

func (s *Store) ApplyReceipt(_ context.Context, r store.Receipt) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	k := platformKey{r.Tenant, r.Platform, r.PlatformID}
	ref := s.platformIDs[k]
	if ref != nil && !now.Before(ref.expires) {
		ref = nil
	}
	if ref == nil || ref.sessionID == "" {
		if ref == nil {
			ref = &platformRef{expires: now.Add(store.EarlyReceiptWait)}
			s.platformIDs[k] = ref
		}
		if len(ref.early) < store.MaxEarlyReceipts {
			ref.early = append(ref.early, r)
		}
		return nil
	}
	if m := s.message(ref.sessionID, ref.messageID); m != nil {
		s.advance(r.Tenant, m, r.Status, "", r.Error, r.At)
	}
	return nil
}

func (s *Store) GetMessage(_ context.Context, tenant, sessionID, messageID string) (store.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.lookup(tenant, sessionID, s.opts.Clock.Now()); err != nil {
		return store.Message{}, err
	}
	m := s.message(sessionID, messageID)
	if m == nil {
		return store.Message{}, store.ErrMessageNotFound
	}
	return cloneMessage(m), nil
}

// message finds a retained message of a session, or nil. s.mu held.
func (s *Store) message(sessionID, messageID string) *store.Message {
	ses := s.sessions[sessionID]
	seq, err := ids.MessageSeq(messageID)
	if ses == nil || err != nil || ses.history.len() == 0 {
		return nil
	}
	first := ses.history.at(0).Seq
	if seq < first || seq-first >= uint64(ses.history.len()) {
		return nil
	}
	m := ses.history.at(int(seq - first))
	if m.ID != messageID {
		return nil
	}
	return m
}

// advance moves m's status forward to st, if that is forward, and tells
// the session's watchers. s.mu held.
func (s *Store) advance(tenant string, m *store.Message, st store.MessageStatus, platformID string, perr *store.PlatformError, at time.Time) {
	if !m.Status.Advances(st) {
		return
	}
	m.Status, m.StatusAt = st, at
	if platformID != "" {
		m.PlatformID = platformID
	}
	m.Error = nil
	if perr != nil {
		e := *perr
		m.Error = &e
	}
	change := store.StatusChange{MessageID: m.ID, Seq: m.Seq, Status: st, PlatformID: m.PlatformID, At: at, Error: m.Error}
	s.publish(store.SessionTopic(tenant, m.SessionID), func() store.Event {
		c := change
		if c.Error != nil {
			e := *c.Error
			c.Error = &e
		}
		return store.Event{Kind: store.EventMessageStatus, SessionID: m.SessionID, Status: &c}
	})
}

// ListSessions scans the tenant's sessions: the memory backend holds one
// process's worth.
func (s *Store) ListSessions(_ context.Context, tenant string, f store.SessionFilter, after store.SessionCursor, limit int) ([]store.Session, store.SessionCursor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	var out []store.Session
	for ses := range s.byTenant[tenant] {
		s.settle(ses, now)
		if f.Selects(&ses.Session) && after.Before(&ses.Session) {
			out = append(out, cloneSession(&ses.Session))
		}
	}
	slices.SortFunc(out, func(a, b store.Session) int {
		// Milliseconds, the store's precision, as the cursor compares.
		if c := cmp.Compare(b.LastActivityAt.UnixMilli(), a.LastActivityAt.UnixMilli()); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	if len(out) <= limit {
		return out, store.SessionCursor{}, nil
	}
	return out[:limit], store.CursorAt(&out[limit-1]), nil
}

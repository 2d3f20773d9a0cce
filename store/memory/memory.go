// Package memory is the embedded, single-process store: the default when no
// Redis is configured. It honours the store contract exactly as the Redis
// backend does; store/storetest checks both.
//
// One mutex guards all state. Every operation under it is a few map
// look-ups and an append, so the critical sections are short; judging
// listeners' keywords, which may not be (a regular expression over a long
// text), happens outside it. Events are published to subscriber queues
// (which never block) while the lock is held, so each topic's events come
// out in commit order.
package memory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
	"golang.org/x/time/rate"
)

// Options configures a Store: the settings every backend honours, and how
// often memory is swept.
type Options struct {
	store.Options
	// SweepInterval is how often memory held by expired records is freed;
	// default 1 minute. Expiry itself is exact regardless.
	SweepInterval time.Duration
}

func (o *Options) setDefaults() error {
	if err := o.Options.SetDefaults(); err != nil {
		return fmt.Errorf("memory: %w", err)
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Minute
	}
	if o.SweepInterval < 0 {
		return errors.New("memory: SweepInterval must not be negative")
	}
	return nil
}

// Store is the in-memory backend.
type Store struct {
	opts Options

	mu        sync.Mutex
	sessions  map[string]*session
	active    map[tuple]*session
	contacts  map[contactKey]*store.Contact
	idem      map[idemKey]*idemEntry
	listeners map[string]*listener
	buckets   map[bucket]map[*listener]struct{}
	// pending holds each tenant's undecided listeners, for the cap on
	// them; ones past their deadline or idle window are pruned when the
	// cap is reached.
	pending map[string]map[*listener]struct{}
	// byTenant indexes sessions for ListSessions.
	byTenant map[string]map[*session]struct{}
	// outbox holds unfinished deliveries by id; platformIDs finds
	// messages by their platform's id (delivery.go).
	outbox      map[string]*outboxEntry
	platformIDs map[platformKey]*platformRef

	subsMu sync.Mutex
	subs   map[store.Topic]map[*store.Subscription]struct{}

	limMu sync.Mutex
	lim   limiters

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

type session struct {
	store.Session
	history history
	lastMs  int64 // ms of the newest message id; ids never go back in time
	// botQueue holds the inbound messages waiting for the chatbot that
	// runs the session, oldest first (delivery.go).
	botQueue []botQueued
}

// history is a session's newest messages, up to a limit. It grows to the
// limit, then overwrites the oldest in place, so appending to a full
// history allocates nothing.
type history struct {
	buf  []store.Message
	head int // the oldest message's index in buf, once buf is full
}

func (h *history) len() int { return len(h.buf) }

// at is the i-th oldest message.
func (h *history) at(i int) *store.Message { return &h.buf[(h.head+i)%len(h.buf)] }

// push appends m, dropping the oldest message if the history holds limit.
func (h *history) push(m store.Message, limit int) {
	if len(h.buf) < limit {
		h.buf = append(h.buf, m)
		return
	}
	h.buf[h.head] = m
	h.head = (h.head + 1) % len(h.buf)
}

type tuple struct{ tenant, platform, channel, user string }

type contactKey struct{ tenant, platform, user string }

// idemKey scopes an idempotency key (see store.Idempotency): target is the
// session id or the (platform, channel, user) tuple.
type idemKey struct {
	tenant, scope string
	target        any
	key           string
}

type idemEntry struct {
	fingerprint string
	expires     time.Time
	result      any
}

type listener struct {
	store.Listener
	m       *store.Matcher
	buckets []bucket
}

// bucket is one slot of the listener index. A listener lives in the buckets
// of its most selective filter: its session's, else each of its users',
// else its channel's, else the tenant's "any" bucket. An inbound message
// then looks in exactly four buckets, never at every listener, and an
// approver set of k users costs k entries.
type bucket struct {
	tenant string
	kind   byte // 's', 'u', 'c' or '*'
	value  string
}

func bucketsOf(tenant string, f *store.Filter) []bucket {
	switch {
	case f.SessionID != "":
		return []bucket{{tenant, 's', f.SessionID}}
	case len(f.Users) > 0:
		out := make([]bucket, len(f.Users))
		for i, u := range f.Users {
			out[i] = bucket{tenant, 'u', u}
		}
		return out
	case f.Channel != "":
		return []bucket{{tenant, 'c', f.Channel}}
	}
	return []bucket{{tenant, '*', ""}}
}

// New returns a Store and starts its sweeper; Close stops it.
func New(opts Options) (*Store, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	s := &Store{
		opts:        opts,
		sessions:    make(map[string]*session),
		active:      make(map[tuple]*session),
		contacts:    make(map[contactKey]*store.Contact),
		idem:        make(map[idemKey]*idemEntry),
		listeners:   make(map[string]*listener),
		buckets:     make(map[bucket]map[*listener]struct{}),
		pending:     make(map[string]map[*listener]struct{}),
		byTenant:    make(map[string]map[*session]struct{}),
		outbox:      make(map[string]*outboxEntry),
		platformIDs: make(map[platformKey]*platformRef),
		subs:        make(map[store.Topic]map[*store.Subscription]struct{}),
		lim:         limiters{byKey: make(map[string]*rate.Limiter)},
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	go s.sweepLoop()
	return s, nil
}

// Close stops the sweeper. The data stays readable. It is safe to call
// more than once, concurrently.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { close(s.stop) })
	<-s.done
	return nil
}

// Ping always succeeds: memory is always there.
func (s *Store) Ping(context.Context) error { return nil }

// ---- sessions ----

func (s *Store) CreateSession(_ context.Context, ns store.NewSession) (store.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	t := tuple{ns.Tenant, ns.Platform, ns.Channel, ns.User}
	if cur := s.activeFor(t, now); cur != nil {
		return store.Session{ID: cur.ID}, store.ErrSessionExists
	}
	ses := s.open(t, ns.Metadata, now)
	return cloneSession(&ses.Session), nil
}

func (s *Store) GetSession(_ context.Context, tenant, id string) (store.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ses, err := s.lookup(tenant, id, s.opts.Clock.Now())
	if err != nil {
		return store.Session{}, err
	}
	return cloneSession(&ses.Session), nil
}

func (s *Store) GetContact(_ context.Context, tenant, platform, user string) (store.Contact, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ct := s.contacts[contactKey{tenant, platform, user}]; ct != nil {
		return cloneContact(ct), nil
	}
	return store.Contact{Tenant: tenant, Platform: platform, User: user}, nil
}

func (s *Store) UpdateSession(_ context.Context, tenant, id string, u store.SessionUpdate) (store.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	ses, err := s.lookupActive(tenant, id, now)
	if err != nil {
		return store.Session{}, err
	}
	if u.IfChatbot != "" && (ses.State != store.StateBot || ses.ChatbotID != u.IfChatbot) {
		return cloneSession(&ses.Session), nil
	}
	if store.MetadataGrowsPast(u.MaxMetadata, ses.Metadata, u.RemoveMetadata, u.Metadata) {
		return store.Session{}, store.ErrTooMuchMetadata
	}
	for _, k := range u.RemoveMetadata {
		delete(ses.Metadata, k)
	}
	ses.Metadata = merge(ses.Metadata, u.Metadata)
	if u.EndBot || u.State != 0 {
		ses.ChatbotID = ""
		ses.State = store.StateOpen
	}
	if u.State != 0 {
		ses.State = u.State
	}
	ses.UpdatedAt = now
	return cloneSession(&ses.Session), nil
}

func (s *Store) CloseSession(_ context.Context, tenant, id string) (store.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	ses, err := s.lookup(tenant, id, now)
	if err != nil {
		return store.Session{}, err
	}
	if ses.State.Active() {
		s.end(ses, now)
	}
	return cloneSession(&ses.Session), nil
}

func (s *Store) StartChatbot(_ context.Context, c store.ChatbotStart) (store.ChatbotResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	t := tuple{c.Tenant, c.Platform, c.Channel, c.User}
	ik := idemKey{c.Tenant, "chatbot", t, c.Idempotency.Key}
	if r, ok, err := replayed(s, ik, c.Idempotency, now, cloneChatbotResult); ok || err != nil {
		r.Replayed = ok
		return r, err
	}
	var named *store.Session
	if c.SessionID != "" {
		ses, err := s.lookup(c.Tenant, c.SessionID, now)
		if err != nil {
			return store.ChatbotResult{}, err
		}
		named = &ses.Session
	}
	cur := s.activeFor(t, now)
	var active *store.Session
	if cur != nil {
		active = &cur.Session
	}
	plan, err := store.PlanChatbot(&c, named, active)
	if err != nil {
		return store.ChatbotResult{}, err
	}
	var res store.ChatbotResult
	if plan.Skip != store.NotSkipped {
		res.Skip = plan.Skip
		res.Session = cloneSession(plan.Reuse)
		if ct := s.contacts[contactKey{t.tenant, t.platform, t.user}]; ct != nil {
			res.Contact = cloneContact(ct)
		}
		remember(s, ik, c.Idempotency, res, now, cloneChatbotResult)
		return res, nil
	}
	var ctMD map[string]string
	if ct := s.contacts[contactKey{t.tenant, t.platform, t.user}]; ct != nil {
		ctMD = ct.Metadata
	}
	if plan.TooMuchMetadata(&c, ctMD) {
		return store.ChatbotResult{}, store.ErrTooMuchMetadata
	}
	if plan.Close != nil {
		s.end(cur, now)
		closed := cloneSession(&cur.Session)
		res.Closed = &closed
	}
	if plan.Reuse == nil {
		cur = s.open(t, nil, now)
		res.SessionStarted = true
	}
	cur.Metadata = merge(cur.Metadata, c.SessionMetadata)
	cur.State = store.StateBot
	cur.ChatbotID = c.ChatbotID
	cur.UpdatedAt = now
	ct := s.contact(t, now)
	ct.Metadata = merge(ct.Metadata, c.ContactMetadata)
	ct.UpdatedAt = now

	var out store.Outgoing
	if c.Greeting != nil {
		out = c.Greeting(cloneSession(&cur.Session), cloneContact(ct))
	}
	status, perr, delivery := c.GreetingStatus, c.GreetingError, c.GreetingDelivery
	if out.Refused != nil {
		status, perr, delivery = store.StatusFailed, out.Refused, nil
	}
	msg := s.append(cur, store.Message{
		Direction: store.Outbound,
		Text:      out.Text,
		FromUser:  c.ChatbotID,
		Status:    status,
		Error:     perr,
		Template:  cloneTemplate(out.Template),
		Thread:    cur.Thread,
	}, now)
	s.schedule(delivery, &msg, now)
	res.Session = cloneSession(&cur.Session)
	res.Contact = cloneContact(ct)
	res.Greeting = msg
	remember(s, ik, c.Idempotency, res, now, cloneChatbotResult)
	return res, nil
}

// ---- messages ----

func (s *Store) AppendOutbound(_ context.Context, m store.OutboundMessage) (store.Message, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	ik := idemKey{m.Tenant, "post", m.SessionID, m.Idempotency.Key}
	if msg, ok, err := replayed(s, ik, m.Idempotency, now, cloneMessage); ok || err != nil {
		return msg, ok, err
	}
	ses, err := s.lookupActive(m.Tenant, m.SessionID, now)
	if err != nil {
		return store.Message{}, false, err
	}
	msg := s.append(ses, store.Message{
		Direction: store.Outbound,
		Text:      m.Text,
		FromUser:  m.FromUser,
		Status:    m.Status,
		Metadata:  m.Metadata,
		Error:     m.Error,
		Template:  cloneTemplate(m.Template),
		Thread:    ses.Thread,
	}, now)
	s.schedule(m.Delivery, &msg, now)
	remember(s, ik, m.Idempotency, msg, now, cloneMessage)
	return msg, false, nil
}

// Ingest appends under the lock, and judges the candidate listeners'
// keywords outside it: a regular expression over a long text can take
// milliseconds, and no other call, of this tenant or another, waits for
// it. The candidates are taken with the append, so a listener registered
// after the message never is one; deciding them again under the lock is
// each listener's compare-and-set, judged at the message's time, as on
// Redis.
func (s *Store) Ingest(_ context.Context, in store.InboundMessage) (store.IngestResult, error) {
	res, ik, cands, err := s.appendInbound(in)
	if err != nil || res.Replayed || len(cands) == 0 {
		return res, err
	}
	judge := store.NewJudge(res.Message.Text)
	verdicts := make([]bool, len(cands))
	for i, l := range cands {
		verdicts[i] = judge.Text(l.m)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for i, l := range cands {
		if s.listeners[l.ID] != l || !l.live(res.Message.CreatedAt) {
			continue // decided, or gone, meanwhile
		}
		if !verdicts[i] {
			l.SawMismatch = true
			continue
		}
		m := cloneMessage(&res.Message)
		s.decide(l, store.Matched, &m, s.opts.Clock.Now())
		res.Matched = append(res.Matched, l.ID)
	}
	sort.Strings(res.Matched)
	if e := s.idem[ik]; e != nil && len(res.Matched) > 0 {
		e.result.(*store.IngestResult).Matched = slices.Clone(res.Matched)
	}
	return res, nil
}

// appendInbound is Ingest's step under the lock: the idempotency check,
// the session, the append, and the listeners that could match.
func (s *Store) appendInbound(in store.InboundMessage) (store.IngestResult, idemKey, []*listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	t := tuple{in.Tenant, in.Platform, in.Channel, in.User}
	ik := idemKey{in.Tenant, "ingest", t, in.Idempotency.Key}
	if in.SessionID != "" {
		ik.target = in.SessionID
	}
	if r, ok, err := replayed(s, ik, in.Idempotency, now, cloneIngestResult); ok || err != nil {
		r.Replayed = ok
		return r, ik, nil, err
	}
	var res store.IngestResult
	var ses *session
	if in.SessionID != "" {
		var err error
		if ses, err = s.lookupActive(in.Tenant, in.SessionID, now); err != nil {
			return res, ik, nil, err
		}
		if in.User != "" && in.User != ses.User {
			return res, ik, nil, store.ErrSessionMismatch
		}
	} else {
		if ses = s.activeFor(t, now); ses == nil {
			ses = s.open(t, nil, now)
			res.SessionStarted = true
		}
	}
	res.Message = s.append(ses, store.Message{
		Direction: store.Inbound,
		Text:      in.Text,
		FromUser:  ses.User,
		Status:    store.StatusReceived,
		Metadata:  in.Metadata,
		Raw:       in.Raw,
		Thread:    in.Thread,
	}, now)
	if wrote := in.WroteAt(now); wrote.After(ses.LastInboundAt) {
		ses.LastInboundAt = wrote
	}
	ses.Thread = in.Thread
	s.queueForBot(ses, &res.Message, in.Bots, now)
	res.Session = cloneSession(&ses.Session)
	remember(s, ik, in.Idempotency, res, now, cloneIngestResult)
	return res, ik, s.candidates(in.Tenant, &res.Message, now), nil
}

// candidates are the live listeners msg is in scope of. Only the four
// buckets msg can fall into are visited.
func (s *Store) candidates(tenant string, msg *store.Message, now time.Time) []*listener {
	var out []*listener
	for _, b := range [...]bucket{
		{tenant, 's', msg.SessionID},
		{tenant, 'u', msg.FromUser},
		{tenant, 'c', msg.Channel},
		{tenant, '*', ""},
	} {
		for l := range s.buckets[b] {
			if l.live(now) && l.m.Scope(msg) {
				out = append(out, l)
			}
		}
	}
	return out
}

func (s *Store) ListMessages(_ context.Context, tenant, sessionID, afterID string, limit int) ([]store.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ses, err := s.lookup(tenant, sessionID, s.opts.Clock.Now())
	if err != nil {
		return nil, err
	}
	h := &ses.history
	i := 0
	if afterID != "" {
		// The id carries its sequence number. A cursor older than
		// everything retained (trimmed) is fine; one past the last
		// message, or one whose slot holds another message, is not this
		// session's.
		seq, err := ids.MessageSeq(afterID)
		if err != nil || seq > ses.LastSeq {
			return nil, store.ErrMessageNotFound
		}
		if h.len() > 0 && seq >= h.at(0).Seq {
			i = int(seq - h.at(0).Seq + 1)
			if h.at(i-1).ID != afterID {
				return nil, store.ErrMessageNotFound
			}
		}
	}
	end := min(h.len(), i+limit)
	out := make([]store.Message, 0, end-i)
	for j := i; j < end; j++ {
		out = append(out, cloneMessage(h.at(j)))
	}
	return out, nil
}

// ---- listeners ----

func (s *Store) RegisterListener(_ context.Context, nl store.NewListener) (store.Listener, error) {
	m, err := nl.Filter.Compile()
	if err != nil {
		return store.Listener{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.listeners[nl.ID]; dup {
		return store.Listener{}, fmt.Errorf("memory: listener %q already registered", nl.ID)
	}
	now := s.opts.Clock.Now()
	if nl.MaxPending > 0 && len(s.pending[nl.Tenant]) >= nl.MaxPending {
		for l := range s.pending[nl.Tenant] {
			if !l.live(now) {
				delete(s.pending[nl.Tenant], l)
			}
		}
		if len(s.pending[nl.Tenant]) >= nl.MaxPending {
			return store.Listener{}, store.ErrTooManyListeners
		}
	}
	l := &listener{
		Listener: store.Listener{
			ID:        nl.ID,
			Tenant:    nl.Tenant,
			Filter:    nl.Filter,
			CreatedAt: now,
			IdleUntil: now.Add(nl.ResumeWindow),
		},
		m:       m,
		buckets: bucketsOf(nl.Tenant, &nl.Filter),
	}
	if nl.Timeout > 0 {
		l.Deadline = now.Add(nl.Timeout)
	}
	s.listeners[l.ID] = l
	for _, b := range l.buckets {
		set := s.buckets[b]
		if set == nil {
			set = make(map[*listener]struct{})
			s.buckets[b] = set
		}
		set[l] = struct{}{}
	}
	if s.pending[l.Tenant] == nil {
		s.pending[l.Tenant] = make(map[*listener]struct{})
	}
	s.pending[l.Tenant][l] = struct{}{}
	if nl.Filter.AfterMessageID != "" {
		s.matchEarlier(l, now)
	}
	return cloneListener(&l.Listener), nil
}

// matchEarlier decides l with the oldest message already stored that it
// would have matched (Filter.AfterMessageID): under the lock, so no Ingest
// runs meanwhile.
func (s *Store) matchEarlier(l *listener, now time.Time) {
	from, err := ids.MessageMs(l.Filter.AfterMessageID)
	if err != nil {
		return
	}
	var best *store.Message
	judge := map[string]*store.Judge{}
	for _, ses := range s.sessionsInScope(l.Tenant, &l.Filter) {
		h := &ses.history
		for i := max(0, h.len()-store.AfterScan); i < h.len(); i++ {
			m := h.at(i)
			if m.Direction != store.Inbound || m.CreatedAt.UnixMilli() < from || !l.m.Scope(m) {
				continue
			}
			j := judge[m.Text]
			if j == nil {
				j = store.NewJudge(m.Text)
				judge[m.Text] = j
			}
			if !j.Text(l.m) {
				l.SawMismatch = true
				continue
			}
			if best == nil || m.CreatedAt.Before(best.CreatedAt) {
				best = m
			}
			break // this session's later messages are newer
		}
	}
	if best != nil {
		m := cloneMessage(best)
		s.decide(l, store.Matched, &m, now)
	}
}

// sessionsInScope are the sessions a filter with AfterMessageID names: its
// session, or its users' sessions (on its platform and channel, if set).
func (s *Store) sessionsInScope(tenant string, f *store.Filter) []*session {
	if f.SessionID != "" {
		if ses := s.sessions[f.SessionID]; ses != nil && ses.Tenant == tenant {
			return []*session{ses}
		}
		return nil
	}
	var out []*session
	for ses := range s.byTenant[tenant] {
		if f.HasUser(ses.User) && (f.Platform == "" || f.Platform == ses.Platform) && (f.Channel == "" || f.Channel == ses.Channel) {
			out = append(out, ses)
		}
	}
	return out
}

func (s *Store) GetListener(_ context.Context, tenant, id string) (store.Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, err := s.listener(tenant, id, s.opts.Clock.Now())
	if err != nil {
		return store.Listener{}, err
	}
	return cloneListener(&l.Listener), nil
}

func (s *Store) TouchListener(_ context.Context, tenant, id string, until time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, err := s.listener(tenant, id, s.opts.Clock.Now())
	if err != nil {
		return err
	}
	if until.After(l.IdleUntil) {
		l.IdleUntil = until
	}
	return nil
}

func (s *Store) CancelListener(_ context.Context, tenant, id string) (store.Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	l, err := s.listener(tenant, id, now)
	if err != nil {
		return store.Listener{}, err
	}
	if l.Outcome == store.Pending {
		s.decide(l, store.Cancelled, nil, now)
	}
	return cloneListener(&l.Listener), nil
}

// ListListeners scans the tenant's listeners in id order: the memory
// backend holds one process's worth.
func (s *Store) ListListeners(_ context.Context, tenant string, f store.ListenerFilter, after string, limit int) ([]store.Listener, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id, l := range s.listeners {
		if l.Tenant == tenant && id > after {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	now := s.opts.Clock.Now()
	var out []store.Listener
	for i, id := range ids {
		if i == store.ListScan || len(out) == limit {
			return out, ids[i-1], nil
		}
		l, err := s.listener(tenant, id, now)
		if err != nil {
			continue // gone
		}
		if f.Selects(&l.Listener) {
			out = append(out, cloneListener(&l.Listener))
		}
	}
	return out, "", nil
}

// listener returns a listener after applying time: a pending one past its
// deadline is decided now; a dropped or forgotten one is deleted.
func (s *Store) listener(tenant, id string, now time.Time) (*listener, error) {
	l := s.listeners[id]
	if l == nil || l.Tenant != tenant {
		return nil, store.ErrListenerNotFound
	}
	if l.Outcome == store.Pending && !l.Deadline.IsZero() && !now.Before(l.Deadline) {
		kind := store.TimedOut
		if l.SawMismatch {
			kind = store.FilterMismatch
		}
		s.decide(l, kind, nil, now)
	}
	if s.gone(l, now) {
		s.forget(l)
		return nil, store.ErrListenerNotFound
	}
	return l, nil
}

// live reports whether a pending listener can still be matched at now.
func (l *listener) live(now time.Time) bool {
	if l.Outcome != store.Pending {
		return false
	}
	if !l.Deadline.IsZero() {
		return now.Before(l.Deadline)
	}
	return now.Before(l.IdleUntil)
}

// gone reports whether the contract says l no longer exists at now.
func (s *Store) gone(l *listener, now time.Time) bool {
	if l.Outcome != store.Pending {
		return !now.Before(l.DecidedAt.Add(s.opts.OutcomeRetention))
	}
	return l.Deadline.IsZero() && !now.Before(l.IdleUntil)
}

func (s *Store) decide(l *listener, kind store.OutcomeKind, msg *store.Message, now time.Time) {
	l.Outcome, l.Message, l.DecidedAt = kind, msg, now
	s.unindex(l)
	s.publish(store.ListenerTopic(l.Tenant, l.ID), func() store.Event {
		snap := cloneListener(&l.Listener)
		return store.Event{Kind: store.EventListenerResolved, ListenerID: l.ID, Listener: &snap}
	})
}

// unindex takes a decided or forgotten listener out of the index and the
// tenant's pending listeners.
func (s *Store) unindex(l *listener) {
	for _, b := range l.buckets {
		if set := s.buckets[b]; set != nil {
			delete(set, l)
			if len(set) == 0 {
				delete(s.buckets, b)
			}
		}
	}
	if set := s.pending[l.Tenant]; set != nil {
		delete(set, l)
		if len(set) == 0 {
			delete(s.pending, l.Tenant)
		}
	}
}

func (s *Store) forget(l *listener) {
	s.unindex(l)
	delete(s.listeners, l.ID)
}

// ---- broker ----

func (s *Store) Subscribe(_ context.Context, topic store.Topic) (*store.Subscription, error) {
	var sub *store.Subscription
	sub = store.NewSubscription(func() {
		s.subsMu.Lock()
		defer s.subsMu.Unlock()
		if set := s.subs[topic]; set != nil {
			delete(set, sub)
			if len(set) == 0 {
				delete(s.subs, topic)
			}
		}
	})
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	set := s.subs[topic]
	if set == nil {
		set = make(map[*store.Subscription]struct{})
		s.subs[topic] = set
	}
	set[sub] = struct{}{}
	return sub, nil
}

// publish delivers an event to topic's subscribers. The event is built only
// if there are any: most appends have no watcher.
func (s *Store) publish(topic store.Topic, event func() store.Event) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	subs := s.subs[topic]
	if len(subs) == 0 {
		return
	}
	e := event()
	for sub := range subs {
		sub.Publish(e)
	}
}

// ---- internals; s.mu held ----

// settle turns an active session past its expiry into EXPIRED.
func (s *Store) settle(ses *session, now time.Time) {
	if ses.State.Active() && !now.Before(ses.ExpiresAt) {
		ses.State = store.StateExpired
		ses.UpdatedAt = ses.ExpiresAt
		t := tuple{ses.Tenant, ses.Platform, ses.Channel, ses.User}
		if s.active[t] == ses {
			delete(s.active, t)
		}
	}
}

func (s *Store) lookup(tenant, id string, now time.Time) (*session, error) {
	ses := s.sessions[id]
	if ses == nil || ses.Tenant != tenant {
		return nil, store.ErrSessionNotFound
	}
	s.settle(ses, now)
	return ses, nil
}

func (s *Store) lookupActive(tenant, id string, now time.Time) (*session, error) {
	ses, err := s.lookup(tenant, id, now)
	if err != nil {
		return nil, err
	}
	if !ses.State.Active() {
		return nil, endedErr(ses.State)
	}
	return ses, nil
}

func endedErr(st store.SessionState) error {
	if st == store.StateExpired {
		return store.ErrSessionExpired
	}
	return store.ErrSessionClosed
}

func (s *Store) activeFor(t tuple, now time.Time) *session {
	ses := s.active[t]
	if ses == nil {
		return nil
	}
	s.settle(ses, now)
	if !ses.State.Active() {
		return nil
	}
	return ses
}

func (s *Store) open(t tuple, md map[string]string, now time.Time) *session {
	ses := &session{Session: store.Session{
		ID:             ids.Session(),
		Tenant:         t.tenant,
		Platform:       t.platform,
		Channel:        t.channel,
		User:           t.user,
		State:          store.StateOpen,
		Metadata:       merge(nil, md),
		CreatedAt:      now,
		UpdatedAt:      now,
		LastActivityAt: now,
		ExpiresAt:      now.Add(s.opts.SessionTTL),
	}}
	s.sessions[ses.ID] = ses
	s.active[t] = ses
	if s.byTenant[t.tenant] == nil {
		s.byTenant[t.tenant] = make(map[*session]struct{})
	}
	s.byTenant[t.tenant][ses] = struct{}{}
	s.contact(t, now)
	return ses
}

func (s *Store) end(ses *session, now time.Time) {
	ses.State = store.StateClosed
	ses.ChatbotID = ""
	ses.UpdatedAt, ses.ExpiresAt = now, now
	t := tuple{ses.Tenant, ses.Platform, ses.Channel, ses.User}
	if s.active[t] == ses {
		delete(s.active, t)
	}
	s.publish(store.SessionTopic(ses.Tenant, ses.ID), func() store.Event {
		snap := cloneSession(&ses.Session)
		return store.Event{Kind: store.EventSessionEnded, SessionID: ses.ID, Session: &snap}
	})
}

// contact returns the contact of t, creating it.
func (s *Store) contact(t tuple, now time.Time) *store.Contact {
	k := contactKey{t.tenant, t.platform, t.user}
	ct := s.contacts[k]
	if ct == nil {
		ct = &store.Contact{Tenant: t.tenant, Platform: t.platform, User: t.user, CreatedAt: now, UpdatedAt: now}
		s.contacts[k] = ct
	}
	return ct
}

// append stores m in ses's history, refreshing the session's expiry, and
// publishes it. It returns a copy.
func (s *Store) append(ses *session, m store.Message, now time.Time) store.Message {
	ses.LastSeq++
	ses.lastMs = max(ses.lastMs, now.UnixMilli())
	m.ID = ids.Message(ses.lastMs, ses.LastSeq)
	m.Seq = ses.LastSeq
	m.SessionID = ses.ID
	m.Platform, m.Channel = ses.Platform, ses.Channel
	m.CreatedAt, m.StatusAt = now, now
	m.Metadata = merge(nil, m.Metadata)
	ses.LastMessageID = m.ID
	ses.LastActivityAt = now
	ses.ExpiresAt = now.Add(s.opts.SessionTTL)
	ses.history.push(m, s.opts.HistoryLimit)
	s.publish(store.SessionTopic(ses.Tenant, ses.ID), func() store.Event {
		ev := cloneMessage(&m)
		return store.Event{Kind: store.EventMessage, SessionID: ses.ID, Message: &ev}
	})
	return cloneMessage(&m)
}

// replayed returns a copy of the remembered result of an idempotent
// call, and whether there is one.
func replayed[T any](s *Store, k idemKey, idem store.Idempotency, now time.Time, clone func(*T) T) (r T, ok bool, err error) {
	if idem.Key == "" {
		return r, false, nil
	}
	e := s.idem[k]
	if e == nil || !now.Before(e.expires) {
		return r, false, nil
	}
	if e.fingerprint != idem.Fingerprint {
		return r, false, store.ErrIdempotencyKeyReused
	}
	return clone(e.result.(*T)), true, nil
}

// remember records a copy of the result of an idempotent call: the caller
// may change the one it was given. Generic, like replayed, so that a call
// without a key does not box its result.
func remember[T any](s *Store, k idemKey, idem store.Idempotency, result T, now time.Time, clone func(*T) T) {
	if idem.Key == "" {
		return
	}
	kept := clone(&result)
	s.idem[k] = &idemEntry{fingerprint: idem.Fingerprint, expires: now.Add(s.opts.IdempotencyTTL), result: &kept}
}

// ---- sweeping ----

func (s *Store) sweepLoop() {
	defer close(s.done)
	t := time.NewTicker(s.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.Sweep()
			s.sweepLimiters(s.opts.Clock.Now())
		}
	}
}

// Sweep frees records the contract says are gone. Correctness never waits
// for it; it only bounds memory.
func (s *Store) Sweep() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Clock.Now()
	inUse := make(map[contactKey]struct{})
	for id, ses := range s.sessions {
		s.settle(ses, now)
		if !ses.State.Active() && !now.Before(ses.ExpiresAt.Add(s.opts.EndedRetention)) {
			delete(s.sessions, id)
			if set := s.byTenant[ses.Tenant]; set != nil {
				if delete(set, ses); len(set) == 0 {
					delete(s.byTenant, ses.Tenant)
				}
			}
			continue
		}
		inUse[contactKey{ses.Tenant, ses.Platform, ses.User}] = struct{}{}
	}
	// A contact lives as long as any retained session of its user, and at
	// least EndedRetention after its last change.
	for k, ct := range s.contacts {
		if _, used := inUse[k]; !used && !now.Before(ct.UpdatedAt.Add(s.opts.EndedRetention)) {
			delete(s.contacts, k)
		}
	}
	for k, e := range s.idem {
		if !now.Before(e.expires) {
			delete(s.idem, k)
		}
	}
	for k, ref := range s.platformIDs {
		if !now.Before(ref.expires) {
			delete(s.platformIDs, k)
		}
	}
	for _, l := range s.listeners {
		_, _ = s.listener(l.Tenant, l.ID, now)
	}
}

// ---- copies ----

func merge(dst, src map[string]string) map[string]string {
	if len(src) == 0 {
		return dst
	}
	if dst == nil {
		dst = make(map[string]string, len(src))
	}
	for k, v := range src {
		dst[k] = v
	}
	return dst
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	return merge(make(map[string]string, len(m)), m)
}

func cloneSession(s *store.Session) store.Session {
	c := *s
	c.Metadata = cloneMap(s.Metadata)
	return c
}

func cloneContact(c *store.Contact) store.Contact {
	out := *c
	out.Metadata = cloneMap(c.Metadata)
	return out
}

func cloneMessage(m *store.Message) store.Message {
	c := *m
	c.Metadata = cloneMap(m.Metadata)
	c.Raw = slices.Clone(m.Raw)
	if m.Error != nil {
		e := *m.Error
		c.Error = &e
	}
	c.Template = cloneTemplate(m.Template)
	return c
}

func cloneTemplate(t *store.Template) *store.Template {
	if t == nil {
		return nil
	}
	c := *t
	c.Parameters = slices.Clone(t.Parameters)
	return &c
}

func cloneIngestResult(r *store.IngestResult) store.IngestResult {
	c := *r
	c.Message = cloneMessage(&r.Message)
	c.Session = cloneSession(&r.Session)
	c.Matched = slices.Clone(r.Matched)
	return c
}

func cloneChatbotResult(r *store.ChatbotResult) store.ChatbotResult {
	c := *r
	c.Session = cloneSession(&r.Session)
	c.Contact = cloneContact(&r.Contact)
	c.Greeting = cloneMessage(&r.Greeting)
	if r.Closed != nil {
		closed := cloneSession(r.Closed)
		c.Closed = &closed
	}
	return c
}

func cloneListener(l *store.Listener) store.Listener {
	c := *l
	c.Filter.Users = slices.Clone(l.Filter.Users)
	if l.Message != nil {
		m := cloneMessage(l.Message)
		c.Message = &m
	}
	return c
}

// Package store holds chatrelay's domain types and the storage contract that
// every backend honours: store/memory (one process) and store/redisstore (N
// replicas). store/storetest is the conformance suite both must pass.
//
// Contract common to every method:
//   - ctx comes first and bounds the call; a backend that cannot reach its
//     storage returns an error wrapping ErrUnavailable.
//   - Every record belongs to a tenant. A record of another tenant is reported
//     exactly as a missing one, so ids never leak across tenants.
//   - Time is the backend's Clock. Expiry is exact to the clock, not to a
//     sweeper: a session past ExpiresAt reads as EXPIRED at once.
//   - Returned values are copies; callers may keep and modify them.
//   - Methods are safe for concurrent use.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Errors returned by stores. Match them with errors.Is.
var (
	ErrSessionNotFound  = errors.New("session not found")
	ErrSessionClosed    = errors.New("session closed")
	ErrSessionExpired   = errors.New("session expired")
	ErrSessionExists    = errors.New("an active session exists for this platform, channel and user")
	ErrListenerNotFound = errors.New("listener not found")
	// ErrIdempotencyKeyReused: the key was first used with a different
	// request within its retention.
	ErrIdempotencyKeyReused = errors.New("idempotency key reused with a different request")
	// ErrSessionMismatch: a session id was given that belongs to another
	// channel or user than the request names.
	ErrSessionMismatch = errors.New("session belongs to another channel or user")
	// ErrMessageNotFound: a cursor names no message of the session.
	ErrMessageNotFound = errors.New("message not found in session")
	// ErrUnavailable: the backend cannot be reached; the call may be retried.
	ErrUnavailable = errors.New("backend unavailable")
	// ErrTooManyListeners: the tenant has NewListener.MaxPending listeners
	// pending already.
	ErrTooManyListeners = errors.New("too many pending listeners")
	// ErrTooMuchMetadata: the update would leave a session's or a
	// contact's metadata with more entries than the caller's MaxMetadata.
	ErrTooMuchMetadata = errors.New("metadata would hold too many entries")
)

// SessionState is a session's lifecycle state (docs/design.md §2).
type SessionState int

const (
	StateOpen SessionState = iota + 1
	StateBot
	StateInProgress
	StateClosed
	StateExpired
)

// Active reports whether the state counts towards the one-active-session rule.
func (s SessionState) Active() bool {
	return s == StateOpen || s == StateBot || s == StateInProgress
}

func (s SessionState) String() string {
	switch s {
	case StateOpen:
		return "OPEN"
	case StateBot:
		return "BOT"
	case StateInProgress:
		return "IN_PROGRESS"
	case StateClosed:
		return "CLOSED"
	case StateExpired:
		return "EXPIRED"
	}
	return "UNSPECIFIED"
}

// Session is one conversation between a contact and a tenant on one channel.
type Session struct {
	ID        string
	Tenant    string
	Platform  string
	Channel   string
	User      string
	State     SessionState
	ChatbotID string
	Metadata  map[string]string

	CreatedAt      time.Time
	UpdatedAt      time.Time
	LastActivityAt time.Time
	// ExpiresAt is when an active session expires unless a message comes
	// first; for an ended session it is when it ended.
	ExpiresAt time.Time

	// LastSeq and LastMessageID describe the newest message appended (zero
	// and "" before the first). Watchers use them as a live-only cursor.
	LastSeq       uint64
	LastMessageID string

	// LastInboundAt is when the user last wrote (zero before the first
	// message): the newest of its messages' InboundMessage.SentAt, by the
	// platform's clock (the store's now for a message without one), and
	// never later than when the hub took it.
	// WhatsApp's reply window runs from it.
	LastInboundAt time.Time
	// Thread is the thread the user's newest message was in (its
	// InboundMessage.Thread; "" when none). Outbound messages appended to
	// the session go to it (Message.Thread).
	Thread string
}

// Contact is a tenant's record of a user on a platform.
type Contact struct {
	Tenant    string
	Platform  string
	User      string
	Metadata  map[string]string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Direction says who said a message.
type Direction int

const (
	Inbound Direction = iota + 1
	Outbound
)

// MessageStatus is a message's delivery state.
type MessageStatus int

// The values are stored: new ones are added at the end.
const (
	StatusReceived MessageStatus = iota + 1
	StatusDelivered
	StatusFailed
	StatusPending
	StatusSent
	StatusRead
)

// stage orders outbound statuses: a message only moves to a later stage.
var stage = map[MessageStatus]int{StatusPending: 1, StatusSent: 2, StatusDelivered: 3, StatusRead: 4}

// Advances reports whether an outbound message in status s may move to
// next (docs/design.md §9): forward only, PENDING → SENT → DELIVERED → READ,
// steps skipped at will; FAILED from any of them but READ. A repeated or
// stale status does not advance, nor does anything after FAILED.
func (s MessageStatus) Advances(next MessageStatus) bool {
	from, ok := stage[s]
	if !ok {
		return false // FAILED, RECEIVED: final
	}
	if next == StatusFailed {
		return s != StatusRead
	}
	to, ok := stage[next]
	return ok && to > from
}

// Settled reports whether an outbound message in status s is done with
// delivery: the platform took it, or it failed.
func (s MessageStatus) Settled() bool { return s != StatusPending }

// PlatformError is a platform's refusal of an outbound message.
type PlatformError struct {
	Code    string
	Message string
}

// Message is one chat message in a session.
type Message struct {
	// ID is msg_<uuidv7> made by ids.Message: within a session IDs
	// strictly increase (as strings) in append order, and the ID carries
	// Seq, so "after ID x" is a valid cursor even when x itself has been
	// trimmed from history.
	ID string
	// Seq numbers a session's messages 1, 2, 3… in append order, with no
	// gaps. Watchers use it to detect a missed event.
	Seq       uint64
	SessionID string
	Direction Direction
	Text      string
	FromUser  string
	Platform  string
	Channel   string
	CreatedAt time.Time
	Status    MessageStatus
	Metadata  map[string]string
	// Raw is the ingested platform payload as a JSON object, or nil.
	Raw   json.RawMessage
	Error *PlatformError
	// PlatformID is the platform's id of an outbound message once it took
	// it (a Slack ts, a WhatsApp wamid): receipts name it.
	PlatformID string
	// StatusAt is when Status last changed (CreatedAt until it does).
	StatusAt time.Time
	// Template, on an outbound message, is the WhatsApp template it is
	// sent as instead of its text; nil for text.
	Template *Template
	// Thread is the platform thread the message is in: an inbound
	// message's own, an outbound message's its session's when appended.
	Thread string
}

// Template is a WhatsApp message template with its body's parameters.
type Template struct {
	Name       string
	Language   string
	Parameters []string
}

// Outgoing is an outbound message as the server composed it for its
// session: its text and, for WhatsApp outside the reply window, the
// template it goes as; or, when it cannot be sent at all, Refused.
type Outgoing struct {
	Text     string
	Template *Template
	// Refused, when set, records the message FAILED with this error,
	// and without a delivery.
	Refused *PlatformError
}

// Idempotency identifies a request that must take effect at most once within
// the backend's idempotency retention (24 h by default). Fingerprint is a
// digest of the request; the same Key with another Fingerprint fails with
// ErrIdempotencyKeyReused. A zero Idempotency (empty Key) disables it.
//
// A key is scoped to the tenant, the operation and the resource the request
// addresses: the session for AppendOutbound and for Ingest with a SessionID;
// the (platform, channel, user) tuple for StartChatbot and for Ingest
// without one. (This keeps a key next to the records it guards, so a
// sharded backend can check and record it in the same atomic step.)
type Idempotency struct {
	Key         string
	Fingerprint string
}

// NewSession describes a session to open.
type NewSession struct {
	Tenant   string
	Platform string
	Channel  string
	User     string
	Metadata map[string]string
}

// SessionUpdate changes an active session. Zero fields change nothing.
type SessionUpdate struct {
	// State, when set, must be StateOpen or StateInProgress; either ends a
	// running chatbot.
	State SessionState
	// RemoveMetadata keys are deleted before Metadata is merged in.
	RemoveMetadata []string
	Metadata       map[string]string
	// EndBot clears the chatbot; the state becomes OPEN unless State is set.
	EndBot bool
	// IfChatbot, when set, makes the update conditional: it is made only
	// while the session is BOT with this chatbot, and otherwise nothing
	// changes and the session is returned as it stands. A running
	// chatbot's end and handoff use it, so that they never end another
	// chatbot that started meanwhile (docs/design.md §9).
	IfChatbot string
	// MaxMetadata, when set, refuses the update (ErrTooMuchMetadata,
	// nothing changed) if the metadata would then hold more entries, and
	// more than it holds now (an update that adds nothing always goes
	// through): a request's own entries are bounded, and this bounds what
	// many of them add up to.
	MaxMetadata int
}

// MetadataGrowsPast reports whether removing remove from cur and merging
// patch in leaves more than most entries, and more than cur holds: what
// MaxMetadata refuses.
func MetadataGrowsPast(most int, cur map[string]string, remove []string, patch map[string]string) bool {
	n := mergedMetadataLen(cur, remove, patch)
	return most > 0 && n > most && n > len(cur)
}

// mergedMetadataLen is how many entries cur holds once remove are deleted
// and patch merged in.
func mergedMetadataLen(cur map[string]string, remove []string, patch map[string]string) int {
	keys := make(map[string]struct{}, len(cur)+len(patch))
	for k := range cur {
		keys[k] = struct{}{}
	}
	for _, k := range remove {
		delete(keys, k)
	}
	for k := range patch {
		keys[k] = struct{}{}
	}
	return len(keys)
}

// OutboundMessage is a message to append to an active session.
type OutboundMessage struct {
	Tenant    string
	SessionID string
	Text      string
	FromUser  string
	Metadata  map[string]string
	// Status and Error record how delivery went, when it is known at
	// once (web and api sessions, or a refusal without a platform). With
	// Delivery set, Status is PENDING and Delivery finishes it.
	Status      MessageStatus
	Error       *PlatformError
	Delivery    *Delivery
	Idempotency Idempotency
	// Template, when set, is the WhatsApp template the message goes as.
	Template *Template
}

// InboundMessage is a user's message handed to the hub.
type InboundMessage struct {
	Tenant   string
	Platform string
	Channel  string
	User     string
	// SessionID, when set, names the active session to append to, and User
	// must be empty or the session's user (ErrSessionMismatch). Platform
	// and Channel are then only a hint of the session's own, which a store
	// may use to look for listeners sooner; a wrong or missing hint changes
	// nothing but the cost. When SessionID is empty, the active session of
	// (Platform, Channel, User) is used or opened.
	SessionID   string
	Text        string
	Metadata    map[string]string
	Raw         json.RawMessage
	Idempotency Idempotency
	// Thread is the platform thread the message was in ("" for none): it
	// becomes the session's Thread.
	Thread string
	// SentAt is when the platform says the user sent the message (zero
	// when it does not say). A message the platform delivers late keeps
	// its own time: the session's LastInboundAt becomes the later of its
	// own and SentAt, with SentAt taken as now when zero or later than
	// now.
	SentAt time.Time
	// Bots are the chatbots that run on a webhook (docs/design.md §9).
	// When the session is BOT with one of them, the message is queued for
	// it, with the append: the session's queue is delivered in order, one
	// message at a time, as deliveries whose claims name the chatbot
	// (DeliveryClaim.Bot).
	Bots []string
}

// WroteAt is when the user wrote the message, for its session's
// LastInboundAt: SentAt, or now when SentAt is zero or later than now.
func (in *InboundMessage) WroteAt(now time.Time) time.Time {
	if in.SentAt.IsZero() || in.SentAt.After(now) {
		return now
	}
	return in.SentAt
}

// IngestResult is what Ingest did.
type IngestResult struct {
	Message        Message
	Session        Session
	SessionStarted bool
	// Matched lists the listeners this message resolved.
	Matched []string
	// Replayed is true when the idempotency key had been seen: the result is
	// the first call's and nothing was ingested.
	Replayed bool
}

// SkipReason says why StartChatbot changed nothing.
type SkipReason int

const (
	NotSkipped SkipReason = iota
	SkipBotInExecution
	SkipInProgress
)

// ChatbotStart is SendChatbotMessage's atomic step (docs/design.md §3).
type ChatbotStart struct {
	Tenant    string
	Platform  string
	Channel   string
	User      string
	SessionID string
	ChatbotID string

	ForceStart           bool
	SkipIfBotInExecution bool
	SkipIfInProgress     bool
	SessionMetadata      map[string]string
	ContactMetadata      map[string]string
	// MaxMetadata, when set, refuses the start (ErrTooMuchMetadata,
	// nothing changed) if the session's or the contact's metadata would
	// then hold more entries, and more than it holds now.
	MaxMetadata int
	Idempotency Idempotency
	// Greeting composes the chatbot's first message from the session and
	// contact as they will be committed. It must be pure: a backend may call
	// it more than once (optimistic retries) and keeps only the last result.
	// A greeting it refuses (Outgoing.Refused) is appended FAILED with
	// that error, and without GreetingDelivery.
	Greeting func(Session, Contact) Outgoing
	// GreetingStatus and GreetingError record how the platform took the
	// greeting, when it is known at once; with GreetingDelivery set,
	// GreetingStatus is PENDING and the delivery finishes it.
	GreetingStatus   MessageStatus
	GreetingError    *PlatformError
	GreetingDelivery *Delivery
}

// ChatbotResult is what StartChatbot did.
type ChatbotResult struct {
	Skip           SkipReason
	Session        Session
	SessionStarted bool
	Contact        Contact
	// Greeting is the appended greeting; zero when skipped.
	Greeting Message
	// Closed is the session force_start closed, if any.
	Closed   *Session
	Replayed bool
}

// Sessions stores sessions and contacts.
type Sessions interface {
	// CreateSession opens a session in state OPEN and upserts its contact.
	// ErrSessionExists when an active one exists for the tuple, with a
	// Session that holds only that one's ID.
	CreateSession(ctx context.Context, s NewSession) (Session, error)
	// GetSession returns the session, reading EXPIRED once past ExpiresAt.
	GetSession(ctx context.Context, tenant, id string) (Session, error)
	// UpdateSession applies u to an active session (ErrSessionClosed or
	// ErrSessionExpired otherwise).
	UpdateSession(ctx context.Context, tenant, id string, u SessionUpdate) (Session, error)
	// CloseSession ends a session and publishes EventSessionEnded. Closing
	// an ended session changes nothing and returns it as it is.
	CloseSession(ctx context.Context, tenant, id string) (Session, error)
	// StartChatbot applies SendChatbotMessage's rules atomically: find the
	// active session; skip; force-start (closing the old one); open; merge
	// metadata; set BOT; append the rendered greeting as an outbound message.
	StartChatbot(ctx context.Context, c ChatbotStart) (ChatbotResult, error)
	// GetContact returns the tenant's contact of user on platform; one
	// without metadata (and zero times) when there is none.
	GetContact(ctx context.Context, tenant, platform, user string) (Contact, error)
	// ListSessions returns up to limit of the tenant's sessions that f
	// selects, newest activity first (LastActivityAt, then ID, both
	// descending, to the millisecond), starting after the cursor (the zero
	// cursor: the newest), and the cursor to go on from: zero when there
	// is no more. A page may hold fewer than limit sessions and still have
	// a next cursor (a backend bounds how many it looks at per call).
	// Sessions deleted after EndedRetention are not listed.
	ListSessions(ctx context.Context, tenant string, f SessionFilter, after SessionCursor, limit int) ([]Session, SessionCursor, error)
}

// SessionFilter selects sessions; empty fields select any.
type SessionFilter struct {
	Platform string
	Channel  string
	User     string
	State    SessionState
}

// Selects reports whether s passes f.
func (f *SessionFilter) Selects(s *Session) bool {
	return (f.Platform == "" || f.Platform == s.Platform) && (f.Channel == "" || f.Channel == s.Channel) &&
		(f.User == "" || f.User == s.User) && (f.State == 0 || f.State == s.State)
}

// SessionCursor is a place in a listing: after the session with this last
// activity and id.
type SessionCursor struct {
	At time.Time
	ID string
}

// CursorAt is the cursor just after s.
func CursorAt(s *Session) SessionCursor { return SessionCursor{At: s.LastActivityAt, ID: s.ID} }

// Before reports whether s comes after the cursor in a listing (newest
// activity first).
func (c SessionCursor) Before(s *Session) bool {
	if c.ID == "" {
		return true
	}
	at := s.LastActivityAt.UnixMilli()
	return at < c.At.UnixMilli() || (at == c.At.UnixMilli() && s.ID < c.ID)
}

// Messages stores session history.
type Messages interface {
	// AppendOutbound appends to an active session, refreshes its TTL and
	// publishes EventMessage. With an idempotency key seen before, it returns
	// the first call's message and appends nothing (replayed = true). The
	// message carries the session's platform, channel and Thread.
	AppendOutbound(ctx context.Context, m OutboundMessage) (msg Message, replayed bool, err error)
	// Ingest appends an inbound message (opening a session when needed),
	// moves the session's LastInboundAt up to the message's SentAt (now,
	// when it has none) and sets its Thread to the message's, resolves every pending
	// listener it matches, records the channel/user/session-but-not-keyword
	// sighting on the others, and publishes the events — all as one atomic
	// step.
	Ingest(ctx context.Context, in InboundMessage) (IngestResult, error)
	// ListMessages returns up to limit retained messages with ID > afterID
	// (all when afterID is empty), oldest first. It works for ended sessions.
	ListMessages(ctx context.Context, tenant, sessionID, afterID string, limit int) ([]Message, error)
}

// Listeners stores ChatReceive registrations (docs/design.md §4).
type Listeners interface {
	// RegisterListener stores a pending listener. When it returns, every
	// later Ingest considers it. With MaxPending set, a tenant that has that
	// many listeners pending gets ErrTooManyListeners; a listener stops
	// counting once it is decided, timed out or dropped, even if nobody has
	// read it since.
	//
	// With Filter.AfterMessageID set, it then looks for an inbound message
	// already stored that the listener would have matched: in scope, not
	// older than that message, among the newest AfterScan messages of each
	// session in scope (the filter's session, or its users' sessions). The
	// oldest such message matches the listener at once, by the same
	// compare-and-set as an Ingest's, and the listener is returned decided.
	// An Ingest racing the registration is seen by one of the two.
	RegisterListener(ctx context.Context, l NewListener) (Listener, error)
	// GetListener returns a listener. A pending one past its deadline is
	// resolved as timed out by this call (unless something else resolved it
	// first) and EventListenerResolved is published. A pending one without a
	// deadline whose idle window has passed is gone (ErrListenerNotFound), as
	// is any outcome older than the outcome retention.
	GetListener(ctx context.Context, tenant, id string) (Listener, error)
	// TouchListener extends a pending listener's idle window to until (a
	// stream is attached or has just detached). It never shortens it.
	TouchListener(ctx context.Context, tenant, id string, until time.Time) error
	// CancelListener decides a pending listener Cancelled, by the same
	// compare-and-set as matching and timing out: one past its deadline
	// has timed out instead. EventListenerResolved is published. A decided
	// listener is returned as it is. ErrListenerNotFound as GetListener.
	CancelListener(ctx context.Context, tenant, id string) (Listener, error)
	// ListListeners returns the tenant's listeners f selects, pending ones
	// and decided ones within the outcome retention, in id order after the
	// id after: at most limit, and the id to go on from ("" after the
	// last). It reads at most ListScan listeners per call, so a page can be
	// short, or empty, with more to come. Reading changes nothing but
	// timeouts already due (as GetListener).
	ListListeners(ctx context.Context, tenant string, f ListenerFilter, after string, limit int) ([]Listener, string, error)
}

// AfterScan is how many of each session's newest messages RegisterListener
// looks through for a reply that came before the listener
// (Filter.AfterMessageID).
const AfterScan = 256

// ListScan is how many listeners ListListeners reads per call at most.
const ListScan = 1000

// Rate is a budget of Burst calls, refilled at PerSecond.
type Rate struct {
	PerSecond float64
	Burst     int
}

// Limiter keeps rate budgets by key (a generic cell rate algorithm): API
// keys' limits, and failed authentications per client address. A backend
// shared by replicas shares the budgets: N replicas together allow what
// one would.
type Limiter interface {
	// Take takes n calls from key's budget under r and answers 0, or, when
	// the budget does not hold n now, takes nothing and answers how long
	// until it will. n = 0 only looks: it answers how long until the
	// budget holds one call.
	Take(ctx context.Context, key string, r Rate, n int) (wait time.Duration, err error)
}

// Stats are a backend's own counters, for metrics.
type Stats struct {
	// PubSubReconnects counts lost and remade pub/sub connections.
	PubSubReconnects uint64
	// QueuedCalls is how many calls wait for a pipeline now.
	QueuedCalls int
}

// StatsReporter is a backend that keeps Stats (redisstore does; memory has
// nothing to report).
type StatsReporter interface {
	Stats() Stats
}

// Store is a complete backend.
type Store interface {
	Sessions
	Messages
	Deliveries
	Listeners
	Broker
	Limiter
	// Ping reports whether the backend is reachable.
	Ping(ctx context.Context) error
	// Close stops what the store started (never what it was handed, such
	// as a Redis client). It is safe to call more than once, concurrently.
	Close() error
}

package store

import (
	"context"
	"sync"
	"time"
)

// EventKind says what changed.
type EventKind int

const (
	// EventMessage: Message was appended to session SessionID.
	EventMessage EventKind = iota + 1
	// EventSessionEnded: session SessionID closed; Session is its new state.
	EventSessionEnded
	// EventListenerResolved: listener ListenerID has its outcome.
	EventListenerResolved
	// EventMessageStatus: an outbound message of session SessionID
	// changed status; Status says how.
	EventMessageStatus
)

// StatusChange is an outbound message's new delivery status.
type StatusChange struct {
	MessageID  string
	Seq        uint64
	Status     MessageStatus
	PlatformID string
	At         time.Time
	Error      *PlatformError
}

// Event is a change notification. Events are hints for speed: a consumer that
// is told to resync (Subscription.Next) re-reads the store, so a backend may
// coalesce or lose events as long as it then asks for a resync.
type Event struct {
	Kind       EventKind
	SessionID  string
	ListenerID string
	// Message is always set on EventMessage.
	Message *Message
	// Session (on EventSessionEnded) and Listener (on
	// EventListenerResolved) may be nil: the consumer then reads the
	// record from the store.
	Session  *Session
	Listener *Listener
	// Status is set on EventMessageStatus.
	Status *StatusChange
}

// Topic names a stream of events: one session's or one listener's.
type Topic struct {
	Tenant string
	// Exactly one of SessionID and ListenerID is set.
	SessionID  string
	ListenerID string
}

// SessionTopic is the topic of a session's messages and end.
func SessionTopic(tenant, id string) Topic { return Topic{Tenant: tenant, SessionID: id} }

// ListenerTopic is the topic of a listener's outcome.
func ListenerTopic(tenant, id string) Topic { return Topic{Tenant: tenant, ListenerID: id} }

// Broker delivers events to subscribers on this process, whichever replica
// caused them.
type Broker interface {
	// Subscribe starts delivery of topic's events. Every event of a change
	// committed after Subscribe returns is delivered, or a resync is
	// signalled in its place. The caller must Close the subscription.
	Subscribe(ctx context.Context, topic Topic) (*Subscription, error)
}

// maxQueued bounds a subscription's backlog. A consumer that falls further
// behind gets a resync instead of more events, so a slow stream never makes
// its publisher block or the process grow without bound.
const maxQueued = 256

// Subscription is one consumer's queue of events. Publishers never block on
// it.
type Subscription struct {
	mu      sync.Mutex
	queue   []Event
	resync  bool
	closed  bool
	ready   chan struct{}
	onClose func()
}

// NewSubscription returns an empty subscription; onClose runs once on Close.
// Backends use it; consumers get subscriptions from Broker.Subscribe.
func NewSubscription(onClose func()) *Subscription {
	return &Subscription{ready: make(chan struct{}, 1), onClose: onClose}
}

// Ready is signalled when Next has something to return.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Next takes everything queued. When resync is true, events may have been
// lost before those returned: re-read the store's state before going on.
func (s *Subscription) Next() (events []Event, resync bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	events, resync = s.queue, s.resync
	s.queue, s.resync = nil, false
	return events, resync
}

// Publish queues e (a backend's side).
func (s *Subscription) Publish(e Event) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if len(s.queue) >= maxQueued {
		s.queue, s.resync = nil, true
	} else {
		s.queue = append(s.queue, e)
	}
	s.mu.Unlock()
	s.signal()
}

// Resync tells the consumer it may have missed events (a backend's side,
// e.g. after a pub/sub reconnect).
func (s *Subscription) Resync() {
	s.mu.Lock()
	s.queue, s.resync = nil, !s.closed
	s.mu.Unlock()
	s.signal()
}

func (s *Subscription) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Close stops delivery. It is safe to call more than once.
func (s *Subscription) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.queue = nil
	s.mu.Unlock()
	if s.onClose != nil {
		s.onClose()
	}
}

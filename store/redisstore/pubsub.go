package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/store"
)

// Subscribe delivers a topic's events through this replica's one pub/sub
// connection. It returns once Redis has confirmed the channel, so every
// change committed afterwards is delivered (or a resync is signalled). No
// round trip when the channel is already subscribed; else one on the
// pub/sub connection.
func (s *Store) Subscribe(ctx context.Context, t store.Topic) (*store.Subscription, error) {
	if t.SessionID != "" {
		return s.hub.subscribe(ctx, s.sessionChannel(t.Tenant, t.SessionID), t)
	}
	return s.hub.subscribe(ctx, s.listenerChannel(t.Tenant, t.ListenerID), t)
}

// hub multiplexes every subscription of a replica over one pub/sub
// connection, reference-counted per channel. Pub/sub is fire-and-forget:
// after the connection drops, go-redis reconnects and resubscribes, and
// the hub then tells every subscriber to resync (re-read the store), since
// anything published meanwhile is lost.
type hub struct {
	ps  *redis.PubSub
	log *slog.Logger

	// cmdMu orders SUBSCRIBE and UNSUBSCRIBE commands with the map
	// updates they go with.
	cmdMu sync.Mutex
	mu    sync.Mutex
	chans map[string]*channel

	// idleAfter is how long a channel without subscribers stays
	// subscribed; sweepEvery how often that is checked. sweeps counts the
	// checks, for tests.
	idleAfter, sweepEvery time.Duration
	sweeps                atomic.Int64
	// reconnects counts connections lost and made again.
	reconnects atomic.Uint64

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

type channel struct {
	topic store.Topic
	subs  map[*store.Subscription]struct{}
	// confirmed is closed when Redis confirms the SUBSCRIBE.
	confirmed chan struct{}
	// idleSince is when the last subscriber left; the channel stays
	// subscribed a while, so short-lived streams don't churn commands.
	idleSince time.Time
}

// Idle channels are unsubscribed after 30 s, checked every 10 s; Subscribe
// gives up if Redis has not confirmed within confirmTimeout.
const (
	defaultIdleAfter  = 30 * time.Second
	defaultSweepEvery = 10 * time.Second
	confirmTimeout    = 3 * time.Second
)

func newHub(c redis.UniversalClient, log *slog.Logger, idleAfter, sweepEvery time.Duration) *hub {
	ctx, cancel := context.WithCancel(context.Background())
	h := &hub{
		ps:         c.Subscribe(ctx),
		log:        log,
		chans:      make(map[string]*channel),
		idleAfter:  idleAfter,
		sweepEvery: sweepEvery,
		ctx:        ctx,
		cancel:     cancel,
		done:       make(chan struct{}),
	}
	go h.run()
	return h
}

func (h *hub) close() {
	h.cancel()
	_ = h.ps.Close()
	<-h.done
}

func (h *hub) subscribe(ctx context.Context, name string, t store.Topic) (*store.Subscription, error) {
	var sub *store.Subscription
	sub = store.NewSubscription(func() { h.release(name, sub) })
	h.cmdMu.Lock()
	h.mu.Lock()
	ch := h.chans[name]
	fresh := ch == nil
	if fresh {
		ch = &channel{topic: t, subs: make(map[*store.Subscription]struct{}), confirmed: make(chan struct{})}
		h.chans[name] = ch
	}
	ch.subs[sub] = struct{}{}
	h.mu.Unlock()
	var err error
	if fresh {
		err = h.ps.Subscribe(ctx, name)
	}
	h.cmdMu.Unlock()
	if err != nil {
		sub.Close()
		return nil, unavailable(err)
	}
	timer := time.NewTimer(confirmTimeout)
	defer timer.Stop()
	select {
	case <-ch.confirmed:
		return sub, nil
	case <-ctx.Done():
		sub.Close()
		return nil, ctx.Err()
	case <-timer.C:
		sub.Close()
		return nil, fmt.Errorf("%w: redis did not confirm the subscription within %s", store.ErrUnavailable, confirmTimeout)
	}
}

func (h *hub) release(name string, sub *store.Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch := h.chans[name]; ch != nil {
		delete(ch.subs, sub)
		if len(ch.subs) == 0 {
			ch.idleSince = time.Now()
		}
	}
}

// sweep unsubscribes channels that have been idle a while.
func (h *hub) sweep() {
	h.cmdMu.Lock()
	defer h.cmdMu.Unlock()
	h.mu.Lock()
	var idle []string
	for name, ch := range h.chans {
		if len(ch.subs) == 0 && time.Since(ch.idleSince) >= h.idleAfter {
			idle = append(idle, name)
			delete(h.chans, name)
		}
	}
	h.mu.Unlock()
	defer h.sweeps.Add(1)
	if len(idle) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
	defer cancel()
	if err := h.ps.Unsubscribe(ctx, idle...); err != nil {
		h.log.Debug("pubsub: unsubscribe failed; the reconnect will drop them", "err", err)
	}
}

func (h *hub) run() {
	defer close(h.done)
	lost := false
	backoff := 50 * time.Millisecond
	lastSweep := time.Now()
	for {
		if time.Since(lastSweep) >= h.sweepEvery {
			h.sweep()
			lastSweep = time.Now()
		}
		msg, err := h.ps.ReceiveTimeout(h.ctx, h.sweepEvery)
		if h.ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Quiet; check the connection is alive.
				if err := h.ps.Ping(h.ctx); err != nil && !lost {
					lost = true
					h.log.Warn("pubsub: connection lost", "err", err)
				}
				continue
			}
			if !lost {
				h.log.Warn("pubsub: connection lost; reconnecting", "err", err)
			}
			lost = true
			// Back off before go-redis reconnects on the next receive.
			select {
			case <-h.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		if lost {
			// Connected again, and go-redis has resubscribed every
			// channel before anything else arrives on this connection:
			// what was published meanwhile is gone, so every subscriber
			// re-reads the store.
			lost = false
			h.reconnects.Add(1)
			h.log.Info("pubsub: reconnected; resyncing subscribers")
			h.resyncAll()
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				h.confirm(m.Channel)
			}
		case *redis.Message:
			h.dispatch(m.Channel, m.Payload)
		}
	}
}

func (h *hub) confirm(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch := h.chans[name]; ch != nil {
		select {
		case <-ch.confirmed: // a resubscription after a reconnect
		default:
			close(ch.confirmed)
		}
	}
}

func (h *hub) resyncAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ch := range h.chans {
		for sub := range ch.subs {
			sub.Resync()
		}
	}
}

func (h *hub) dispatch(name, payload string) {
	h.mu.Lock()
	ch := h.chans[name]
	if ch == nil || len(ch.subs) == 0 {
		h.mu.Unlock()
		return
	}
	subs := make([]*store.Subscription, 0, len(ch.subs))
	for sub := range ch.subs {
		subs = append(subs, sub)
	}
	t := ch.topic
	h.mu.Unlock()

	var ev store.Event
	switch {
	case t.ListenerID != "":
		ev = store.Event{Kind: store.EventListenerResolved, ListenerID: t.ListenerID}
	case payload == "end":
		ev = store.Event{Kind: store.EventSessionEnded, SessionID: t.SessionID}
	case strings.HasPrefix(payload, "s{"):
		st, err := decodeStatusEvent(payload[1:])
		if err != nil {
			h.log.Error("pubsub: undecodable status; resyncing its subscribers", "channel", name, "err", err)
			for _, sub := range subs {
				sub.Resync()
			}
			return
		}
		ev = store.Event{Kind: store.EventMessageStatus, SessionID: t.SessionID, Status: st}
	case strings.HasPrefix(payload, "{"):
		m, err := decodeMessage(payload)
		if err != nil {
			h.log.Error("pubsub: undecodable message; resyncing its subscribers", "channel", name, "err", err)
			for _, sub := range subs {
				sub.Resync()
			}
			return
		}
		ev = store.Event{Kind: store.EventMessage, SessionID: t.SessionID, Message: &m}
	default:
		return
	}
	for _, sub := range subs {
		sub.Publish(ev)
	}
}

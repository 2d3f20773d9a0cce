package server

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// Delivery to platforms (docs/design.md §9). A message for a platform
// with an adapter is recorded PENDING with a delivery, then sent at once
// by the replica that took the call; PostMessage waits for the platform up
// to Config.DeliveryTimeout. A send that fails transiently is retried on
// the adapter's schedule, and a delivery left unfinished (its replica died)
// is finished by whichever replica claims it after its lease: every
// replica looks for due deliveries every Config.DeliveryPoll.

// sendTimeout bounds one attempt at a delivery, whoever makes it.
const sendTimeout = 30 * time.Second

// finishTimeout bounds recording an attempt's outcome: it runs on its own
// deadline, since the caller may have stopped waiting.
const finishTimeout = 5 * time.Second

// drainBatch is how many due deliveries a replica claims at a time, and
// drainConcurrency how many it sends at once.
const (
	drainBatch       = 64
	drainConcurrency = 64
)

// adapterFor is the adapter that delivers a tenant's session on platform
// and channel, or nil.
func (s *Server) adapterFor(tenant, platform, channel string) adapters.Adapter {
	for _, a := range s.cfg.Adapters {
		if a.Platform() == platform && a.Tenant() == tenant && a.Delivers(channel) {
			return a
		}
	}
	return nil
}

// newDelivery is the delivery of a message about to be recorded.
func (s *Server) newDelivery() *store.Delivery {
	return &store.Delivery{ID: ids.Delivery(), Lease: s.cfg.DeliveryLease}
}

// deliverNow makes the first attempt at delivery d through a, and waits
// for it up to DeliveryTimeout (or until ctx ends): it returns the message
// as the platform left it, or still PENDING while the attempt goes on.
func (s *Server) deliverNow(ctx context.Context, a adapters.Adapter, d store.DeliveryClaim, user string) store.Message {
	done := make(chan store.Message, 1)
	s.workers.Go(func() {
		// Not the caller's cancellation: the delivery goes on without
		// it. Its values (a trace) go on.
		done <- s.attempt(context.WithoutCancel(ctx), a, d, user)
	})
	deadline := newAlarm(s.cfg.Clock)
	deadline.set(s.cfg.Clock.Now().Add(s.cfg.DeliveryTimeout), 0)
	defer deadline.stop()
	select {
	case m := <-done:
		return m
	case <-deadline.C:
	case <-ctx.Done():
	}
	return d.Message
}

// attempt sends d through a and records the outcome: the platform's
// answer, or for a failure that may not last a retry on a's schedule (or,
// with the schedule spent, FAILED). It returns the message as it then
// stands.
func (s *Server) attempt(ctx context.Context, a adapters.Adapter, d store.DeliveryClaim, user string) store.Message {
	sctx, cancel := context.WithTimeout(ctx, sendTimeout)
	began := time.Now()
	res, err := a.Send(sctx, &adapters.Outbound{
		Tenant: d.Tenant, SessionID: d.SessionID, MessageID: d.Message.ID, Channel: d.Message.Channel, User: user,
		Text: d.Message.Text, Metadata: d.Message.Metadata, FromUser: d.Message.FromUser, CreatedAt: d.Message.CreatedAt,
		Template: d.Message.Template, Thread: d.Message.Thread,
	})
	cancel()
	switch {
	case err != nil:
		s.metrics.platformCall(a.Platform(), "error", time.Since(began))
	case res.Status == store.StatusFailed:
		s.metrics.platformCall(a.Platform(), "refused", time.Since(began))
	default:
		s.metrics.platformCall(a.Platform(), "accepted", time.Since(began))
	}
	o := store.DeliveryOutcome{Status: res.Status, PlatformID: res.PlatformID, Error: res.Error}
	if err != nil {
		o = s.retry(a.Platform(), a.Name(), a.Retry, d, err)
	}
	if o.Status == store.StatusFailed {
		s.cfg.Logger.Warn("delivery failed", "platform", a.Platform(), "account", a.Name(), "session_id", d.SessionID,
			"message_id", d.Message.ID, "attempt", d.Attempt, "code", o.Error.Code)
	}
	m := s.finish(d, o)
	s.metrics.attempt(a.Platform(), o)
	return m
}

// retry is the outcome of failed attempt d on platform (the account or
// chatbot who), a failure that may not last: due again on schedule with a
// tenth's jitter, or after the platform's RetryAfter if that is later;
// FAILED unreachable when the schedule is spent.
func (s *Server) retry(platform, who string, schedule func(int) (time.Duration, bool), d store.DeliveryClaim, err error) store.DeliveryOutcome {
	wait, again := schedule(d.Attempt)
	s.cfg.Logger.Warn("delivery attempt failed", "platform", platform, "account", who, "message_id", d.Message.ID,
		"attempt", d.Attempt, "retry", again, "err", err)
	if !again {
		return store.DeliveryOutcome{Status: store.StatusFailed, Error: &store.PlatformError{Code: "unreachable",
			Message: fmt.Sprintf("%s did not take the message after %d attempts", platform, d.Attempt)}}
	}
	wait += rand.N(wait/10 + 1)
	if ra, ok := errors.AsType[*adapters.RetryAfter](err); ok && ra.Wait > wait {
		wait = min(ra.Wait, adapters.MaxRetryAfter)
	}
	return store.DeliveryOutcome{RetryAt: s.cfg.Clock.Now().Add(wait)}
}

// finish records o for d, on its own deadline. A retry due already (the
// attempt outlasted its wait) is claimed at once, not at the next poll.
func (s *Server) finish(d store.DeliveryClaim, o store.DeliveryOutcome) store.Message {
	ctx, cancel := context.WithTimeout(context.Background(), finishTimeout)
	defer cancel()
	m, err := s.cfg.Store.FinishDelivery(ctx, d, o)
	if err != nil {
		// The lease ends and another replica finishes it.
		s.cfg.Logger.Warn("cannot record a delivery's outcome", "message_id", d.Message.ID, "err", err)
		return d.Message
	}
	if o.Status == 0 && !o.RetryAt.After(s.cfg.Clock.Now()) {
		s.wake()
	}
	return m
}

// drain claims due deliveries, every DeliveryPoll (or when an ingest
// queued a message for a running chatbot, or a batch came full) until ctx
// ends, and attempts each.
func (s *Server) drain(ctx context.Context) {
	sem := make(chan struct{}, drainConcurrency)
	tick := newAlarm(s.cfg.Clock)
	defer tick.stop()
	full := false
	for {
		// A full batch may have left more due: claim again at once, as
		// fast as the sends free their slots.
		if !full {
			tick.set(s.cfg.Clock.Now().Add(s.cfg.DeliveryPoll), 0)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			case <-s.nudge:
			}
		}
		claims, err := s.cfg.Store.ClaimDeliveries(ctx, drainBatch, s.cfg.DeliveryLease)
		full = err == nil && len(claims) == drainBatch
		if err != nil {
			if ctx.Err() == nil {
				s.cfg.Logger.Warn("cannot claim deliveries", "err", err)
			}
			continue
		}
		for _, d := range claims {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			s.workers.Go(func() {
				defer func() { <-sem }()
				s.resume(ctx, d)
			})
		}
	}
}

// resume attempts a claimed delivery: its session says where it goes.
func (s *Server) resume(ctx context.Context, d store.DeliveryClaim) {
	if d.Bot != nil {
		s.runBot(ctx, d)
		return
	}
	ses, err := s.cfg.Store.GetSession(ctx, d.Tenant, d.SessionID)
	if err != nil {
		s.cfg.Logger.Warn("cannot read a delivery's session", "session_id", d.SessionID, "err", err)
		return // the lease ends and it is claimed again
	}
	a := s.adapterFor(ses.Tenant, ses.Platform, ses.Channel)
	if a == nil {
		s.finish(d, store.DeliveryOutcome{Status: store.StatusFailed, Error: notConfigured(ses.Platform)})
		return
	}
	s.attempt(ctx, a, d, ses.User)
}

func notConfigured(platform string) *store.PlatformError {
	return &store.PlatformError{Code: "platform_not_configured",
		Message: fmt.Sprintf("no %s account of this tenant delivers this channel; the message was stored but not delivered", platform)}
}

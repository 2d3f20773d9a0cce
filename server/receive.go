package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// receiveFilter validates a ChatReceive request's filters and timeout.
func (c *chatService) receiveFilter(tenant string, req *pb.ChatReceiveRequest) (store.Filter, time.Duration, error) {
	chk := c.checker()
	f := store.Filter{
		SessionID:      req.SessionId,
		Keyword:        req.KeywordFilter,
		AfterMessageID: req.AfterMessageId,
	}
	switch {
	case req.FromUser != "" && len(req.FromUsers) > 0:
		chk.add("from_users", "cannot be combined with from_user: put every user in from_users")
	case req.FromUser != "":
		f.Users = []string{req.FromUser}
	case len(req.FromUsers) > store.MaxUsers:
		chk.add("from_users", "has %d users; the limit is %d", len(req.FromUsers), store.MaxUsers)
	default:
		for i, u := range req.FromUsers {
			if u == "" {
				chk.add(fmt.Sprintf("from_users[%d]", i), "is empty")
			} else {
				chk.id(fmt.Sprintf("from_users[%d]", i), u, false)
			}
		}
		if len(req.FromUsers) > 0 {
			f.Users = store.SortUsers(req.FromUsers)
		}
	}
	if req.AfterMessageId != "" {
		if _, err := ids.MessageMs(req.AfterMessageId); err != nil {
			chk.add("after_message_id", "is not a message id")
		} else if req.SessionId == "" && len(f.Users) == 0 {
			chk.add("after_message_id", "needs session_id, from_user or from_users, which say where to look for a reply that came first")
		}
	}
	if req.Channel != "" {
		if ch, ok := c.dir.named(tenant, req.Channel); ok {
			f.Platform, f.Channel = ch.Platform, ch.ID
		} else {
			chk.id("channel", req.Channel, false)
			f.Channel = req.Channel
		}
	}
	chk.id("from_user", req.FromUser, false)
	chk.id("session_id", req.SessionId, false)
	chk.id("conversation_id", req.ConversationId, false)
	chk.text("keyword_filter", req.KeywordFilter, c.cfg.Limits.KeywordBytes, false)
	switch req.Match {
	case pb.MatchMode_MATCH_MODE_UNSPECIFIED, pb.MatchMode_MATCH_MODE_KEYWORD:
		f.Match = store.MatchKeyword
	case pb.MatchMode_MATCH_MODE_EXACT:
		f.Match = store.MatchExact
	case pb.MatchMode_MATCH_MODE_REGEX:
		f.Match = store.MatchRegex
		chk.regex("keyword_filter", req.KeywordFilter)
	default:
		chk.add("match", "must be KEYWORD, EXACT or REGEX")
	}
	var timeout time.Duration
	switch {
	case req.TimeoutMinutes != 0 && req.Timeout != nil:
		chk.add("timeout", "set either timeout or timeout_minutes, not both")
	case req.TimeoutMinutes < 0:
		chk.add("timeout_minutes", "must not be negative")
	case req.TimeoutMinutes > 0:
		// Compared in minutes, before any arithmetic: a large value
		// times time.Minute overflows.
		if limit := int64(c.cfg.Limits.MaxTimeout / time.Minute); int64(req.TimeoutMinutes) > limit {
			chk.add("timeout_minutes", "is %d; the limit is %d", req.TimeoutMinutes, limit)
		} else {
			timeout = time.Duration(req.TimeoutMinutes) * time.Minute
		}
	case req.Timeout != nil:
		chk.duration("timeout", req.Timeout)
		timeout = req.Timeout.AsDuration()
	}
	return f, timeout, chk.err()
}

func hasFilter(req *pb.ChatReceiveRequest) bool {
	return req.Channel != "" || req.FromUser != "" || len(req.FromUsers) > 0 || req.SessionId != "" || req.KeywordFilter != "" ||
		req.Match != pb.MatchMode_MATCH_MODE_UNSPECIFIED || req.AfterMessageId != ""
}

// ChatReceive is a receiver's life: begin (checks, the listener, the
// waiting frame), then wait for the outcome. A wait is idle nearly all its
// life, on a stack the runtime halves only while less than a quarter of it
// is in use, so begin's frame is gone by the time wait waits (docs/design.md §4).
func (c *chatService) ChatReceive(req *pb.ChatReceiveRequest, stream grpc.ServerStreamingServer[pb.ChatReceiveResponse]) error {
	r, err := c.beginReceive(req, stream)
	if err != nil {
		return err
	}
	defer r.sub.Close()
	defer c.metrics.wait()()
	if err := r.wait(); err != nil {
		return r.fail(err)
	}
	c.metrics.outcome(r.l.Outcome.String())
	return stream.Send(outcomePB(&r.l))
}

// beginReceive checks req and attaches its receiver: registered (or
// resumed), subscribed, and `waiting` sent.
func (c *chatService) beginReceive(req *pb.ChatReceiveRequest, stream grpc.ServerStreamingServer[pb.ChatReceiveResponse]) (*receiver, error) {
	filter, timeout, err := c.receiveFilter(tenantFrom(stream.Context()), req)
	if err != nil {
		return nil, err
	}
	r := &receiver{chatService: c, ctx: stream.Context(), stream: stream, tenant: tenantFrom(stream.Context())}
	r.id, r.resumed = req.ConversationId, req.ConversationId != ""
	if !r.resumed {
		r.id = ids.Listener()
	} else if !ids.Issued(ids.ListenerPrefix, r.id) {
		// Not one we issued: not found, without a subscription to it.
		return nil, r.fail(store.ErrListenerNotFound)
	}
	if err := r.attach(req, filter, timeout); err != nil {
		return nil, r.fail(err)
	}
	return r, nil
}

// receiver is one ChatReceive stream: it registers a listener or resumes
// one, says `waiting`, and waits for the outcome the store decides.
type receiver struct {
	*chatService
	ctx     context.Context
	stream  grpc.ServerStreamingServer[pb.ChatReceiveResponse]
	tenant  string
	id      string
	resumed bool
	sub     *store.Subscription
	l       store.Listener
	// waiting is set once the waiting frame is sent: the listener exists.
	waiting bool
}

// attach subscribes to the listener's outcome, then registers it (or reads
// it, to resume), and sends the waiting frame. Subscribing first means no
// outcome decided after that point can be missed.
func (r *receiver) attach(req *pb.ChatReceiveRequest, filter store.Filter, timeout time.Duration) error {
	st := r.cfg.Store
	var err error
	if r.sub, err = st.Subscribe(r.ctx, store.ListenerTopic(r.tenant, r.id)); err != nil {
		return err
	}
	if r.resumed {
		if r.l, err = st.GetListener(r.ctx, r.tenant, r.id); err != nil {
			r.sub.Close()
			return err
		}
		if hasFilter(req) && !filter.Equal(&r.l.Filter) {
			r.sub.Close()
			return invalid("conversation_id", "the filters differ from those the listener was registered with; resume with the same filters or none")
		}
		// It may be near the end of its resume window: attaching renews it.
		if r.l.Outcome == store.Pending && r.l.Deadline.IsZero() {
			if err := st.TouchListener(r.ctx, r.tenant, r.id, r.cfg.Clock.Now().Add(r.cfg.ResumeWindow)); err != nil {
				r.sub.Close()
				return err
			}
		}
	} else {
		nl := store.NewListener{ID: r.id, Tenant: r.tenant, Filter: filter, Timeout: timeout, ResumeWindow: r.cfg.ResumeWindow,
			MaxPending: r.cfg.Limits.PendingListeners}
		if r.l, err = st.RegisterListener(r.ctx, nl); err != nil {
			r.sub.Close()
			return err
		}
	}
	if err := r.stream.Send(&pb.ChatReceiveResponse{Frame: &pb.ChatReceiveResponse_Waiting{Waiting: waitingPB(&r.l, r.resumed)}}); err != nil {
		r.sub.Close()
		return err
	}
	r.waiting = true
	return nil
}

// wait returns once the listener is decided, or with the error that ended
// the stream first. One alarm: the deadline, if the listener has one (the
// store decides a timeout; the alarm says when to ask it), or else the next
// renewal of its idle limit, since a listener without a deadline must
// outlive this stream by the resume window.
func (r *receiver) wait() error {
	alarm := newAlarm(r.cfg.Clock)
	defer alarm.stop()
	if r.l.Deadline.IsZero() {
		alarm.set(r.cfg.Clock.Now().Add(r.renewEvery()), 0)
	} else {
		alarm.set(r.l.Deadline, 0)
	}
	for r.l.Outcome == store.Pending {
		var err error
		select {
		case <-r.sub.Ready():
			err = r.events()
		case <-alarm.C:
			err = r.ring(alarm)
		case <-r.ctx.Done():
			r.detach()
			return r.ctx.Err()
		case <-r.stopping:
			r.detach()
			return r.shuttingDown()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *receiver) renewEvery() time.Duration { return max(r.cfg.ResumeWindow/4, time.Second) }

// events takes the outcome from the subscription's events, or reads it
// when they only hint at one.
func (r *receiver) events() error {
	evs, resync := r.sub.Next()
	for _, ev := range evs {
		if ev.Kind != store.EventListenerResolved {
			continue
		}
		if ev.Listener == nil {
			resync = true // a hint: read the outcome
		} else {
			r.l = *ev.Listener
		}
	}
	if !resync {
		return nil
	}
	l, err := r.cfg.Store.GetListener(r.ctx, r.tenant, r.id)
	if err == nil {
		r.l = l
	}
	return err
}

// ring is the alarm: renew a listener with no deadline, or ask the store
// about one whose deadline has come.
func (r *receiver) ring(alarm *alarm) error {
	st, clk := r.cfg.Store, r.cfg.Clock
	if r.l.Deadline.IsZero() {
		if err := st.TouchListener(r.ctx, r.tenant, r.id, clk.Now().Add(r.cfg.ResumeWindow)); err != nil {
			return err
		}
		alarm.set(clk.Now().Add(r.renewEvery()), 0)
		return nil
	}
	// The store decides: a match that committed first wins.
	l, err := st.GetListener(r.ctx, r.tenant, r.id)
	if err != nil {
		return err
	}
	if r.l = l; r.l.Outcome == store.Pending {
		alarm.set(r.l.Deadline, rearmFloor) // its clock lags
	}
	return nil
}

func (r *receiver) shuttingDown() error {
	return &codedError{code: codes.Unavailable, reason: reasonShuttingDown,
		msg:  "the server is shutting down; resume with the same conversation_id",
		meta: map[string]string{"conversation_id": r.id}}
}

// detach starts the resume window of a listener whose stream went away
// undecided. It runs on its own short deadline: the stream's context is
// already done.
func (r *receiver) detach() {
	if !r.l.Deadline.IsZero() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.cfg.Store.TouchListener(ctx, r.tenant, r.id, r.cfg.Clock.Now().Add(r.cfg.ResumeWindow)); err != nil {
		r.cfg.Logger.Warn("cannot extend a detached listener", "conversation_id", r.id, "err", err)
	}
}

// fail tells a client whose stream the backend broke how to carry on: by
// resuming its listener, which lives on in the backend. A new wait that
// failed before `waiting` may not have been registered at all.
func (r *receiver) fail(err error) error {
	if !errors.Is(err, store.ErrUnavailable) {
		return err
	}
	msg := "the backend is unavailable; resume with conversation_id " + r.id
	if !r.waiting && !r.resumed {
		msg = "the backend is unavailable and the wait may not be registered; call ChatReceive again with conversation_id " +
			r.id + ", and if that is NOT_FOUND, wait anew"
	}
	return &codedError{code: codes.Unavailable, reason: reasonBackend, msg: msg, meta: map[string]string{"conversation_id": r.id}}
}

func waitingPB(l *store.Listener, resumed bool) *pb.ChatReceiveWaiting {
	w := &pb.ChatReceiveWaiting{
		ListeningOnChannel: l.Filter.Channel,
		KeywordFilter:      l.Filter.Keyword,
		TimeoutAt:          ts(l.Deadline),
		ConversationId:     l.ID,
		ListeningOnSession: l.Filter.SessionID,
		Match:              matchToPB[l.Filter.Match],
		Resumed:            resumed,
		AfterMessageId:     l.Filter.AfterMessageID,
	}
	// One user is listening_for_user, as before approver sets; a set is
	// listening_for_users.
	if len(l.Filter.Users) == 1 {
		w.ListeningForUser = l.Filter.Users[0]
	} else {
		w.ListeningForUsers = l.Filter.Users
	}
	return w
}

func outcomePB(l *store.Listener) *pb.ChatReceiveResponse {
	if l.Outcome == store.Matched {
		m := l.Message
		return &pb.ChatReceiveResponse{Frame: &pb.ChatReceiveResponse_Success{Success: &pb.ChatReceiveSuccess{
			MessageText:    m.Text,
			FromUser:       m.FromUser,
			FromChannel:    m.Channel,
			ReceivedAt:     ts(m.CreatedAt),
			ConversationId: l.ID,
			RawMessage:     rawPB(m.Raw),
			SessionId:      m.SessionID,
			MessageId:      m.ID,
		}}}
	}
	waited := l.Waited()
	msg := fmt.Sprintf("no message arrived within %s", waited.Round(time.Second))
	switch l.Outcome {
	case store.FilterMismatch:
		msg = fmt.Sprintf("messages arrived within %s but none matched the keyword filter %q", waited.Round(time.Second), l.Filter.Keyword)
	case store.Cancelled:
		msg = fmt.Sprintf("the wait was cancelled after %s", waited.Round(time.Second))
	}
	return &pb.ChatReceiveResponse{Frame: &pb.ChatReceiveResponse_Error{Error: &pb.ChatReceiveError{
		ErrorCode:      l.Outcome.String(),
		Message:        msg,
		ConversationId: l.ID,
		WaitedMinutes:  int32(waited / time.Minute),
		Waited:         durationpb.New(waited),
	}}}
}

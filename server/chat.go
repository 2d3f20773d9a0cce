package server

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

type chatService struct {
	pb.UnimplementedChatServiceServer
	*Server
}

// deliver decides how an outbound message on platform is delivered. web and
// api sessions are delivered by the hub itself: the message reaches every
// WatchSession stream (the widget, an API client). Other platforms need an
// adapter, and none is built into this server yet, so they answer FAILED —
// the message is kept in history either way, as DESIGN §5 requires.
func deliver(platform string) (store.MessageStatus, *store.PlatformError) {
	if platform == platformWeb || platform == platformAPI {
		return store.StatusDelivered, nil
	}
	return store.StatusFailed, &store.PlatformError{
		Code:    "platform_not_configured",
		Message: fmt.Sprintf("no %s adapter is configured on this server; the message was stored but not delivered", platform),
	}
}

func (c *chatService) PostMessage(ctx context.Context, req *pb.PostMessageRequest) (*pb.PostMessageResponse, error) {
	chk := c.checker()
	chk.id("session_id", req.SessionId, true)
	chk.text("message", req.Message, c.cfg.Limits.MessageBytes, true)
	chk.id("idempotency_key", req.IdempotencyKey, false)
	chk.metadata("metadata", req.Metadata)
	if err := chk.err(); err != nil {
		return nil, err
	}
	tenant := tenantFrom(ctx)
	at, known := c.places.get(tenant, req.SessionId)
	if !known {
		ses, err := c.cfg.Store.GetSession(ctx, tenant, req.SessionId)
		if err != nil {
			return nil, err
		}
		at = place{ses.Platform, ses.Channel}
		c.places.learn(&ses)
	}
	out := store.OutboundMessage{
		Tenant:      tenant,
		SessionID:   req.SessionId,
		Text:        req.Message,
		Metadata:    req.Metadata,
		Idempotency: idempotency(req.IdempotencyKey, req, func(m proto.Message) { m.(*pb.PostMessageRequest).IdempotencyKey = "" }),
	}
	// An ended session is refused by the store, unless the key replays a
	// result from before it ended.
	out.Status, out.Error = deliver(at.platform)
	msg, _, err := c.cfg.Store.AppendOutbound(ctx, out)
	if err != nil {
		return nil, err
	}
	resp := &pb.PostMessageResponse{
		Status:    statusToPB[msg.Status],
		MessageId: msg.ID,
		SessionId: msg.SessionID,
		Platform:  msg.Platform,
		Channel:   msg.Channel,
		Error:     platformErrorPB(msg.Error),
	}
	if msg.Status == store.StatusDelivered {
		resp.DeliveredAt = ts(msg.CreatedAt)
	}
	return resp, nil
}

func idempotency(key string, req proto.Message, clear func(proto.Message)) store.Idempotency {
	if key == "" {
		return store.Idempotency{}
	}
	return store.Idempotency{Key: key, Fingerprint: fingerprint(req, clear)}
}

var placeholder = regexp.MustCompile(`\{\{\s*(contact|session)\.([^{}\s]+)\s*\}\}`)

// render fills {{contact.KEY}} and {{session.KEY}} from metadata; a missing
// key renders empty.
func render(tmpl string, ses store.Session, ct store.Contact) string {
	return placeholder.ReplaceAllStringFunc(tmpl, func(m string) string {
		sub := placeholder.FindStringSubmatch(m)
		if sub[1] == "contact" {
			return ct.Metadata[sub[2]]
		}
		return ses.Metadata[sub[2]]
	})
}

func (c *chatService) SendChatbotMessage(ctx context.Context, req *pb.SendChatbotMessageRequest) (*pb.SendChatbotMessageResponse, error) {
	chk := c.checker()
	bot, ok := c.dir.chatbot(req.Chatbot)
	switch {
	case req.Chatbot == "":
		chk.add("chatbot", "is required")
	case !ok:
		chk.add("chatbot", "unknown chatbot %q: name a configured chatbot by name or id", req.Chatbot)
	}
	var platform, channel string
	if req.From == "" {
		chk.add("from", "is required")
	} else if ch, ok := c.dir.channelByName[req.From]; ok {
		platform, channel = ch.Platform, ch.ID
	} else if ch, ok := c.dir.channelByID[req.From]; ok {
		platform, channel = ch.Platform, ch.ID
	} else {
		chk.add("from", "unknown channel %q: name a configured channel by name or id", req.From)
	}
	chk.user("to", platform, req.To, true)
	chk.id("session_id", req.SessionId, false)
	chk.metadata("session_metadata", req.SessionMetadata)
	chk.metadata("contact_metadata", req.ContactMetadata)
	chk.id("idempotency_key", req.IdempotencyKey, false)
	if err := chk.err(); err != nil {
		return nil, err
	}
	status, perr := deliver(platform)
	start := store.ChatbotStart{
		Tenant:               tenantFrom(ctx),
		Platform:             platform,
		Channel:              channel,
		User:                 req.To,
		SessionID:            req.SessionId,
		ChatbotID:            bot.ID,
		ForceStart:           req.ForceStartSession,
		SkipIfBotInExecution: req.SkipIfBotInExecution,
		SkipIfInProgress:     req.SkipIfInProgress,
		SessionMetadata:      req.SessionMetadata,
		ContactMetadata:      req.ContactMetadata,
		Idempotency: idempotency(req.IdempotencyKey, req, func(m proto.Message) {
			m.(*pb.SendChatbotMessageRequest).IdempotencyKey = ""
		}),
		Greeting:       func(s store.Session, ct store.Contact) string { return render(bot.Greeting, s, ct) },
		GreetingStatus: status,
		GreetingError:  perr,
	}
	r, err := c.cfg.Store.StartChatbot(ctx, start)
	if err != nil {
		return nil, err
	}
	c.places.learn(&r.Session)
	resp := &pb.SendChatbotMessageResponse{
		SessionId:      r.Session.ID,
		SessionStarted: r.SessionStarted,
		ChatbotId:      bot.ID,
		Channel:        channel,
		Platform:       platform,
		Contact:        contactPB(&r.Contact),
		Session:        sessionPB(&r.Session),
	}
	switch {
	case r.Skip == store.SkipBotInExecution:
		resp.Status, resp.SkipReason = pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SKIPPED, pb.SkipReason_SKIP_REASON_BOT_IN_EXECUTION
	case r.Skip == store.SkipInProgress:
		resp.Status, resp.SkipReason = pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SKIPPED, pb.SkipReason_SKIP_REASON_IN_PROGRESS
	case r.Greeting.Status == store.StatusFailed:
		resp.Status, resp.MessageId, resp.Error = pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_FAILED, r.Greeting.ID, platformErrorPB(r.Greeting.Error)
	default:
		resp.Status, resp.MessageId = pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SENT, r.Greeting.ID
	}
	return resp, nil
}

func (c *chatService) IngestMessage(ctx context.Context, req *pb.IngestMessageRequest) (*pb.IngestMessageResponse, error) {
	chk := c.checker()
	chk.id("session_id", req.SessionId, false)
	var platform, channel string
	if req.SessionId == "" || req.Platform != "" || req.Channel != "" {
		platform, channel = c.dir.channel(&chk, "platform", req.Platform, "channel", req.Channel)
	}
	chk.user("from_user", platform, req.FromUser, req.SessionId == "")
	chk.text("text", req.Text, c.cfg.Limits.MessageBytes, true)
	chk.metadata("metadata", req.Metadata)
	chk.id("idempotency_key", req.IdempotencyKey, false)
	raw := chk.raw("raw", req.Raw)
	if err := chk.err(); err != nil {
		return nil, err
	}
	tenant := tenantFrom(ctx)
	if req.SessionId != "" {
		// The session's own place, when known, is a better hint than the
		// caller's.
		if at, ok := c.places.get(tenant, req.SessionId); ok {
			platform, channel = at.platform, at.channel
		}
	}
	r, err := c.cfg.Store.Ingest(ctx, store.InboundMessage{
		Tenant:    tenant,
		Platform:  platform,
		Channel:   channel,
		User:      req.FromUser,
		SessionID: req.SessionId,
		Text:      req.Text,
		Metadata:  req.Metadata,
		Raw:       raw,
		Idempotency: idempotency(req.IdempotencyKey, req, func(m proto.Message) {
			m.(*pb.IngestMessageRequest).IdempotencyKey = ""
		}),
	})
	if err != nil {
		return nil, err
	}
	c.places.learn(&r.Session)
	return &pb.IngestMessageResponse{
		Message:          messagePB(&r.Message),
		Session:          sessionPB(&r.Session),
		SessionStarted:   r.SessionStarted,
		ListenersMatched: int32(len(r.Matched)),
	}, nil
}

// ---- ChatReceive ----

// receiveFilter validates a ChatReceive request's filters and timeout.
func (c *chatService) receiveFilter(req *pb.ChatReceiveRequest) (store.Filter, time.Duration, error) {
	chk := c.checker()
	f := store.Filter{
		User:      req.FromUser,
		SessionID: req.SessionId,
		Keyword:   req.KeywordFilter,
	}
	if req.Channel != "" {
		if ch, ok := c.dir.channelByName[req.Channel]; ok {
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
		if _, err := regexp.Compile(req.KeywordFilter); err != nil {
			chk.add("keyword_filter", "is not a valid RE2 expression: %v", err)
		}
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
	return req.Channel != "" || req.FromUser != "" || req.SessionId != "" || req.KeywordFilter != "" ||
		req.Match != pb.MatchMode_MATCH_MODE_UNSPECIFIED
}

func (c *chatService) ChatReceive(req *pb.ChatReceiveRequest, stream grpc.ServerStreamingServer[pb.ChatReceiveResponse]) error {
	ctx := stream.Context()
	filter, timeout, err := c.receiveFilter(req)
	if err != nil {
		return err
	}
	tenant := tenantFrom(ctx)
	st := c.cfg.Store

	// Subscribe before registering or reading, so no outcome decided after
	// that point can be missed.
	id, resumed := req.ConversationId, req.ConversationId != ""
	if !resumed {
		id = ids.Listener()
	}
	sub, err := st.Subscribe(ctx, store.ListenerTopic(tenant, id))
	if err != nil {
		return err
	}
	defer sub.Close()

	var l store.Listener
	if resumed {
		if l, err = st.GetListener(ctx, tenant, id); err != nil {
			return err
		}
		if hasFilter(req) && filter != l.Filter {
			return invalid("conversation_id", "the filters differ from those the listener was registered with; resume with the same filters or none")
		}
		// It may be near the end of its resume window: attaching renews it.
		if l.Outcome == store.Pending && l.Deadline.IsZero() {
			if err := st.TouchListener(ctx, tenant, id, c.cfg.Clock.Now().Add(c.cfg.ResumeWindow)); err != nil {
				return err
			}
		}
	} else {
		nl := store.NewListener{ID: id, Tenant: tenant, Filter: filter, Timeout: timeout, ResumeWindow: c.cfg.ResumeWindow}
		if l, err = st.RegisterListener(ctx, nl); err != nil {
			return err
		}
	}
	if err := stream.Send(&pb.ChatReceiveResponse{Frame: &pb.ChatReceiveResponse_Waiting{Waiting: waitingPB(&l, resumed)}}); err != nil {
		return err
	}

	// One alarm: the deadline, if the listener has one (the store decides
	// a timeout; the alarm says when to ask it), or else the next renewal
	// of its idle limit, since a listener without a deadline must outlive
	// this stream by the resume window.
	renewEvery := max(c.cfg.ResumeWindow/4, time.Second)
	alarm := newAlarm(c.cfg.Clock)
	defer alarm.stop()
	if l.Deadline.IsZero() {
		alarm.set(c.cfg.Clock.Now().Add(renewEvery), 0)
	} else {
		alarm.set(l.Deadline, 0)
	}
	for l.Outcome == store.Pending {
		select {
		case <-sub.Ready():
			evs, resync := sub.Next()
			for _, ev := range evs {
				if ev.Kind != store.EventListenerResolved {
					continue
				}
				if ev.Listener == nil {
					resync = true // a hint: read the outcome
				} else {
					l = *ev.Listener
				}
			}
			if resync {
				if l, err = st.GetListener(ctx, tenant, id); err != nil {
					return err
				}
			}
		case <-alarm.C:
			if l.Deadline.IsZero() {
				if err := st.TouchListener(ctx, tenant, id, c.cfg.Clock.Now().Add(c.cfg.ResumeWindow)); err != nil {
					return err
				}
				alarm.set(c.cfg.Clock.Now().Add(renewEvery), 0)
				continue
			}
			// The store decides: a match that committed first wins.
			if l, err = st.GetListener(ctx, tenant, id); err != nil {
				return err
			}
			if l.Outcome == store.Pending {
				alarm.set(l.Deadline, rearmFloor) // its clock lags
			}
		case <-ctx.Done():
			c.detach(tenant, &l)
			return ctx.Err()
		case <-c.stopping:
			c.detach(tenant, &l)
			return &codedError{code: codes.Unavailable, reason: reasonShuttingDown,
				msg:  "the server is shutting down; resume with the same conversation_id",
				meta: map[string]string{"conversation_id": id}}
		}
	}
	return stream.Send(outcomePB(&l))
}

// detach starts the resume window of a listener whose stream went away
// undecided. It runs on its own short deadline: the stream's context is
// already done.
func (c *chatService) detach(tenant string, l *store.Listener) {
	if !l.Deadline.IsZero() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.cfg.Store.TouchListener(ctx, tenant, l.ID, c.cfg.Clock.Now().Add(c.cfg.ResumeWindow)); err != nil {
		c.cfg.Logger.Warn("cannot extend a detached listener", "conversation_id", l.ID, "err", err)
	}
}

func waitingPB(l *store.Listener, resumed bool) *pb.ChatReceiveWaiting {
	return &pb.ChatReceiveWaiting{
		ListeningOnChannel: l.Filter.Channel,
		ListeningForUser:   l.Filter.User,
		KeywordFilter:      l.Filter.Keyword,
		TimeoutAt:          ts(l.Deadline),
		ConversationId:     l.ID,
		ListeningOnSession: l.Filter.SessionID,
		Match:              matchToPB[l.Filter.Match],
		Resumed:            resumed,
	}
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
	if l.Outcome == store.FilterMismatch {
		msg = fmt.Sprintf("messages arrived within %s but none matched the keyword filter %q", waited.Round(time.Second), l.Filter.Keyword)
	}
	return &pb.ChatReceiveResponse{Frame: &pb.ChatReceiveResponse_Error{Error: &pb.ChatReceiveError{
		ErrorCode:      l.Outcome.String(),
		Message:        msg,
		ConversationId: l.ID,
		WaitedMinutes:  int32(waited / time.Minute),
		Waited:         durationpb.New(waited),
	}}}
}

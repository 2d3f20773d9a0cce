package server

import (
	"context"
	"fmt"
	"regexp"

	"google.golang.org/protobuf/proto"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
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
// the message is kept in history either way, as docs/design.md §3 says.
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

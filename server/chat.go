package server

import (
	"context"
	"regexp"

	"google.golang.org/protobuf/proto"

	"github.com/chatrelay/chatrelay/adapters"
	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/store"
)

type chatService struct {
	pb.UnimplementedChatServiceServer
	*Server
}

// PostMessage records the message and delivers it (docs/design.md §9).
// web and api sessions are delivered by the hub itself: the message
// reaches every WatchSession stream (the widget, an API client), and is
// DELIVERED as it is recorded. Any other platform's message is recorded
// PENDING and sent through the tenant's adapter for the channel; without
// one it is FAILED at once, platform_not_configured, and kept.
func (c *chatService) PostMessage(ctx context.Context, req *pb.PostMessageRequest) (*pb.PostMessageResponse, error) {
	chk := c.checker()
	chk.id("session_id", req.SessionId, true)
	chk.text("message", req.Message, c.cfg.Limits.MessageBytes, true)
	chk.id("idempotency_key", req.IdempotencyKey, false)
	chk.metadata("metadata", req.Metadata)
	tpl := chk.template("template", req.Template)
	if err := chk.err(); err != nil {
		return nil, err
	}
	tenant := tenantFrom(ctx)
	at, ses, err := c.placeOf(ctx, tenant, req.SessionId)
	if err != nil {
		return nil, err
	}
	msg, err := c.post(ctx, at, ses, store.OutboundMessage{
		Tenant:      tenant,
		SessionID:   req.SessionId,
		Text:        req.Message,
		Metadata:    req.Metadata,
		Idempotency: idempotency(req.IdempotencyKey, req, func(m proto.Message) { m.(*pb.PostMessageRequest).IdempotencyKey = "" }),
	}, tpl, nil)
	if err != nil {
		return nil, err
	}
	return postResponse(&msg), nil
}

// post records out in its session, which lives at at, and delivers it:
// PostMessage's work, and a running chatbot's replies'. ses is the session
// when just read (else nil); given is a template named for the message,
// and bot a running chatbot's fallback template (docs/design.md §9). It
// answers the message as it then stands.
func (c *chatService) post(ctx context.Context, at place, ses *store.Session, out store.OutboundMessage, given *store.Template, bot *FallbackTemplate) (store.Message, error) {
	var a adapters.Adapter
	out.Status, out.Error, a = c.route(out.Tenant, at)
	if a != nil {
		o, err := c.outgoing(ctx, out.Tenant, out.SessionID, at, ses, out.Text, given, bot)
		if err != nil {
			return store.Message{}, err
		}
		out.Template = o.Template
		if o.Refused != nil {
			out.Status, out.Error, a = store.StatusFailed, o.Refused, nil
		}
	}
	if a != nil {
		out.Delivery = c.newDelivery()
	}
	// An ended session is refused by the store, unless the key replays a
	// result from before it ended.
	msg, replayed, err := c.cfg.Store.AppendOutbound(ctx, out)
	if err != nil {
		return msg, err
	}
	switch {
	case replayed && msg.Status == store.StatusPending:
		// Never sent again: the delivery it recorded goes on. Its status
		// now is the answer.
		if now, err := c.cfg.Store.GetMessage(ctx, out.Tenant, msg.SessionID, msg.ID); err == nil {
			msg = now
		}
	case a != nil && !replayed:
		msg = c.deliverNow(ctx, a, store.DeliveryClaim{ID: out.Delivery.ID, Tenant: out.Tenant, SessionID: msg.SessionID,
			Message: msg, Attempt: 1}, at.user)
	}
	if !replayed {
		c.metrics.message(&msg)
	}
	return msg, nil
}

// placeOf is where a session lives: known from an earlier call, or read
// (and then the session read is returned too).
func (c *chatService) placeOf(ctx context.Context, tenant, sessionID string) (place, *store.Session, error) {
	if at, ok := c.places.get(tenant, sessionID); ok {
		return at, nil, nil
	}
	ses, err := c.cfg.Store.GetSession(ctx, tenant, sessionID)
	if err != nil {
		return place{}, nil, err
	}
	c.places.learn(&ses)
	return sessionPlace(&ses), &ses, nil
}

// outgoing composes a post's text, or the template given, for the session
// at at (docs/design.md §9). Only a WhatsApp session whose window this
// replica does not know to be open needs the session as it is now (ses
// when just read, or read), and its contact when the fallback template
// (bot's, else the channel's) reads it.
func (c *chatService) outgoing(ctx context.Context, tenant, sessionID string, at place, ses *store.Session, text string, given *store.Template, bot *FallbackTemplate) (store.Outgoing, error) {
	switch {
	case at.platform != platformWhatsApp:
		return store.Outgoing{Text: text}, nil
	case given != nil:
		return store.Outgoing{Text: text, Template: given}, nil
	case at.open(c.cfg.Clock.Now()):
		return store.Outgoing{Text: text}, nil
	}
	if ses == nil {
		now, err := c.cfg.Store.GetSession(ctx, tenant, sessionID)
		if err != nil {
			return store.Outgoing{}, err
		}
		c.places.learn(&now)
		ses = &now
	}
	fb := bot
	if fb == nil {
		fb = c.dir.fallback(tenant, ses.Channel)
	}
	var ct store.Contact
	if fb != nil && fb.needsContact() && !c.cfg.Clock.Now().Before(windowCloses(ses)) {
		var err error
		if ct, err = c.cfg.Store.GetContact(ctx, tenant, ses.Platform, ses.User); err != nil {
			return store.Outgoing{}, err
		}
	}
	return c.compose(ses, &ct, text, nil, fb), nil
}

// route says how a message to a session at at is delivered: by the hub
// (DELIVERED), through an adapter (PENDING, then its answer), or not at all
// (FAILED: no account of the tenant delivers the channel).
func (c *chatService) route(tenant string, at place) (store.MessageStatus, *store.PlatformError, adapters.Adapter) {
	if at.platform == platformWeb || at.platform == platformAPI {
		return store.StatusDelivered, nil, nil
	}
	if a := c.adapterFor(tenant, at.platform, at.channel); a != nil {
		return store.StatusPending, nil, a
	}
	return store.StatusFailed, notConfigured(at.platform), nil
}

func postResponse(m *store.Message) *pb.PostMessageResponse {
	resp := &pb.PostMessageResponse{
		Status:            statusToPB[m.Status],
		MessageId:         m.ID,
		SessionId:         m.SessionID,
		Platform:          m.Platform,
		Channel:           m.Channel,
		Error:             platformErrorPB(m.Error),
		PlatformMessageId: m.PlatformID,
		SentAs:            sentAs(m),
		Template:          templatePB(m.Template),
	}
	if m.Status == store.StatusDelivered || m.Status == store.StatusSent || m.Status == store.StatusRead {
		resp.DeliveredAt = ts(m.StatusAt)
	}
	return resp
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
	tenant := tenantFrom(ctx)
	var platform, channel string
	if req.From == "" {
		chk.add("from", "is required")
	} else if ch, ok := c.dir.named(tenant, req.From); ok {
		platform, channel = ch.Platform, ch.ID
	} else if ch, ok := c.dir.byID(tenant, req.From); ok {
		platform, channel = ch.Platform, ch.ID
	} else {
		chk.add("from", "unknown channel %q: name a configured channel by name or id", req.From)
	}
	chk.user("to", platform, req.To, true)
	chk.id("session_id", req.SessionId, false)
	chk.metadata("session_metadata", req.SessionMetadata)
	chk.metadata("contact_metadata", req.ContactMetadata)
	chk.id("idempotency_key", req.IdempotencyKey, false)
	tpl := chk.template("template", req.Template)
	if err := chk.err(); err != nil {
		return nil, err
	}
	status, perr, a := c.route(tenant, place{platform: platform, channel: channel})
	channelFallback := c.dir.fallback(tenant, channel)
	start := store.ChatbotStart{
		Tenant:               tenant,
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
		MaxMetadata:          c.cfg.Limits.MetadataEntries,
		Idempotency: idempotency(req.IdempotencyKey, req, func(m proto.Message) {
			m.(*pb.SendChatbotMessageRequest).IdempotencyKey = ""
		}),
		Greeting: func(s store.Session, ct store.Contact) store.Outgoing {
			text := render(bot.Greeting, s, ct)
			if a == nil {
				return store.Outgoing{Text: text}
			}
			return c.compose(&s, &ct, text, tpl, bot.FallbackTemplate, channelFallback)
		},
		GreetingStatus: status,
		GreetingError:  perr,
	}
	if a != nil {
		start.GreetingDelivery = c.newDelivery()
	}
	r, err := c.cfg.Store.StartChatbot(ctx, start)
	if err != nil {
		return nil, err
	}
	c.places.learn(&r.Session)
	greeting := &r.Greeting
	switch {
	case r.Skip != store.NotSkipped || greeting.ID == "":
	case r.Replayed && greeting.Status == store.StatusPending:
		// Never sent again; its status now is the answer.
		if now, err := c.cfg.Store.GetMessage(ctx, tenant, greeting.SessionID, greeting.ID); err == nil {
			*greeting = now
		}
	case a != nil && !r.Replayed && greeting.Status == store.StatusPending:
		*greeting = c.deliverNow(ctx, a, store.DeliveryClaim{ID: start.GreetingDelivery.ID, Tenant: tenant,
			SessionID: greeting.SessionID, Message: *greeting, Attempt: 1}, req.To)
	}
	if !r.Replayed {
		c.metrics.message(greeting)
	}
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
	case greeting.Status == store.StatusFailed:
		resp.Status, resp.MessageId, resp.Error = pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_FAILED, greeting.ID, platformErrorPB(greeting.Error)
	default:
		resp.Status, resp.MessageId = pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SENT, greeting.ID
	}
	if r.Skip == store.NotSkipped {
		resp.GreetingStatus = statusToPB[greeting.Status]
		resp.SentAs, resp.Template = sentAs(greeting), templatePB(greeting.Template)
	}
	return resp, nil
}

func (c *chatService) IngestMessage(ctx context.Context, req *pb.IngestMessageRequest) (*pb.IngestMessageResponse, error) {
	resp, _, err := c.ingest(ctx, req)
	return resp, err
}

// ingest is IngestMessage, and says whether the idempotency key replayed
// an earlier call.
func (c *chatService) ingest(ctx context.Context, req *pb.IngestMessageRequest) (*pb.IngestMessageResponse, bool, error) {
	chk := c.checker()
	chk.id("session_id", req.SessionId, false)
	var platform, channel string
	tenant := tenantFrom(ctx)
	if req.SessionId == "" || req.Platform != "" || req.Channel != "" {
		platform, channel = c.dir.channel(&chk, tenant, "platform", req.Platform, "channel", req.Channel)
	}
	chk.user("from_user", platform, req.FromUser, req.SessionId == "")
	chk.text("text", req.Text, c.cfg.Limits.MessageBytes, true)
	chk.metadata("metadata", req.Metadata)
	chk.id("idempotency_key", req.IdempotencyKey, false)
	raw := chk.raw("raw", req.Raw)
	if err := chk.err(); err != nil {
		return nil, false, err
	}
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
		Bots: c.botIDs,
	})
	if err != nil {
		return nil, false, err
	}
	if !r.Replayed {
		c.metrics.message(&r.Message)
	}
	c.places.learn(&r.Session)
	c.botQueued(&r.Session)
	return &pb.IngestMessageResponse{
		Message:          messagePB(&r.Message),
		Session:          sessionPB(&r.Session),
		SessionStarted:   r.SessionStarted,
		ListenersMatched: int32(len(r.Matched)),
	}, r.Replayed, nil
}

package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/adapters/webhook"
	"github.com/chatrelay/chatrelay/store"
)

// Running chatbots (docs/design.md §9). A chatbot configured with a
// webhook runs there: while a session is BOT with it, each inbound message
// of the session is queued for it in the store (store.InboundMessage.Bots)
// and delivered as `message.received` by the outbox that delivers posts,
// on the webhooks' schedule, in order, one at a time per session. The
// bot's answer is carried out before the next message goes: its replies
// are posted into the session as the chatbot's, each with an idempotency
// key made of the message and the reply's place, so an answer that comes
// twice (a retry, two replicas racing after a lease ran out) posts once;
// then `handoff` makes the session IN_PROGRESS, or `end` OPEN. A bot that
// refuses a message, answers what is not an answer, or does not take it
// before the schedule is spent is ended: the session is OPEN again, for
// people and workflows, and says why (chatbot_error in its metadata).

// maxBotReplies bounds the replies of one answer.
const maxBotReplies = 10

// chatbotError is the session metadata key saying why its chatbot ended.
const chatbotError = "chatbot_error"

// newBots makes the webhook of each chatbot that has one.
func newBots(cfg *Config) (map[string]*webhook.Bot, []string, error) {
	bots := map[string]*webhook.Bot{}
	var ids []string
	for i, b := range cfg.Chatbots {
		if b.Webhook == nil {
			continue
		}
		bot, err := webhook.NewBot(b.Webhook.URL, b.Webhook.Secret, adapters.Client(cfg.TracerProvider))
		if err != nil {
			return nil, nil, fmt.Errorf("config: chatbots[%d].webhook: %w", i, err)
		}
		bots[b.ID] = bot
		ids = append(ids, b.ID)
	}
	return bots, ids, nil
}

// botQueued wakes this replica's delivery loop when an ingest queued a
// message for a running chatbot, so the bot hears of it at once rather
// than at the next poll.
func (s *Server) botQueued(ses *store.Session) {
	if ses.State == store.StateBot && s.bots[ses.ChatbotID] != nil {
		s.wake()
	}
}

func (s *Server) wake() {
	select {
	case s.nudge <- struct{}{}:
	default:
	}
}

// runBot delivers a claimed message to its chatbot and carries out the
// answer.
func (s *Server) runBot(ctx context.Context, d store.DeliveryClaim) {
	const platform = "chatbot"
	bot := s.bots[d.Bot.ChatbotID]
	if bot == nil {
		// Configured without a webhook since it was queued: end it, or
		// its session would stay BOT with nobody to answer.
		gone := &store.PlatformError{Code: "chatbot_not_running", Message: "the chatbot no longer runs on a webhook"}
		if !s.endBot(ctx, d, gone) {
			return
		}
		o := store.DeliveryOutcome{Status: store.StatusFailed, Error: gone}
		s.finish(d, o)
		s.metrics.attempt(platform, o)
		return
	}
	sctx, cancel := context.WithTimeout(ctx, sendTimeout)
	began := time.Now()
	ans, refused, err := bot.Deliver(sctx, &d.Bot.Session, &d.Message, &d.Bot.Contact)
	cancel()
	if err == nil && refused == nil {
		refused = s.checkAnswer(&ans)
	}
	switch {
	case err != nil:
		s.metrics.platformCall(platform, "error", time.Since(began))
		o := s.retry(platform, d.Bot.ChatbotID, webhook.Schedule.Retry, d, err)
		if o.Status == 0 {
			s.finish(d, o)
			s.metrics.attempt(platform, o)
			return
		}
		refused = o.Error
	case refused != nil:
		s.metrics.platformCall(platform, "refused", time.Since(began))
	default:
		s.metrics.platformCall(platform, "accepted", time.Since(began))
	}
	o := store.DeliveryOutcome{Status: store.StatusDelivered}
	if refused != nil {
		o = store.DeliveryOutcome{Status: store.StatusFailed, Error: refused}
		if !s.endBot(ctx, d, refused) {
			return // the lease ends, and the message is tried again
		}
	} else if !s.carryOut(ctx, d, &ans) {
		return
	}
	s.finish(d, o)
	s.metrics.attempt(platform, o)
	s.wake() // the session's next message, if any, is due now
}

// checkAnswer refuses an answer past the limits: at most maxBotReplies
// replies, each a message PostMessage would take.
func (s *Server) checkAnswer(a *webhook.Answer) *store.PlatformError {
	if len(a.Replies) > maxBotReplies {
		return badAnswer("%d replies; at most %d", len(a.Replies), maxBotReplies)
	}
	for i, r := range a.Replies {
		switch {
		case r.Text == "":
			return badAnswer("replies[%d].text is empty", i)
		case len(r.Text) > s.cfg.Limits.MessageBytes:
			return badAnswer("replies[%d].text is %d bytes; at most %d", i, len(r.Text), s.cfg.Limits.MessageBytes)
		case !utf8.ValidString(r.Text):
			return badAnswer("replies[%d].text is not UTF-8", i)
		}
	}
	return nil
}

func badAnswer(format string, args ...any) *store.PlatformError {
	return &store.PlatformError{Code: "bad_answer", Message: fmt.Sprintf(format, args...)}
}

// carryOut does what the chatbot answered about d's message: its replies,
// then handoff or end. It reports false when it could not (the backend,
// the server stopping): the
// delivery is then left to its lease and made again, and what was done
// already is not done twice.
func (s *Server) carryOut(ctx context.Context, d store.DeliveryClaim, a *webhook.Answer) bool {
	ses := &d.Bot.Session
	at := sessionPlace(ses)
	var fallback *FallbackTemplate
	if bot, ok := s.dir.chatbot(d.Bot.ChatbotID); ok {
		fallback = bot.FallbackTemplate
	}
	for i, r := range a.Replies {
		// '#' is in no key a client may send: a reply's key is its own.
		key := "#bot:" + d.Message.ID + ":" + strconv.Itoa(i)
		_, err := s.chat.post(ctx, at, nil, store.OutboundMessage{Tenant: ses.Tenant, SessionID: ses.ID, Text: r.Text,
			FromUser: d.Bot.ChatbotID, Idempotency: store.Idempotency{Key: key, Fingerprint: key}}, nil, fallback)
		switch {
		case sessionGone(err):
			// The session ended meanwhile: nothing more goes into it.
			s.cfg.Logger.Debug("a chatbot's reply not posted", "session_id", ses.ID, "err", err)
			return true
		case err != nil:
			// The backend, or the server stopping (checkAnswer refused
			// what a post would, and no client key is a reply's): the
			// lease ends and the answer is carried out again (its replies
			// once each).
			s.cfg.Logger.Warn("cannot post a chatbot's reply", "session_id", ses.ID, "err", err)
			return false
		}
	}
	var u store.SessionUpdate
	switch {
	case a.Handoff:
		u.State = store.StateInProgress
	case a.End:
		u.EndBot = true
	default:
		return true
	}
	u.IfChatbot = d.Bot.ChatbotID
	_, err := s.cfg.Store.UpdateSession(ctx, ses.Tenant, ses.ID, u)
	return err == nil || sessionGone(err)
}

// endBot ends a chatbot that failed d's message, if it still runs the
// session: OPEN again, with why in its metadata. It reports false when the
// backend failed it.
func (s *Server) endBot(ctx context.Context, d store.DeliveryClaim, why *store.PlatformError) bool {
	ses := &d.Bot.Session
	s.cfg.Logger.Warn("chatbot failed; its session is OPEN again", "chatbot_id", d.Bot.ChatbotID, "session_id", ses.ID,
		"message_id", d.Message.ID, "attempt", d.Attempt, "code", why.Code, "error", why.Message)
	// Conditional on the chatbot: a session that was ended, or handed to
	// another chatbot meanwhile, is left as it is.
	msg := cut(why.Code+": "+why.Message, s.cfg.Limits.MetadataValueBytes)
	_, err := s.cfg.Store.UpdateSession(ctx, ses.Tenant, ses.ID,
		store.SessionUpdate{EndBot: true, Metadata: map[string]string{chatbotError: msg}, IfChatbot: d.Bot.ChatbotID})
	return err == nil || sessionGone(err)
}

// sessionGone reports an error that says the session has ended: what a
// chatbot's answer would have done to it no longer applies. Any other
// error (the backend, the server stopping) leaves the delivery to its
// lease, to be carried out again.
func sessionGone(err error) bool {
	return errors.Is(err, store.ErrSessionClosed) || errors.Is(err, store.ErrSessionExpired) || errors.Is(err, store.ErrSessionNotFound)
}

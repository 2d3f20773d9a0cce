package redisstore

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/store"
)

// Chatbot queues (docs/design.md §9). A session's inbound messages for
// the chatbot that runs it are queued in its slot (bq:<sid>, written by
// ingest.lua with the append), and the queue is one outbox entry,
// "<tenant> <sid> @bot": its claim is of the queue's head (bot_read.lua),
// so the session's messages reach the chatbot in order, one at a time, on
// the same schedule, leases and retries as any delivery. The outbox lives
// in another slot, so it is written after the append: an ingest that dies
// in between leaves the queue unscheduled until the ingest is retried
// (the platform's redelivery, the caller's idempotency key), which
// schedules it again.

// detachedTimeout bounds the steps that outlive their caller: the chatbot
// queue's outbox steps (scheduleBot, dropBotQueue), and a listener's
// indexing on a Cluster and its undoing.
const detachedTimeout = 5 * time.Second

// botDelivery is a chatbot queue's delivery id in the outbox.
const botDelivery = "@bot"

// botsArg is ingest.lua's list of chatbots that run on webhooks.
func botsArg(bots []string) string {
	if len(bots) == 0 {
		return ""
	}
	return " " + strings.Join(bots, " ") + " "
}

// queuedForBot reports whether an ingest into ses queued its message.
func queuedForBot(ses *store.Session, bots []string) bool {
	return ses.State == store.StateBot && slices.Contains(bots, ses.ChatbotID)
}

func (s *Store) botQueueKey(sid string) string { return s.sessionSlot(sid) + "bq:" + sid }

// scheduleBot makes a session's chatbot queue due now, unless it is in
// the outbox already (being delivered, or waiting for a retry): 1 round
// trip. It follows a write the queue already holds, so it runs whatever
// becomes of the caller: one that went away would strand the message.
func (s *Store) scheduleBot(ctx context.Context, tenant, sid string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	defer cancel()
	member := outboxMember(tenant, sid, botDelivery)
	pipe := s.c.Pipeline()
	pipe.ZAddNX(ctx, s.outboxKey(), redis.Z{Score: float64(s.o.Clock.Now().UnixMilli()), Member: member})
	pipe.HSetNX(ctx, s.attemptsKey(), member, 0)
	_, err := pipe.Exec(ctx)
	return unavailable(err)
}

// decodeBotClaim completes the claim of a chatbot queue from bot_read.lua's
// answer.
func decodeBotClaim(c *store.DeliveryClaim, vals []string, now time.Time) error {
	m, err := decodeMessage(vals[1])
	if err != nil {
		return err
	}
	rec, err := decodeRecord("session", vals[2])
	if err != nil {
		return err
	}
	ses, err := sessionFromMap(rec, now)
	if err != nil {
		return err
	}
	ctRec, err := decodeRecord("contact", vals[3])
	if err != nil {
		return err
	}
	ct, err := contactFromMap(ctRec, ses.Tenant, ses.Platform, ses.User)
	if err != nil {
		return err
	}
	c.Message, c.Bot = m, &store.BotDelivery{ChatbotID: ses.ChatbotID, Session: ses, Contact: ct}
	return nil
}

// finishBot ends the delivery of d's message to its chatbot and makes the
// queue's next message due: 2 round trips (3 when the queue is empty).
func (s *Store) finishBot(ctx context.Context, d store.DeliveryClaim) error {
	entry := d.Message.ID + " " + strconv.FormatUint(d.Message.Seq, 10) + " " + d.Bot.ChatbotID
	v, err := s.batch.run(ctx, botFinishScript, []string{s.botQueueKey(d.SessionID)}, entry)
	if err != nil {
		return unavailable(err)
	}
	switch left, _ := v.(int64); {
	case left < 0:
		return nil
	case left == 0:
		return s.dropBotQueue(ctx, d.Tenant, d.SessionID)
	}
	member := outboxMember(d.Tenant, d.SessionID, botDelivery)
	pipe := s.c.Pipeline()
	pipe.ZAdd(ctx, s.outboxKey(), redis.Z{Score: float64(s.o.Clock.Now().UnixMilli()), Member: member})
	pipe.HSet(ctx, s.attemptsKey(), member, 0)
	_, err = pipe.Exec(ctx)
	return unavailable(err)
}

// dropBotQueue takes a session's chatbot queue, found empty, out of the
// outbox, then looks at the queue again: an ingest that queued a message
// meanwhile found the entry still there and left it alone, so it is put
// back. Once begun it runs to its end whatever becomes of the caller: a
// caller that went away between the two steps would strand a message
// queued meanwhile without an outbox entry.
func (s *Store) dropBotQueue(ctx context.Context, tenant, sid string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	defer cancel()
	member := outboxMember(tenant, sid, botDelivery)
	pipe := s.c.Pipeline()
	pipe.ZRem(ctx, s.outboxKey(), member)
	pipe.HDel(ctx, s.attemptsKey(), member)
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable(err)
	}
	n, err := s.c.LLen(ctx, s.botQueueKey(sid)).Result()
	if err != nil {
		return unavailable(err)
	}
	if n > 0 {
		return s.scheduleBot(ctx, tenant, sid)
	}
	return nil
}

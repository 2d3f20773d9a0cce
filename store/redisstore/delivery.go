package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// Deliveries (docs/design.md §9). The outbox is one sorted set for the
// deployment, of "<tenant> <session id> <delivery id>" scored by when each
// delivery is due, beside a hash of their attempts. A delivery's entry is
// written before its message is appended, so whatever dies in between,
// the outbox knows of every PENDING message: a claim of a delivery whose
// message never came finds no message and drops it. The session's
// delivery index (dv:<sid>, written with the message) maps a delivery to
// its message; the status overlay (ms:<sid>) holds the statuses that
// changed after the append.

func (s *Store) outboxKey() string   { return s.slot(ids.Tag("outbox")) + "ob" }
func (s *Store) attemptsKey() string { return s.slot(ids.Tag("outbox")) + "oba" }

func outboxMember(tenant, sid, did string) string { return tenant + " " + sid + " " + did }

func (s *Store) platformKey(tenant, platform, id string) string {
	return s.slot(ids.Tag(tenant, platform, id)) + "pm:" + tenant + ":" + platform + ":" + id
}

// enqueue records delivery d of a message about to be appended to session
// sid, leased to the caller: 1 round trip.
func (s *Store) enqueue(ctx context.Context, tenant, sid string, d *store.Delivery) error {
	if d == nil {
		return nil
	}
	member := outboxMember(tenant, sid, d.ID)
	pipe := s.c.Pipeline()
	pipe.ZAdd(ctx, s.outboxKey(), redis.Z{Score: float64(s.o.Clock.Now().Add(d.Lease).UnixMilli()), Member: member})
	pipe.HSet(ctx, s.attemptsKey(), member, 1)
	_, err := pipe.Exec(ctx)
	return unavailable(err)
}

// ClaimDeliveries costs 2 round trips when anything is due: the claim, then
// each claimed delivery's message, pipelined.
func (s *Store) ClaimDeliveries(ctx context.Context, n int, lease time.Duration) ([]store.DeliveryClaim, error) {
	v, err := s.batch.run(ctx, claimScript, []string{s.outboxKey(), s.attemptsKey()}, s.now(), ms(lease), n)
	if err != nil {
		return nil, unavailable(err)
	}
	pairs, _ := v.([]any)
	type claimed struct {
		member string
		claim  store.DeliveryClaim
		answer func() (string, []string, error)
	}
	var cs []*claimed
	pipe := s.c.Pipeline()
	for i := 0; i+1 < len(pairs); i += 2 {
		member, _ := pairs[i].(string)
		attempt, _ := strconv.Atoi(fmt.Sprint(pairs[i+1]))
		f := strings.Fields(member)
		if len(f) != 3 {
			continue
		}
		c := &claimed{member: member, claim: store.DeliveryClaim{Tenant: f[0], SessionID: f[1], ID: f[2], Attempt: attempt}}
		slotp := s.sessionSlot(c.claim.SessionID)
		if c.claim.ID == botDelivery {
			c.answer = s.inPipe(ctx, pipe, botReadScript, []string{s.botQueueKey(c.claim.SessionID)}, slotp, c.claim.SessionID, s.now())
		} else {
			c.answer = s.inPipe(ctx, pipe, readDeliveryScript, []string{slotp + "dv:" + c.claim.SessionID}, slotp, c.claim.SessionID, c.claim.ID)
		}
		cs = append(cs, c)
	}
	if len(cs) == 0 {
		return nil, nil
	}
	_, _ = pipe.Exec(ctx)
	var out []store.DeliveryClaim
	var dropped []string
	var idleBots []store.DeliveryClaim
	for _, c := range cs {
		code, vals, err := c.answer()
		if err != nil {
			return out, err
		}
		if c.claim.ID == botDelivery {
			switch {
			case code != "OK":
				idleBots = append(idleBots, c.claim)
			case decodeBotClaim(&c.claim, vals, s.o.Clock.Now()) == nil:
				out = append(out, c.claim)
			default:
				return out, fmt.Errorf("redisstore: a chatbot queue's head %q cannot be read", vals[0])
			}
			continue
		}
		if code == "OK" {
			m, err := messageWithStatus(vals[0], vals[1])
			if err == nil && !m.Status.Settled() {
				c.claim.Message = m
				out = append(out, c.claim)
				continue
			}
		}
		dropped = append(dropped, c.member)
	}
	if len(dropped) > 0 {
		s.background(func(ctx context.Context) { s.dropDeliveries(ctx, dropped...) })
	}
	for _, c := range idleBots {
		s.background(func(ctx context.Context) {
			if err := s.dropBotQueue(ctx, c.Tenant, c.SessionID); err != nil {
				s.o.Logger.Debug("cannot drop an idle chatbot queue from the outbox", "err", err)
			}
		})
	}
	return out, nil
}

func (s *Store) dropDeliveries(ctx context.Context, members ...string) {
	pipe := s.c.Pipeline()
	pipe.ZRem(ctx, s.outboxKey(), strSlice(members)...)
	pipe.HDel(ctx, s.attemptsKey(), members...)
	if _, err := pipe.Exec(ctx); err != nil {
		s.o.Logger.Debug("cannot drop finished deliveries from the outbox", "err", err)
	}
}

func strSlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// FinishDelivery costs 1 round trip: the message's status, the outbox and
// the platform id's record, pipelined; 1 more to apply receipts that came
// before it (rare).
func (s *Store) FinishDelivery(ctx context.Context, d store.DeliveryClaim, o store.DeliveryOutcome) (store.Message, error) {
	member := outboxMember(d.Tenant, d.SessionID, d.ID)
	if o.Status == 0 {
		err := s.c.ZAddXX(ctx, s.outboxKey(), redis.Z{Score: float64(o.RetryAt.UnixMilli()), Member: member}).Err()
		return d.Message, unavailable(err)
	}
	if d.Bot != nil {
		return d.Message, s.finishBot(ctx, d)
	}
	pipe := s.c.Pipeline()
	moved := s.queueStatus(ctx, pipe, d.Tenant, &d.Message, o.Status, o.PlatformID, o.Error, s.o.Clock.Now(), d.ID)
	pipe.ZRem(ctx, s.outboxKey(), member)
	pipe.HDel(ctx, s.attemptsKey(), member)
	var early func() *redis.Cmd
	if o.PlatformID != "" {
		early = piped(ctx, s.c, pipe, platformRefScript, []string{s.platformKey(d.Tenant, d.Message.Platform, o.PlatformID)},
			d.Tenant+" "+d.SessionID+" "+d.Message.ID, ms(store.PlatformIDRetention))
	}
	_, _ = pipe.Exec(ctx)
	m, err := moved()
	if err != nil {
		return m, err
	}
	if early != nil {
		raw, err := early().Text()
		if err != nil {
			return m, unavailable(err)
		}
		if raw != "" {
			if m, err = s.applyEarly(ctx, d.Tenant, m, raw); err != nil {
				return m, err
			}
		}
	}
	return m, nil
}

// wireReceipt is a receipt kept until its message is known.
type wireReceipt struct {
	Status int    `json:"st"`
	At     int64  `json:"at"`
	Code   string `json:"ec,omitempty"`
	Msg    string `json:"em,omitempty"`
}

func (s *Store) applyEarly(ctx context.Context, tenant string, m store.Message, raw string) (store.Message, error) {
	var rs []wireReceipt
	if err := json.Unmarshal([]byte(raw), &rs); err != nil {
		return m, fmt.Errorf("redisstore: early receipts: %w", err)
	}
	for _, r := range rs {
		pipe := s.c.Pipeline()
		moved := s.queueStatus(ctx, pipe, tenant, &m, store.MessageStatus(r.Status), "", platformError(r.Code, r.Msg), time.UnixMilli(r.At), "")
		_, _ = pipe.Exec(ctx)
		var err error
		if m, err = moved(); err != nil {
			return m, err
		}
	}
	return m, nil
}

func platformError(code, msg string) *store.PlatformError {
	if code == "" && msg == "" {
		return nil
	}
	return &store.PlatformError{Code: code, Message: msg}
}

// queueStatus queues status.lua for m on pipe; the function it returns
// gives m as it then stands.
func (s *Store) queueStatus(ctx context.Context, pipe redis.Pipeliner, tenant string, m *store.Message, st store.MessageStatus,
	platformID string, perr *store.PlatformError, at time.Time, did string) func() (store.Message, error) {
	slotp := s.sessionSlot(m.SessionID)
	var code, msg string
	if perr != nil {
		code, msg = perr.Code, perr.Message
	}
	answer := s.inPipe(ctx, pipe, statusScript, []string{slotp + "ms:" + m.SessionID},
		slotp, m.SessionID, m.ID, m.Seq, int(st), platformID, at.UnixMilli(), code, msg,
		s.sessionChannel(tenant, m.SessionID), did, ms(s.o.SessionTTL+s.o.EndedRetention))
	base := *m
	return func() (store.Message, error) {
		code, out, err := answer()
		if err != nil {
			return base, err
		}
		if code == "GONE" {
			return base, store.ErrMessageNotFound
		}
		if err := applyStatus(&base, out[0]); err != nil {
			return base, err
		}
		return base, nil
	}
}

// ApplyReceipt costs 1 round trip, and 1 more when the message is known.
func (s *Store) ApplyReceipt(ctx context.Context, r store.Receipt) error {
	w := wireReceipt{Status: int(r.Status), At: r.At.UnixMilli()}
	if r.Error != nil {
		w.Code, w.Msg = r.Error.Code, r.Error.Message
	}
	js, _ := json.Marshal(w)
	code, out, err := s.reply(ctx, platformReceiptScript, []string{s.platformKey(r.Tenant, r.Platform, r.PlatformID)},
		string(js), ms(store.EarlyReceiptWait), store.MaxEarlyReceipts)
	if err != nil || code != "REF" {
		return err
	}
	f := strings.Fields(out[0])
	if len(f) != 3 {
		return fmt.Errorf("redisstore: platform id record %q", out[0])
	}
	seq, err := ids.MessageSeq(f[2])
	if err != nil {
		return err
	}
	m := &store.Message{ID: f[2], Seq: seq, SessionID: f[1]}
	pipe := s.c.Pipeline()
	moved := s.queueStatus(ctx, pipe, f[0], m, r.Status, "", r.Error, r.At, "")
	_, _ = pipe.Exec(ctx)
	if _, err := moved(); err != nil && !errors.Is(err, store.ErrMessageNotFound) {
		return err
	}
	return nil
}

// GetMessage costs 1 round trip.
func (s *Store) GetMessage(ctx context.Context, tenant, sessionID, messageID string) (store.Message, error) {
	seq, err := ids.MessageSeq(messageID)
	if err != nil {
		return store.Message{}, store.ErrMessageNotFound
	}
	msgs, _, err := s.readHistory(ctx, tenant, sessionID, strconv.FormatUint(seq, 10)+"-0", 1)
	if err != nil {
		return store.Message{}, err
	}
	if len(msgs) == 0 || msgs[0].ID != messageID {
		return store.Message{}, store.ErrMessageNotFound
	}
	return msgs[0], nil
}

// readHistory runs list.lua: up to count messages from stream id start,
// with their statuses, and the session's last seq.
func (s *Store) readHistory(ctx context.Context, tenant, sessionID, start string, count int) ([]store.Message, uint64, error) {
	slotp := s.sessionSlot(sessionID)
	code, out, err := s.reply(ctx, listScript, []string{slotp + "s:" + sessionID},
		tenant, slotp+"h:"+sessionID, slotp+"ms:"+sessionID, start, count)
	if err != nil {
		return nil, 0, err
	}
	if code != "OK" {
		return nil, 0, store.ErrSessionNotFound
	}
	last, _ := strconv.ParseUint(out[0], 10, 64)
	n, _ := strconv.Atoi(out[1])
	if len(out) != 2+2*n {
		return nil, 0, fmt.Errorf("redisstore: history reply of %d fields for %d messages", len(out), n)
	}
	msgs := make([]store.Message, n)
	for i := range n {
		if msgs[i], err = messageWithStatus(out[2+i], out[2+n+i]); err != nil {
			return nil, 0, err
		}
	}
	return msgs, last, nil
}

// wireStatus is a status that changed after the append (status.lua).
type wireStatus struct {
	Status     int    `json:"st"`
	PlatformID string `json:"pm,omitempty"`
	At         int64  `json:"sa"`
	Code       string `json:"ec,omitempty"`
	Msg        string `json:"em,omitempty"`
	// On the event only.
	ID  string `json:"id,omitempty"`
	Seq uint64 `json:"seq,omitempty"`
}

// messageWithStatus decodes a history entry and its overlay (” for none).
func messageWithStatus(raw, overlay string) (store.Message, error) {
	m, err := decodeMessage(raw)
	if err != nil || overlay == "" {
		return m, err
	}
	return m, applyStatus(&m, overlay)
}

func applyStatus(m *store.Message, overlay string) error {
	var w wireStatus
	if err := json.Unmarshal([]byte(overlay), &w); err != nil {
		return fmt.Errorf("redisstore: message status: %w", err)
	}
	m.Status, m.StatusAt, m.Error = store.MessageStatus(w.Status), time.UnixMilli(w.At).UTC(), platformError(w.Code, w.Msg)
	if w.PlatformID != "" {
		m.PlatformID = w.PlatformID
	}
	return nil
}

// decodeStatusEvent reads status.lua's publication.
func decodeStatusEvent(payload string) (*store.StatusChange, error) {
	var w wireStatus
	if err := json.Unmarshal([]byte(payload), &w); err != nil {
		return nil, fmt.Errorf("redisstore: status event: %w", err)
	}
	return &store.StatusChange{MessageID: w.ID, Seq: w.Seq, Status: store.MessageStatus(w.Status), PlatformID: w.PlatformID,
		At: time.UnixMilli(w.At).UTC(), Error: platformError(w.Code, w.Msg)}, nil
}

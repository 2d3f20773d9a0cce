package redisstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// AppendOutbound is one script: idempotency check, session state, XADD,
// TTL refresh, record of the key and PUBLISH to watchers. 1 round trip, in
// which concurrent posts share one script call.
//
// A message with a Delivery costs 1 more round trip before: the outbox
// entry, which must exist before the message does (delivery.go).
func (s *Store) AppendOutbound(ctx context.Context, m store.OutboundMessage) (store.Message, bool, error) {
	if err := s.enqueue(ctx, m.Tenant, m.SessionID, m.Delivery); err != nil {
		return store.Message{}, false, err
	}
	now := s.now()
	r, err := s.postCall(m, now)
	if err != nil {
		return store.Message{}, false, err
	}
	v, err := s.batch.do(ctx, r)
	msg, replayed, err := postAnswer(v, err, m, now)
	if err == nil && !replayed {
		err = s.trackActivity(ctx, m.Tenant, m.SessionID, msg.CreatedAt)
	}
	return msg, replayed, err
}

// postCall is the batcher call that posts m at now.
func (s *Store) postCall(m store.OutboundMessage, now int64) (*batchReq, error) {
	suffix, err := messageSuffix(&store.Message{
		Direction: store.Outbound, Text: m.Text, FromUser: m.FromUser, Status: m.Status, Metadata: m.Metadata, Error: m.Error,
		Template: m.Template,
	})
	if err != nil {
		return nil, err
	}
	slotp := s.sessionSlot(m.SessionID)
	did := ""
	if m.Delivery != nil {
		did = m.Delivery.ID
	}
	return &batchReq{
		sc: postScript, keys: []string{slotp + "s:" + m.SessionID}, group: s.mergeGroup(slotp), common: postCommon,
		args: append(append(make([]any, 0, postCommon+postEach), s.postShared...),
			slotp, now, m.Tenant, ids.MessageRandom(), suffix,
			s.idemKey(slotp, m.Tenant, "post", m.SessionID, m.Idempotency), m.Idempotency.Fingerprint,
			did, s.scriptActivityKey(m.Tenant)),
	}, nil
}

// postAnswer reads postScript's reply (or failure) to the post of m, sent
// at now.
func postAnswer(v any, err error, m store.OutboundMessage, now int64) (store.Message, bool, error) {
	if err != nil {
		return store.Message{}, false, unavailable(err)
	}
	if posted, ok := v.(string); ok {
		return postedMessage(posted, m, now)
	}
	one, _ := v.([]any)
	code, out, err := splitReply(one)
	if err != nil {
		return store.Message{}, false, err
	}
	switch code {
	case "REPLAY":
		msg, err := decodeMessage(out[0])
		return msg, true, err
	case "ERROR":
		return store.Message{}, false, unavailable(errors.New(out[0]))
	default:
		return store.Message{}, false, codeErr(code)
	}
}

// postedMessage is m as posted, from postScript's "<id> <seq> <platform>
// <thread> <channel>" (ids, platforms, threads and channels hold no spaces;
// the thread may be empty; the channel, last, is taken whole).
func postedMessage(posted string, m store.OutboundMessage, now int64) (store.Message, bool, error) {
	id, rest, ok1 := strings.Cut(posted, " ")
	seqs, rest, ok2 := strings.Cut(rest, " ")
	platform, rest, ok3 := strings.Cut(rest, " ")
	thread, channel, ok4 := strings.Cut(rest, " ")
	seq, err := strconv.ParseUint(seqs, 10, 64)
	if !ok1 || !ok2 || !ok3 || !ok4 || err != nil {
		return store.Message{}, false, fmt.Errorf("redisstore: unexpected post reply %q", posted)
	}
	return store.Message{
		ID: id, Seq: seq, SessionID: m.SessionID, Direction: store.Outbound, Text: m.Text, FromUser: m.FromUser,
		Platform: platform, Channel: channel, CreatedAt: time.UnixMilli(now).UTC(), StatusAt: time.UnixMilli(now).UTC(),
		Status: m.Status, Metadata: m.Metadata, Error: m.Error, Template: m.Template, Thread: thread,
	}, false, nil
}

// Ingest costs 1 round trip when no listener could match: the ingest script
// (which also returns the session and user listener indexes) pipelined with
// reading the channel and "any" indexes after it. Each candidate that
// matches or is in scope costs one compare-and-set, all pipelined in a
// second round trip. An ingest into a named session learns the session's
// channel from the script; if the caller's hint (in.Channel) was missing
// or wrong, reading that channel's index costs one more round trip. On
// Cluster the channel and "any" indexes live on other nodes, where a
// pipeline does not keep its order, so they are read after the script's
// answer: one round trip more.
//
// The indexes are read after the script ran, never before: a listener
// registered (waiting sent) before the message was appended is then in
// them, as the contract promises. A listener registered in between may be
// a candidate too, and match a message that came a moment before it.
//
// A replay of the idempotency key finishes the matching its first call
// may not have done (it failed after the append): the compare-and-sets
// are safe to run again, and a listener registered after the message is
// left alone.
func (s *Store) Ingest(ctx context.Context, in store.InboundMessage) (store.IngestResult, error) {
	// The script writes the sender: the session's user.
	suffix, err := messageSuffix(&store.Message{
		Direction: store.Inbound, Text: in.Text, Status: store.StatusReceived, Metadata: in.Metadata, Raw: in.Raw, Thread: in.Thread,
	})
	if err != nil {
		return store.IngestResult{}, err
	}
	var key, slotp, target, newSID string
	if in.SessionID != "" {
		slotp = s.sessionSlot(in.SessionID)
		key, target = slotp+"s:"+in.SessionID, in.SessionID
	} else {
		tag := userTag(in.Tenant, in.User)
		slotp = s.slot(tag)
		target = in.Platform + ":" + in.Channel + ":" + in.User
		key, newSID = slotp+"a:"+in.Tenant+":"+target, ids.TaggedSession(tag)
	}
	now := s.o.Clock.Now()
	idemKey := s.idemKey(slotp, in.Tenant, "ingest", target, in.Idempotency)
	args := []any{now.UnixMilli(), in.Tenant, in.Platform, in.Channel, in.User, in.SessionID, newSID,
		ms(s.o.SessionTTL), ms(s.o.EndedRetention), s.o.HistoryLimit, ids.MessageRandom(), suffix, slotp,
		s.sessionEventPrefix(), idemKey, in.Idempotency.Fingerprint, ms(s.o.IdempotencyTTL), s.scriptActivityKey(in.Tenant), botsArg(in.Bots), in.Thread}
	args = append(args, s.scriptOutboxKeys()...)
	args = append(args, botDelivery, in.WroteAt(now).UnixMilli())

	pipe := s.c.Pipeline()
	answer := s.inPipe(ctx, pipe, ingestScript, []string{key}, args...)
	var early []*redis.StringSliceCmd
	if s.single() {
		// On one server, after the script on the same connection.
		early = s.queueIndexReads(ctx, pipe, s.neighbourBuckets(in.Tenant, in.Channel))
	}
	_, _ = pipe.Exec(ctx)
	code, out, err := answer()
	if err != nil {
		return store.IngestResult{}, err
	}
	switch code {
	case "OK":
	case "REPLAY":
		return s.finishReplay(ctx, in, idemKey, out[0], now)
	default:
		return store.IngestResult{}, codeErr(code)
	}
	res, wire, err := decodeIngest(out[0], now)
	if err != nil {
		return res, err
	}
	// The message is stored: the rest finishes the ingest whatever becomes
	// of its caller, its listeners' outcomes first. A caller gone here
	// would leave a listener pending that the message matched, with no
	// retry to finish it when it had no idempotency key. Each call is
	// bounded by the client's own timeouts; the matching, by its work (a
	// tenant's costly expressions take what they take).
	// Each step is tried whatever became of the one before; the first
	// error is the answer.
	ctx = context.WithoutCancel(ctx)
	var matchErr, botErr error
	res.Matched, matchErr = s.matchIngested(ctx, in, &res, string(wire.Message), out[1:], early)
	if len(res.Matched) > 0 && idemKey != "" {
		s.rememberMatched(ctx, idemKey, in.Idempotency.Fingerprint, now, wire, res.Matched)
	}
	activityErr := s.trackActivity(ctx, in.Tenant, res.Session.ID, res.Message.CreatedAt)
	if queuedForBot(&res.Session, in.Bots) && !s.single() {
		botErr = s.scheduleBot(ctx, in.Tenant, res.Session.ID)
	}
	return res, cmp.Or(matchErr, activityErr, botErr)
}

// matchIngested resolves the listeners an appended message matches: the
// candidates the ingest script answered (members) and read beside it
// (early), and those of the buckets it could not read in advance.
func (s *Store) matchIngested(ctx context.Context, in store.InboundMessage, res *store.IngestResult, rawMsg string,
	members []string, early []*redis.StringSliceCmd) ([]string, error) {
	more, err := indexVals(early)
	if err != nil {
		return nil, err
	}
	members = append(members, more...)
	var late []string
	switch {
	case !s.single():
		late = s.neighbourBuckets(in.Tenant, res.Message.Channel)
	case res.Message.Channel != in.Channel:
		late = []string{s.channelBucket(in.Tenant, res.Message.Channel)}
	}
	if len(late) > 0 {
		more, err := s.readIndexes(ctx, late)
		if err != nil {
			return nil, err
		}
		members = append(members, more...)
	}
	return s.match(ctx, in.Tenant, &res.Message, rawMsg, members, 0)
}

// finishReplay answers a replayed ingest (raw is the first call's result)
// after deciding, again, every listener the message matches that was
// registered by the time it was appended.
func (s *Store) finishReplay(ctx context.Context, in store.InboundMessage, idemKey, raw string, now time.Time) (store.IngestResult, error) {
	res, wire, err := decodeIngest(raw, now)
	res.Replayed = true
	if err != nil {
		return res, err
	}
	rawMsg := string(wire.Message)
	if queuedForBot(&res.Session, in.Bots) {
		// The first call may have died before it scheduled the queue: on
		// a Cluster, or on one server a replica from before the script
		// did it itself. Scheduling is idempotent (ZADD NX).
		if err := s.scheduleBot(ctx, in.Tenant, res.Session.ID); err != nil {
			return res, err
		}
	}
	msg := &res.Message
	slotp := s.sessionSlot(msg.SessionID)
	buckets := append(s.neighbourBuckets(in.Tenant, msg.Channel),
		slotp+"x:s:"+in.Tenant+":"+msg.SessionID, slotp+"x:u:"+in.Tenant+":"+res.Session.User)
	members, err := s.readIndexes(ctx, buckets)
	if err != nil {
		return res, err
	}
	matched, err := s.match(ctx, in.Tenant, msg, rawMsg, members, msg.CreatedAt.UnixMilli())
	if err != nil {
		return res, err
	}
	if all := union(res.Matched, matched); len(all) != len(res.Matched) {
		res.Matched = all
		s.rememberMatched(ctx, idemKey, in.Idempotency.Fingerprint, now, wire, all)
	}
	return res, nil
}

// single reports whether the client talks to one server (standalone, or
// the Sentinel-managed primary), where one script may touch any key and a
// pipeline runs in order.
func (s *Store) single() bool {
	_, ok := s.c.(*redis.Client)
	return ok
}

// neighbourBuckets are the index sets outside a message's slot that hold
// its candidates: its channel's, and the tenant's unfiltered listeners.
func (s *Store) neighbourBuckets(tenant, channel string) []string {
	if channel == "" {
		return []string{s.anyBucket(tenant)}
	}
	return []string{s.channelBucket(tenant, channel), s.anyBucket(tenant)}
}

func (s *Store) queueIndexReads(ctx context.Context, pipe redis.Pipeliner, buckets []string) []*redis.StringSliceCmd {
	cmds := make([]*redis.StringSliceCmd, len(buckets))
	for i, b := range buckets {
		cmds[i] = pipe.SMembers(ctx, b)
	}
	return cmds
}

// readIndexes reads index sets in one pipeline.
func (s *Store) readIndexes(ctx context.Context, buckets []string) ([]string, error) {
	pipe := s.c.Pipeline()
	cmds := s.queueIndexReads(ctx, pipe, buckets)
	_, _ = pipe.Exec(ctx)
	return indexVals(cmds)
}

func indexVals(cmds []*redis.StringSliceCmd) ([]string, error) {
	var out []string
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return nil, unavailable(err)
		}
		out = append(out, c.Val()...)
	}
	return out, nil
}

// union is a and b's ids, sorted, each once.
func union(a, b []string) []string {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

// decodeIngest reads the ingest script's result, and returns the message's
// own JSON too, for the listeners it resolves.
func decodeIngest(raw string, now time.Time) (store.IngestResult, *ingestWire, error) {
	var w ingestWire
	if err := json.Unmarshal([]byte(raw), &w); err != nil {
		return store.IngestResult{}, nil, fmt.Errorf("redisstore: ingest result: %w", err)
	}
	var r store.IngestResult
	var err error
	if r.Message, err = decodeMessage(string(w.Message)); err != nil {
		return r, nil, err
	}
	if r.Session, err = decodeSession(string(w.Session), now); err != nil {
		return r, nil, err
	}
	r.SessionStarted, r.Matched = w.Started, w.Matched
	return r, &w, nil
}

// ingestWire is the ingest script's answer (ingest.lua), as the
// idempotency record keeps it: with the listeners the message matched,
// once they are known.
type ingestWire struct {
	Message json.RawMessage `json:"m"`
	Session json.RawMessage `json:"s"`
	Started bool            `json:"started"`
	Matched []string        `json:"matched,omitempty"`
}

// rememberMatched adds the matched listeners to the idempotency record, so
// a replay reports them as the first call did. Best effort: the record
// itself was written atomically with the message.
func (s *Store) rememberMatched(ctx context.Context, key, fp string, now time.Time, w *ingestWire, matched []string) {
	w.Matched = matched
	res, err := json.Marshal(w)
	if err != nil {
		return
	}
	rec, _ := json.Marshal(struct {
		FP  string `json:"fp"`
		Exp int64  `json:"exp"`
		Res string `json:"res"`
	}{fp, now.Add(s.o.IdempotencyTTL).UnixMilli(), string(res)})
	if err := s.c.Set(ctx, key, rec, redis.KeepTTL).Err(); err != nil {
		s.o.Logger.Warn("cannot record matched listeners for an idempotency key", "err", err)
	}
}

// match evaluates candidate listeners against msg (rawMsg is its JSON) and
// decides, by compare-and-set, those it matches; in-scope mismatches are
// noted. It returns the ids it resolved.
//
// registeredBy, when not 0, leaves alone listeners registered after that
// time (see finishReplay).
func (s *Store) match(ctx context.Context, tenant string, msg *store.Message, rawMsg string, members []string, registeredBy int64) ([]string, error) {
	type cand struct {
		place   unindexed
		matched bool
		answer  func() *redis.Cmd
	}
	var cands []*cand
	judge := store.NewJudge(msg.Text)
	// A listener is a member of exactly one index set; seen keeps a set
	// read twice from making it a candidate twice. Scope is checked before
	// the keyword (a regular expression, perhaps), which only in-scope
	// candidates need, and each distinct keyword is judged once.
	seen := make(map[string]bool, len(members))
	for _, mem := range members {
		lid, fjson, ok := strings.Cut(mem, " ")
		if !ok || seen[lid] {
			continue
		}
		seen[lid] = true
		f, err := decodeFilter(fjson)
		if err != nil || !f.Scope(msg) {
			continue
		}
		matched, err := judge.Filter(&f)
		if err != nil {
			continue
		}
		cands = append(cands, &cand{place: unindexed{s.bucketKeys(tenant, &f), mem, lid}, matched: matched})
	}
	if len(cands) == 0 {
		return nil, nil
	}
	// Judge liveness at the message's own time: a message accepted before
	// a deadline matches even if its compare-and-set lands just after. The
	// compare-and-set still gives each listener one outcome.
	now := msg.CreatedAt.UnixMilli()
	pipe := s.c.Pipeline()
	for _, c := range cands {
		kind := "x"
		if c.matched {
			kind = "m"
		}
		c.answer = piped(ctx, s.c, pipe, resolveScript, []string{s.listenerKey(c.place.id)},
			now, kind, rawMsg, ms(s.o.OutcomeRetention), s.listenerChannel(tenant, c.place.id), msg.ID, registeredBy)
		if c.matched && registeredBy == 0 {
			// Whatever the compare-and-set answers, the listener is
			// pending no more: matched now, or decided or late before.
			pipe.ZRem(ctx, s.pendingKey(tenant), c.place.id)
		}
	}
	_, _ = pipe.Exec(ctx)
	var matched []string
	var stale []*cand
	for _, c := range cands {
		ans, err := c.answer().Text()
		if err != nil {
			return matched, unavailable(err)
		}
		switch ans {
		case "MATCHED":
			matched = append(matched, c.place.id)
			stale = append(stale, c)
		case "GONE", "DECIDED", "LATE":
			if ans != "LATE" || c.matched {
				stale = append(stale, c)
			}
		}
	}
	if len(stale) > 0 {
		// Drop decided and vanished listeners from their indexes. Off the
		// critical path and best effort: a stale member only costs a
		// compare-and-set that answers DECIDED.
		gone := make([]unindexed, len(stale))
		for i, c := range stale {
			gone[i] = c.place
		}
		s.forgetPending(tenant, gone)
	}
	sort.Strings(matched)
	return matched, nil
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// ListMessages is one script (list.lua): the session record, the stream
// range and the statuses that changed since; 1 round trip.
func (s *Store) ListMessages(ctx context.Context, tenant, sessionID, afterID string, limit int) ([]store.Message, error) {
	var after uint64
	start := "-"
	if afterID != "" {
		var err error
		if after, err = ids.MessageSeq(afterID); err != nil {
			return nil, store.ErrMessageNotFound
		}
		// Inclusive of the cursor's own entry, to check it is this
		// session's.
		start = strconv.FormatUint(after, 10) + "-0"
	}
	msgs, last, err := s.readHistory(ctx, tenant, sessionID, start, limit+1)
	if err != nil {
		return nil, err
	}
	if after > last {
		return nil, store.ErrMessageNotFound
	}
	if len(msgs) > 0 && afterID != "" && msgs[0].Seq == after {
		if msgs[0].ID != afterID {
			return nil, store.ErrMessageNotFound
		}
		msgs = msgs[1:]
	}
	return msgs[:min(len(msgs), limit)], nil
}

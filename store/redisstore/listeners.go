package redisstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
	"github.com/redis/go-redis/v9"
)

// RegisterListener counts the listener among its tenant's pending ones (the
// cap), writes its record, and adds it to its index sets and its tenant's
// listing, pipelined: 1 round trip (2 on a Cluster, whose nodes would take
// their parts of one pipeline at once). They live in different slots, and
// another client's commands may run between them; the record is written
// before the indexes, so an index member without a record is one whose
// listener is gone, which the first ingest that meets it removes. (The
// other way round, an ingest between the index and the record took the
// listener for gone and unindexed it for good.) An ingest that runs
// before the indexes are written does not see the listener: it came
// before the registration did. A listener refused for the cap is deleted
// again at once (1 more round trip). With Filter.AfterMessageID, looking for a reply that came first
// costs 2 or 3 more (matchEarlier).
func (s *Store) RegisterListener(ctx context.Context, nl store.NewListener) (store.Listener, error) {
	if _, err := nl.Filter.Compile(); err != nil {
		return store.Listener{}, err
	}
	fjson := encodeFilter(&nl.Filter)
	now := s.o.Clock.Now()
	var deadline int64
	life := nl.ResumeWindow
	if nl.Timeout > 0 {
		deadline = now.Add(nl.Timeout).UnixMilli()
		life = nl.Timeout
	}
	buckets := s.bucketKeys(nl.Tenant, &nl.Filter)
	member := indexMember(nl.ID, fjson)
	key := s.listenerKey(nl.ID)
	keep := ms(life + s.o.OutcomeRetention)
	args := []any{nl.Tenant, fjson, now.UnixMilli(), deadline, now.Add(nl.ResumeWindow).UnixMilli(), ms(s.o.OutcomeRetention)}
	listing, expiry := s.listingKeys(nl.Tenant)

	pipe := s.c.Pipeline()
	counted := s.inPipe(ctx, pipe, pendingAddScript, []string{s.pendingKey(nl.Tenant)},
		now.UnixMilli(), nl.ID, now.Add(life).UnixMilli(), nl.MaxPending, keep)
	added := s.inPipe(ctx, pipe, listenerAddScript, []string{key}, args...)
	var indexed []func() (string, []string, error)
	index := func(ctx context.Context, pipe redis.Pipeliner) {
		for _, b := range buckets {
			indexed = append(indexed, s.inPipe(ctx, pipe, indexAddScript, []string{b}, member, keep))
		}
		indexed = append(indexed, s.inPipe(ctx, pipe, listingAddScript, []string{listing}, expiry, now.UnixMilli(), nl.ID,
			now.Add(life+s.o.OutcomeRetention).UnixMilli(), keep))
	}
	if s.single() {
		index(ctx, pipe) // one server runs a pipeline in order
	}
	_, _ = pipe.Exec(ctx)
	// Read (a script Redis lost from its cache runs again as it is read)
	// in the order they must be written.
	full, _, err := counted()
	if err != nil {
		return store.Listener{}, err
	}
	code, out, err := added()
	if err != nil {
		return store.Listener{}, err
	}
	// drop takes back what was written of a listener that is not to be,
	// whatever becomes of the caller.
	drop := func(why string, uncount bool) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
		defer cancel()
		undo := s.c.Pipeline()
		for _, b := range buckets {
			undo.SRem(ctx, b, member)
		}
		undo.ZRem(ctx, listing, nl.ID)
		undo.ZRem(ctx, expiry, nl.ID)
		undo.Del(ctx, key)
		if uncount {
			undo.ZRem(ctx, s.pendingKey(nl.Tenant), nl.ID)
		}
		if _, err := undo.Exec(ctx); err != nil {
			s.o.Logger.Warn("cannot delete a listener "+why, "err", err)
		}
	}
	if code != "OK" {
		return store.Listener{}, fmt.Errorf("redisstore: listener %q already registered", nl.ID)
	}
	if !s.single() && full != "FULL" {
		// A Cluster sends each node its part of a pipeline at once: the
		// indexes go in a round trip of their own, after the record,
		// whatever becomes of the caller: a record never indexed could
		// never match.
		ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
		defer cancel()
		pipe = s.c.Pipeline()
		index(ictx, pipe)
		_, _ = pipe.Exec(ictx)
	}
	for _, done := range indexed {
		if _, _, err := done(); err != nil {
			drop("whose indexing failed", full != "FULL")
			return store.Listener{}, err
		}
	}
	if full == "FULL" {
		drop("refused for the cap", false)
		return store.Listener{}, store.ErrTooManyListeners
	}
	l, err := decodeListener(nl.ID, out[0])
	if err != nil || nl.Filter.AfterMessageID == "" {
		return l, err
	}
	return s.matchEarlier(ctx, l)
}

// matchEarlier decides l with the oldest inbound message already stored
// that it would have matched (Filter.AfterMessageID), by resolve.lua's
// compare-and-set: the sessions in scope (1 round trip for a user filter),
// their newest messages (1), and the compare-and-set (1) when one
// matches. It reads after the listener is indexed, and an Ingest appends
// before it reads the indexes, so of a registration and an Ingest that
// race, one sees the other.
func (s *Store) matchEarlier(ctx context.Context, l store.Listener) (store.Listener, error) {
	from, err := ids.MessageMs(l.Filter.AfterMessageID)
	if err != nil {
		return l, nil
	}
	sids := []string{l.Filter.SessionID}
	if l.Filter.SessionID == "" {
		// The newest sessions of each user, listScanBudget in all.
		each := int64(max(1, listScanBudget/len(l.Filter.Users)))
		pipe := s.c.Pipeline()
		cmds := make([]*redis.StringSliceCmd, len(l.Filter.Users))
		for i, u := range l.Filter.Users {
			cmds[i] = pipe.ZRevRange(ctx, s.slot(userTag(l.Tenant, u))+"su:"+l.Tenant+":"+u, 0, each-1)
		}
		_, _ = pipe.Exec(ctx)
		if sids, err = indexVals(cmds); err != nil {
			return l, err
		}
	}
	pipe := s.c.Pipeline()
	reads := make([]func() (string, []string, error), len(sids))
	for i, sid := range sids {
		slotp := s.sessionSlot(sid)
		reads[i] = s.inPipe(ctx, pipe, recentScript, []string{slotp + "s:" + sid}, l.Tenant, slotp+"h:"+sid, store.AfterScan, from)
	}
	_, _ = pipe.Exec(ctx)
	m, err := l.Filter.Compile()
	if err != nil {
		return l, err
	}
	var best *store.Message
	var bestRaw string
	mismatch := false
	for _, read := range reads {
		code, raws, err := read()
		if err != nil {
			return l, err
		}
		if code != "OK" {
			continue
		}
		// Newest first: the last match found is the session's oldest.
		for _, raw := range raws {
			msg, err := decodeMessage(raw)
			if err != nil || msg.CreatedAt.UnixMilli() < from {
				break
			}
			if msg.Direction != store.Inbound || !m.Scope(&msg) {
				continue
			}
			if !m.Text(msg.Text) {
				mismatch = true
				continue
			}
			if best == nil || !best.CreatedAt.Before(msg.CreatedAt) {
				best, bestRaw = &msg, raw
			}
		}
	}
	keys := []string{s.listenerKey(l.ID)}
	switch {
	case best != nil:
		err = runScript(ctx, s.c, resolveScript, keys, best.CreatedAt.UnixMilli(), "m", bestRaw,
			ms(s.o.OutcomeRetention), s.listenerChannel(l.Tenant, l.ID), best.ID, 0).Err()
	case mismatch:
		err = runScript(ctx, s.c, resolveScript, keys, s.now(), "x", "",
			ms(s.o.OutcomeRetention), s.listenerChannel(l.Tenant, l.ID), "", 0).Err()
	default:
		return l, nil
	}
	if err != nil {
		return l, unavailable(err)
	}
	if best == nil {
		l.SawMismatch = true
		return l, nil
	}
	s.unindex(&l)
	return s.GetListener(ctx, l.Tenant, l.ID)
}

// indexMember is a listener's member in its index set: "<id> <filter
// JSON>", so an ingest can judge a candidate without reading its record
// (match splits it at the first space; ids hold none).
func indexMember(id, filterJSON string) string { return id + " " + filterJSON }

// wireFilter is a filter as stored: short keys, empty fields left out, so
// a listener record stays in Redis's compact (listpack) hash encoding.
// One user is "u", as before approver sets; a set of them "U".
type wireFilter struct {
	Platform  string   `json:"p,omitempty"`
	Channel   string   `json:"c,omitempty"`
	User      string   `json:"u,omitempty"`
	Users     []string `json:"U,omitempty"`
	SessionID string   `json:"s,omitempty"`
	Keyword   string   `json:"k,omitempty"`
	Match     int      `json:"m,omitempty"`
	After     string   `json:"a,omitempty"`
}

func encodeFilter(f *store.Filter) string {
	w := wireFilter{Platform: f.Platform, Channel: f.Channel, SessionID: f.SessionID, Keyword: f.Keyword, Match: int(f.Match),
		After: f.AfterMessageID}
	if len(f.Users) == 1 {
		w.User = f.Users[0]
	} else {
		w.Users = f.Users
	}
	b, _ := json.Marshal(w)
	return string(b)
}

func decodeFilter(raw string) (store.Filter, error) {
	var w wireFilter
	if err := json.Unmarshal([]byte(raw), &w); err != nil {
		return store.Filter{}, fmt.Errorf("redisstore: listener filter: %w", err)
	}
	f := store.Filter{Platform: w.Platform, Channel: w.Channel, Users: w.Users, SessionID: w.SessionID,
		Keyword: w.Keyword, Match: store.MatchMode(w.Match), AfterMessageID: w.After}
	if w.User != "" {
		f.Users = []string{w.User}
	}
	return f, nil
}

// GetListener is one script, which also decides a timeout that is due: 1
// round trip (plus a background index clean-up when the listener was
// decided or dropped).
func (s *Store) GetListener(ctx context.Context, tenant, id string) (store.Listener, error) {
	code, out, err := s.reply(ctx, listenerGetScript, []string{s.listenerKey(id)},
		s.now(), tenant, ms(s.o.OutcomeRetention), s.listenerChannel(tenant, id))
	if err != nil {
		return store.Listener{}, err
	}
	switch code {
	case "NOTFOUND":
		return store.Listener{}, store.ErrListenerNotFound
	case "OK":
		return decodeListener(id, out[0])
	case "DECIDED", "GONE":
		l, err := decodeListener(id, out[0])
		if err != nil {
			return l, err
		}
		s.unindex(&l)
		if code == "GONE" {
			return store.Listener{}, store.ErrListenerNotFound
		}
		return l, nil
	}
	return store.Listener{}, codeErr(code)
}

// unindex removes a decided or dropped listener from its index sets and
// its tenant's pending set, in the background: stale members are
// harmless, only wasteful (and a pending set's drop by their scores).
func (s *Store) unindex(l *store.Listener) {
	s.forgetPending(l.Tenant, []unindexed{s.placeOf(l)})
}

// unindexed is a decided or dropped listener's place in the indexes.
type unindexed struct {
	buckets []string
	member  string
	id      string
}

func (s *Store) placeOf(l *store.Listener) unindexed {
	return unindexed{s.bucketKeys(l.Tenant, &l.Filter), indexMember(l.ID, encodeFilter(&l.Filter)), l.ID}
}

func (s *Store) forgetPending(tenant string, ls []unindexed) {
	s.background(func(ctx context.Context) {
		p := s.c.Pipeline()
		for _, l := range ls {
			for _, b := range l.buckets {
				p.SRem(ctx, b, l.member)
			}
			p.ZRem(ctx, s.pendingKey(tenant), l.id)
		}
		if _, err := p.Exec(ctx); err != nil {
			s.o.Logger.Debug("cannot remove listeners from their indexes", "err", err)
		}
	})
}

// TouchListener is one script, plus one to make the listener's index set
// outlive the extended window and move its place in the tenant's pending
// set when it was extended: 1 or 2 round trips (touches come every few
// hours per attached stream).
func (s *Store) TouchListener(ctx context.Context, tenant, id string, until time.Time) error {
	now := s.o.Clock.Now()
	code, out, err := s.reply(ctx, listenerTouchScript, []string{s.listenerKey(id)},
		now.UnixMilli(), tenant, until.UnixMilli(), ms(s.o.OutcomeRetention))
	if err != nil {
		return err
	}
	switch code {
	case "NOTFOUND":
		return store.ErrListenerNotFound
	case "EXTENDED":
		f, err := decodeFilter(out[0])
		if err != nil {
			return err
		}
		keep := until.Sub(now) + s.o.OutcomeRetention
		pipe := s.c.Pipeline()
		var indexed []func() (string, []string, error)
		for _, b := range s.bucketKeys(tenant, &f) {
			indexed = append(indexed, s.inPipe(ctx, pipe, indexAddScript, []string{b}, indexMember(id, out[0]), ms(keep)))
		}
		pipe.ZAddXX(ctx, s.pendingKey(tenant), redis.Z{Score: float64(until.UnixMilli()), Member: id})
		_, expiry := s.listingKeys(tenant)
		pipe.ZAddXX(ctx, expiry, redis.Z{Score: float64(now.Add(keep).UnixMilli()), Member: id})
		_, _ = pipe.Exec(ctx)
		for _, done := range indexed {
			if _, _, err := done(); err != nil {
				return err
			}
		}
	}
	return nil
}

// CancelListener is one script (listener_cancel.lua), and the listener's
// index clean-up in the background: 1 round trip.
func (s *Store) CancelListener(ctx context.Context, tenant, id string) (store.Listener, error) {
	code, out, err := s.reply(ctx, listenerCancelScript, []string{s.listenerKey(id)},
		s.now(), tenant, ms(s.o.OutcomeRetention), s.listenerChannel(tenant, id))
	if err != nil {
		return store.Listener{}, err
	}
	if code == "NOTFOUND" {
		return store.Listener{}, store.ErrListenerNotFound
	}
	if len(out) != 1 {
		return store.Listener{}, codeErr(code)
	}
	l, err := decodeListener(id, out[0])
	if err != nil {
		return l, err
	}
	switch code {
	case "GONE":
		s.unindex(&l)
		return store.Listener{}, store.ErrListenerNotFound
	case "DECIDED":
		s.unindex(&l)
	}
	return l, nil
}

// ListListeners reads the tenant's listing from the cursor (ListScan ids
// at most), then each listener as GetListener does, pipelined: 2 round
// trips. Listings whose listeners are gone are dropped in the background.
func (s *Store) ListListeners(ctx context.Context, tenant string, f store.ListenerFilter, after string, limit int) ([]store.Listener, string, error) {
	listing, expiry := s.listingKeys(tenant)
	from := "-"
	if after != "" {
		from = "(" + after
	}
	lids, err := s.c.ZRangeByLex(ctx, listing, &redis.ZRangeBy{Min: from, Max: "+", Count: store.ListScan}).Result()
	if err != nil {
		return nil, "", unavailable(err)
	}
	pipe := s.c.Pipeline()
	reads := make([]func() (string, []string, error), len(lids))
	for i, lid := range lids {
		reads[i] = s.inPipe(ctx, pipe, listenerGetScript, []string{s.listenerKey(lid)},
			s.now(), tenant, ms(s.o.OutcomeRetention), s.listenerChannel(tenant, lid))
	}
	_, _ = pipe.Exec(ctx)
	var out []store.Listener
	var gone []string
	for i, read := range reads {
		if len(out) == limit {
			return out, lids[i-1], nil
		}
		code, raw, err := read()
		if err != nil {
			return nil, "", err
		}
		if code == "NOTFOUND" || code == "GONE" {
			gone = append(gone, lids[i])
			continue
		}
		l, err := decodeListener(lids[i], raw[0])
		if err != nil {
			return nil, "", err
		}
		if code == "DECIDED" {
			s.unindex(&l)
		}
		if f.Selects(&l) {
			out = append(out, l)
		}
	}
	if len(gone) > 0 {
		s.background(func(ctx context.Context) {
			p := s.c.Pipeline()
			p.ZRem(ctx, listing, gone)
			p.ZRem(ctx, expiry, gone)
			_, _ = p.Exec(ctx)
		})
	}
	if len(lids) == store.ListScan {
		return out, lids[len(lids)-1], nil
	}
	return out, "", nil
}

func decodeListener(id, raw string) (store.Listener, error) {
	var m map[string]string
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return store.Listener{}, fmt.Errorf("redisstore: listener record: %w", err)
	}
	l := store.Listener{
		ID:          id,
		Tenant:      m["tn"],
		CreatedAt:   fromMs(m["ca"]),
		Deadline:    fromMs(m["dl"]),
		IdleUntil:   fromMs(m["iu"]),
		SawMismatch: m["mm"] == "1",
		DecidedAt:   fromMs(m["da"]),
	}
	var err error
	if l.Filter, err = decodeFilter(m["flt"]); err != nil {
		return store.Listener{}, err
	}
	oc, _ := strconv.Atoi(m["oc"])
	l.Outcome = store.OutcomeKind(oc)
	if raw := m["msg"]; raw != "" {
		msg, err := decodeMessage(raw)
		if err != nil {
			return store.Listener{}, err
		}
		l.Message = &msg
	}
	return l, nil
}

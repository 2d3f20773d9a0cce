package redisstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/chatrelay/chatrelay/store"
	"github.com/redis/go-redis/v9"
)

// RegisterListener counts the listener among its tenant's pending ones (the
// cap), adds it to its index set and writes its record, pipelined: 1 round
// trip. The three live in different slots; the index is written before the
// record, so a listener is never in its record without being findable,
// and an index member whose record never came is skipped (and removed) by
// the first ingest that meets it. A listener refused for the cap is
// deleted again at once (1 more round trip).
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
	bucket := s.bucketKey(nl.Tenant, &nl.Filter)
	member := indexMember(nl.ID, fjson)
	key := s.listenerKey(nl.ID)
	args := []any{nl.Tenant, fjson, now.UnixMilli(), deadline, now.Add(nl.ResumeWindow).UnixMilli(), ms(s.o.OutcomeRetention)}
	idxArgs := []any{member, ms(life + s.o.OutcomeRetention)}

	pipe := s.c.Pipeline()
	counted := s.inPipe(ctx, pipe, pendingAddScript, []string{s.pendingKey(nl.Tenant)},
		now.UnixMilli(), nl.ID, now.Add(life).UnixMilli(), nl.MaxPending, ms(life+s.o.OutcomeRetention))
	indexed := s.inPipe(ctx, pipe, indexAddScript, []string{bucket}, idxArgs...)
	added := s.inPipe(ctx, pipe, listenerAddScript, []string{key}, args...)
	_, _ = pipe.Exec(ctx)
	full, _, err := counted()
	if err != nil {
		return store.Listener{}, err
	}
	if _, _, err := indexed(); err != nil {
		return store.Listener{}, err
	}
	code, out, err := added()
	if err != nil {
		return store.Listener{}, err
	}
	if full == "FULL" {
		undo := s.c.Pipeline()
		undo.SRem(ctx, bucket, member)
		undo.Del(ctx, key)
		if _, err := undo.Exec(ctx); err != nil {
			s.o.Logger.Warn("cannot delete a listener refused for the cap", "err", err)
		}
		return store.Listener{}, store.ErrTooManyListeners
	}
	if code != "OK" {
		return store.Listener{}, fmt.Errorf("redisstore: listener %q already registered", nl.ID)
	}
	return decodeListener(nl.ID, out[0])
}

// indexMember is a listener's member in its index set: "<id> <filter
// JSON>", so an ingest can judge a candidate without reading its record
// (match splits it at the first space; ids hold none).
func indexMember(id, filterJSON string) string { return id + " " + filterJSON }

// wireFilter is a filter as stored: short keys, empty fields left out, so
// a listener record stays in Redis's compact (listpack) hash encoding.
type wireFilter struct {
	Platform  string `json:"p,omitempty"`
	Channel   string `json:"c,omitempty"`
	User      string `json:"u,omitempty"`
	SessionID string `json:"s,omitempty"`
	Keyword   string `json:"k,omitempty"`
	Match     int    `json:"m,omitempty"`
}

func encodeFilter(f *store.Filter) string {
	b, _ := json.Marshal(wireFilter{f.Platform, f.Channel, f.User, f.SessionID, f.Keyword, int(f.Match)})
	return string(b)
}

func decodeFilter(raw string) (store.Filter, error) {
	var w wireFilter
	if err := json.Unmarshal([]byte(raw), &w); err != nil {
		return store.Filter{}, fmt.Errorf("redisstore: listener filter: %w", err)
	}
	return store.Filter{Platform: w.Platform, Channel: w.Channel, User: w.User, SessionID: w.SessionID,
		Keyword: w.Keyword, Match: store.MatchMode(w.Match)}, nil
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

// unindex removes a decided or dropped listener from its index set and its
// tenant's pending set, in the background: stale members are harmless,
// only wasteful (and a pending set's drop by their scores).
func (s *Store) unindex(l *store.Listener) {
	s.forgetPending(l.Tenant, []unindexed{{s.bucketKey(l.Tenant, &l.Filter), indexMember(l.ID, encodeFilter(&l.Filter)), l.ID}})
}

// unindexed is a decided or dropped listener's place in the indexes.
type unindexed struct{ bucket, member, id string }

func (s *Store) forgetPending(tenant string, ls []unindexed) {
	s.background(func(ctx context.Context) {
		p := s.c.Pipeline()
		for _, l := range ls {
			p.SRem(ctx, l.bucket, l.member)
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
		pipe := s.c.Pipeline()
		indexed := s.inPipe(ctx, pipe, indexAddScript, []string{s.bucketKey(tenant, &f)},
			indexMember(id, out[0]), ms(until.Sub(now)+s.o.OutcomeRetention))
		pipe.ZAddXX(ctx, s.pendingKey(tenant), redis.Z{Score: float64(until.UnixMilli()), Member: id})
		_, _ = pipe.Exec(ctx)
		_, _, err = indexed()
		return err
	}
	return nil
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

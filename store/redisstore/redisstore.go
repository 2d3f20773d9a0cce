// Package redisstore is the store for N replicas: every record lives in
// Redis (standalone, Sentinel or Cluster, through go-redis's
// UniversalClient) and replicas learn of each other's changes through one
// shared pub/sub connection each. It passes the same store/storetest suite
// as store/memory.
//
// # Key layout
//
// Keys are "<prefix>:{<tag>}:<kind>:…". The tag is 8 hex digits; everything
// one atomic step touches shares it, so it lands in one Cluster hash slot:
//
//	{user tag}   = ids.Tag(tenant, "u", user) — a user's sessions, their
//	               history, active pointers, contacts, idempotency keys and
//	               the session and user listener indexes. Session ids embed
//	               this tag (ids.TaggedSession), so a session id alone finds
//	               its slot.
//	s:<sid>                         hash   session record
//	h:<sid>                         stream history, capped at HistoryLimit, entry id "<seq>-0"
//	a:<tenant>:<pf>:<ch>:<user>     string the tuple's active session id
//	c:<tenant>:<pf>:<user>          hash   contact
//	i:<tenant>:<op>:<target>:<key>  string idempotency record (JSON: fingerprint, expiry, result)
//	x:s:<tenant>:<sid>              set    listeners waiting on a session
//	x:u:<tenant>:<user>             set    listeners waiting on a user (each of an approver set's users)
//	{ids.Tag(tenant, "c", ch)} x:c:<tenant>:<ch>  set listeners waiting on a channel
//	{ids.Tag(tenant, "*")}     x:*:<tenant>       set unfiltered listeners
//	{ids.Tag(lid)}             l:<lid>            hash listener: filter, deadline, state, outcome
//	{ids.Tag(tenant, "pl")}    pl:<tenant>        zset pending listeners, scored by when they stop being (the cap)
//	{ids.Tag(tenant, "ll")}    ll:<tenant>, lx:<tenant> zset the tenant's listeners in id order, and by when their records expire (ListListeners)
//	rate:<prefix>:<key>                           string a rate budget (redis_rate's, keyed as it keys them)
//	su:<tenant>:<user>              zset   the user's sessions by creation (ListSessions by user)
//	dv:<sid>                        hash   delivery id → "<message id> <seq>": the session's deliveries
//	ms:<sid>                        hash   message id → status JSON: statuses changed after the append
//	bq:<sid>                        list   "<message id> <seq> <chatbot id>": messages queued for the running chatbot
//	{ids.Tag(tenant, "sa")}    sa:<tenant>        zset the tenant's sessions by last activity (ListSessions)
//	{ids.Tag("outbox")}        ob, oba            zset, hash the deployment's outbox and its attempts
//	{ids.Tag(tenant, pf, id)}  pm:<tenant>:<pf>:<id> string a message's platform id: its message, or receipts that came first
//
// An index member is "<lid> <filter JSON>" (short keys, empty fields left
// out), so an ingest evaluates candidates without reading their records;
// the record decides (a Lua compare-and-set), and stale members are removed
// lazily.
//
// Pub/sub channels, in their record's slot: "<prefix>:{<tag>}:ev:s:<tenant>:<sid>"
// carries each appended message (as JSON), "s" and a status change's JSON,
// and "end"; "<prefix>:{<tag>}:ev:l:<tenant>:<lid>" carries "r" when a
// listener is decided. On a Cluster they are shard channels (SPUBLISH,
// SSUBSCRIBE), elsewhere plain ones.
//
// # Memory
//
// Measured with MEMORY USAGE on redis 7.0.15 (TestKeyMemory logs the
// figures): a session costs about 600 B (record, active pointer, contact);
// each message in history about 280 B plus its text (381 B with 100 bytes
// of text); each waiting listener about 770 B (record, index member, and
// its entries in the pending set and the listing).
// Records stay in Redis's compact listpack encodings, which is why filters
// are stored with short keys.
//
// # Round trips
//
// Each method's comment states how many round trips it costs. Timestamps
// are kept in milliseconds.
package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// Options configures a Store: the settings every backend honours, plus the
// key prefix and logger. EndedRetention must be at least 2 h here: it is
// also the margin of the memory-reclaiming Redis TTLs, which appends
// refresh only hourly. Replicas' clocks should agree to well within a
// second (NTP), since each decides expiry by its own.
type Options struct {
	store.Options
	// Prefix starts every key and channel; default "chatrelay". Replicas
	// that serve one deployment share it.
	Prefix string
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Store is the Redis backend. It does not own the client: whoever made the
// client closes it, after closing the Store.
type Store struct {
	c       redis.UniversalClient
	o       Options
	hub     *hub
	batch   *batcher
	limiter *redis_rate.Limiter
	// postShared is postScript's leading args, the same for every post and
	// boxed once, not per post.
	postShared []any
	// bg tracks background clean-ups, so Close can wait for them before
	// the caller closes the client.
	bg sync.WaitGroup
}

var _ store.Store = (*Store)(nil)

// New returns a Store on c and starts its pub/sub connection. It adds a
// hook to c, through which the pub/sub side follows failovers (see hub's
// DialHook and ProcessHook): give each Store a client of its own.
func New(c redis.UniversalClient, o Options) (*Store, error) {
	if c == nil {
		return nil, errors.New("redisstore: client is required")
	}
	if err := o.Options.SetDefaults(); err != nil {
		return nil, fmt.Errorf("redisstore: %w", err)
	}
	if o.EndedRetention < 2*time.Hour {
		return nil, errors.New("redisstore: EndedRetention must be at least 2h")
	}
	if o.Prefix == "" {
		o.Prefix = "chatrelay"
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return nil, errors.New("redisstore: prefix must not contain { or }")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Store{c: c, o: o}
	s.hub = newHub(c, o.Logger, defaultIdleAfter, defaultSweepEvery)
	s.batch = newBatcher(c)
	s.limiter = redis_rate.NewLimiter(c)
	s.postShared = []any{ms(o.SessionTTL), ms(o.EndedRetention), o.HistoryLimit, s.sessionEventPrefix(), ms(o.IdempotencyTTL)}
	return s, nil
}

// Close stops the pub/sub connection and waits for background clean-ups.
// Open subscriptions stop receiving.
func (s *Store) Close() error {
	s.hub.close()

	s.bg.Wait()
	return nil
}

// background runs a best-effort clean-up off the request path, bounded in
// time.
func (s *Store) background(fn func(ctx context.Context)) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		fn(ctx)
	}()
}

// Stats reports the pub/sub connection's reconnects and the batcher's
// queue.
func (s *Store) Stats() store.Stats {
	return store.Stats{PubSubReconnects: s.hub.reconnects.Load(), QueuedCalls: s.batch.queueLen()}
}

// Ping reports whether Redis answers. 1 round trip.
func (s *Store) Ping(ctx context.Context) error { return unavailable(s.c.Ping(ctx).Err()) }

// ---- keys ----

func (s *Store) slot(tag string) string { return s.o.Prefix + ":{" + tag + "}:" }

func userTag(tenant, user string) string { return ids.Tag(tenant, "u", user) }

// sessionSlot is the slot prefix of a session's keys, read from its id. An
// id that carries no tag is not one of ours; any slot will answer NOTFOUND.
func (s *Store) sessionSlot(sid string) string {
	if tag, ok := ids.TagOf(sid); ok {
		return s.slot(tag)
	}
	return s.slot(ids.Tag("untagged", sid))
}

// mergeGroup is the batcher group of a mergeable call on slotp's keys: on
// a single Redis server (or a Sentinel-managed primary) one script may
// touch any keys, so all such calls merge; on a Cluster or Ring only those
// in one slot.
func (s *Store) mergeGroup(slotp string) string {
	if _, single := s.c.(*redis.Client); single {
		return "*"
	}
	return slotp
}

func (s *Store) sessionKey(sid string) string { return s.sessionSlot(sid) + "s:" + sid }

func (s *Store) listenerKey(lid string) string { return s.slot(ids.Tag(lid)) + "l:" + lid }

// sessionChannel is where a session's events are published; the scripts
// build it from the session's slot prefix and sessionEventPrefix. Channels
// carry their record's hash tag: on a Cluster a script publishes (SPUBLISH)
// only to a channel of its own slot.
func (s *Store) sessionChannel(tenant, sid string) string {
	return s.sessionSlot(sid) + s.sessionEventPrefix() + tenant + ":" + sid
}

func (s *Store) listenerChannel(tenant, lid string) string {
	return s.slot(ids.Tag(lid)) + "ev:l:" + tenant + ":" + lid
}

func (s *Store) sessionEventPrefix() string { return "ev:s:" }

// bucketKey is the index set a listener with filter f lives in (the memory
// store's buckets, one Redis set each).
// bucketKeys are the index sets a listener is a member of: its session's,
// else each of its users', else its channel's, else the tenant's
// unfiltered set. An approver set of k users costs k members.
func (s *Store) bucketKeys(tenant string, f *store.Filter) []string {
	switch {
	case f.SessionID != "":
		return []string{s.sessionSlot(f.SessionID) + "x:s:" + tenant + ":" + f.SessionID}
	case len(f.Users) > 0:
		out := make([]string, len(f.Users))
		for i, u := range f.Users {
			out[i] = s.userBucket(tenant, u)
		}
		return out
	case f.Channel != "":
		return []string{s.channelBucket(tenant, f.Channel)}
	}
	return []string{s.anyBucket(tenant)}
}

func (s *Store) userBucket(tenant, user string) string {
	return s.slot(userTag(tenant, user)) + "x:u:" + tenant + ":" + user
}

// listingKeys are the tenant's listing of listeners (ids scored 0, so that
// they page in id order) and its expiry set (ids scored by when their
// records expire), for ListListeners.
func (s *Store) listingKeys(tenant string) (listing, expiry string) {
	slotp := s.slot(ids.Tag(tenant, "ll"))
	return slotp + "ll:" + tenant, slotp + "lx:" + tenant
}

func (s *Store) channelBucket(tenant, ch string) string {
	return s.slot(ids.Tag(tenant, "c", ch)) + "x:c:" + tenant + ":" + ch
}

func (s *Store) anyBucket(tenant string) string {
	return s.slot(ids.Tag(tenant, "*")) + "x:*:" + tenant
}

// pendingKey is the tenant's pending listeners, for the cap on them.
func (s *Store) pendingKey(tenant string) string {
	return s.slot(ids.Tag(tenant, "pl")) + "pl:" + tenant
}

// activityKey is the tenant's sessions by last activity, for
// ListSessions.
func (s *Store) activityKey(tenant string) string {
	return s.slot(ids.Tag(tenant, "sa")) + "sa:" + tenant
}

// scriptActivityKey is the activity key a script writes itself: on one
// server, where a script may touch any key. On Cluster it is in another
// slot, and trackActivity writes it after the script.
func (s *Store) scriptActivityKey(tenant string) string {
	if s.single() {
		return s.activityKey(tenant)
	}
	return ""
}

// scriptOutboxKeys are the outbox and its attempts, for a script that
// makes a delivery due itself: on one server; on a Cluster (another slot)
// they are "" and the caller does it.
func (s *Store) scriptOutboxKeys() []any {
	if s.single() {
		return []any{s.outboxKey(), s.attemptsKey()}
	}
	return []any{"", ""}
}

// trackActivity moves a session up the tenant's activity index when a
// script could not (Cluster): 1 round trip there, none on one server.
func (s *Store) trackActivity(ctx context.Context, tenant, sid string, at time.Time) error {
	if s.single() {
		return nil
	}
	return unavailable(s.c.ZAdd(ctx, s.activityKey(tenant), redis.Z{Score: float64(at.UnixMilli()), Member: sid}).Err())
}

func (s *Store) idemKey(slotp, tenant, op, target string, idem store.Idempotency) string {
	if idem.Key == "" {
		return ""
	}
	return slotp + "i:" + tenant + ":" + op + ":" + target + ":" + idem.Key
}

// ---- helpers ----

func (s *Store) now() int64 { return s.o.Clock.Now().UnixMilli() }

func ms(d time.Duration) int64 { return d.Milliseconds() }

func fromMs(v string) time.Time {
	n, _ := strconv.ParseInt(v, 10, 64)
	if n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

// unavailable wraps a Redis failure as store.ErrUnavailable, leaving the
// caller's own cancellation alone.
func unavailable(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %v", store.ErrUnavailable, err)
}

// piped queues sc on pipe by its SHA. The function it returns, called
// after the pipeline ran, gives the script's answer, running the script
// through c if Redis had lost its script cache (a restart).
func piped(ctx context.Context, c redis.UniversalClient, pipe redis.Pipeliner, sc *redis.Script, keys []string, args ...any) func() *redis.Cmd {
	cmd := scriptCall(ctx, forClient(c, sc), false, keys, args)
	_ = pipe.Process(ctx, cmd)
	return func() *redis.Cmd {
		if isNoScript(cmd.Err()) {
			return runScript(ctx, c, sc, keys, args...)
		}
		return cmd.Cmd
	}
}

// inPipe is piped for a script that answers {code, payload…}, split.
func (s *Store) inPipe(ctx context.Context, pipe redis.Pipeliner, sc *redis.Script, keys []string, args ...any) func() (string, []string, error) {
	answer := piped(ctx, s.c, pipe, sc, keys, args...)
	return func() (string, []string, error) {
		v, err := answer().Slice()
		if err != nil {
			return "", nil, unavailable(err)
		}
		return splitReply(v)
	}
}

// reply runs a script and splits its {code, payload…} answer.
func (s *Store) reply(ctx context.Context, sc *redis.Script, keys []string, args ...any) (string, []string, error) {
	v, err := s.batch.run(ctx, sc, keys, args...)
	if err != nil {
		return "", nil, unavailable(err)
	}
	a, _ := v.([]any)
	return splitReply(a)
}

func splitReply(v []any) (string, []string, error) {
	out := make([]string, len(v))
	for i, x := range v {
		str, ok := x.(string)
		if !ok {
			return "", nil, fmt.Errorf("redisstore: unexpected script reply %#v", v)
		}
		out[i] = str
	}
	if len(out) == 0 {
		return "", nil, errors.New("redisstore: empty script reply")
	}
	return out[0], out[1:], nil
}

// codeErr maps a script's refusal to the store's error.
func codeErr(code string) error {
	switch code {
	case "NOTFOUND":
		return store.ErrSessionNotFound
	case "CLOSED":
		return store.ErrSessionClosed
	case "EXPIRED":
		return store.ErrSessionExpired
	case "EXISTS":
		return store.ErrSessionExists
	case "MISMATCH":
		return store.ErrSessionMismatch
	case "REUSED":
		return store.ErrIdempotencyKeyReused
	case "TOOMUCH":
		return store.ErrTooMuchMetadata
	}
	return fmt.Errorf("redisstore: unexpected script answer %q", code)
}

// decodeSession reads a session record (as the scripts encode it) at now.
func decodeSession(raw string, now time.Time) (store.Session, error) {
	m, err := decodeRecord("session", raw)
	if err != nil {
		return store.Session{}, err
	}
	return sessionFromMap(m, now)
}

// decodeRecord reads a hash record as a script encodes it (a JSON object
// of strings); "" and "null", for no record, read as nil.
func decodeRecord(kind, raw string) (map[string]string, error) {
	if raw == "" || raw == "null" {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return nil, fmt.Errorf("redisstore: %s record: %w", kind, err)
	}
	return m, nil
}

func sessionFromMap(m map[string]string, now time.Time) (store.Session, error) {
	st, _ := strconv.Atoi(m["st"])
	seq, _ := strconv.ParseUint(m["seq"], 10, 64)
	ses := store.Session{
		ID:             m["id"],
		Tenant:         m["tn"],
		Platform:       m["pf"],
		Channel:        m["ch"],
		User:           m["us"],
		State:          store.SessionState(st),
		ChatbotID:      m["bot"],
		CreatedAt:      fromMs(m["ca"]),
		UpdatedAt:      fromMs(m["ua"]),
		LastActivityAt: fromMs(m["la"]),
		ExpiresAt:      fromMs(m["ex"]),
		LastSeq:        seq,
		LastMessageID:  m["lid"],
		LastInboundAt:  fromMs(m["li"]),
		Thread:         m["th"],
	}
	if md := m["md"]; md != "" && md != "{}" {
		if err := json.Unmarshal([]byte(md), &ses.Metadata); err != nil {
			return store.Session{}, fmt.Errorf("redisstore: session metadata: %w", err)
		}
	}
	if ses.State.Active() && !now.Before(ses.ExpiresAt) {
		ses.State, ses.UpdatedAt = store.StateExpired, ses.ExpiresAt
	}
	return ses, nil
}

func decodeContact(raw, tenant, platform, user string) (store.Contact, error) {
	m, err := decodeRecord("contact", raw)
	if err != nil {
		return store.Contact{}, err
	}
	return contactFromMap(m, tenant, platform, user)
}

// contactFromMap reads a contact record; nil is no contact yet.
func contactFromMap(m map[string]string, tenant, platform, user string) (store.Contact, error) {
	if m == nil {
		return store.Contact{}, nil
	}
	c := store.Contact{Tenant: tenant, Platform: platform, User: user, CreatedAt: fromMs(m["ca"]), UpdatedAt: fromMs(m["ua"])}
	if md := m["md"]; md != "" && md != "{}" {
		if err := json.Unmarshal([]byte(md), &c.Metadata); err != nil {
			return store.Contact{}, fmt.Errorf("redisstore: contact metadata: %w", err)
		}
	}
	return c, nil
}

// wireMessage is a message as stored in history and published: the fields
// a script assigns, then wireBody, which Go writes (messageSuffix).
type wireMessage struct {
	ID        string `json:"id"`
	Seq       uint64 `json:"seq"`
	SessionID string `json:"sid"`
	Platform  string `json:"pf"`
	Channel   string `json:"ch"`
	At        int64  `json:"at"`
	wireBody
}

type wireBody struct {
	Direction int               `json:"dir"`
	Text      string            `json:"text"`
	FromUser  string            `json:"from,omitempty"`
	Status    int               `json:"st"`
	Metadata  map[string]string `json:"md,omitempty"`
	Raw       json.RawMessage   `json:"raw,omitempty"`
	ErrCode   string            `json:"ec,omitempty"`
	ErrMsg    string            `json:"em,omitempty"`
	Template  *wireTemplate     `json:"tpl,omitempty"`
	Thread    string            `json:"th,omitempty"`
}

// wireTemplate is a store.Template in a stored message.
type wireTemplate struct {
	Name       string   `json:"n"`
	Language   string   `json:"l"`
	Parameters []string `json:"p,omitempty"`
}

func decodeMessage(raw string) (store.Message, error) {
	var w wireMessage
	if err := json.Unmarshal([]byte(raw), &w); err != nil {
		return store.Message{}, fmt.Errorf("redisstore: message: %w", err)
	}
	m := store.Message{
		ID: w.ID, Seq: w.Seq, SessionID: w.SessionID, Platform: w.Platform, Channel: w.Channel,
		CreatedAt: time.UnixMilli(w.At).UTC(), Direction: store.Direction(w.Direction), Text: w.Text,
		FromUser: w.FromUser, Status: store.MessageStatus(w.Status), Metadata: w.Metadata, Raw: w.Raw,
		Thread: w.Thread,
	}
	m.StatusAt = m.CreatedAt
	if w.ErrCode != "" || w.ErrMsg != "" {
		m.Error = &store.PlatformError{Code: w.ErrCode, Message: w.ErrMsg}
	}
	if t := w.Template; t != nil {
		m.Template = &store.Template{Name: t.Name, Language: t.Language, Parameters: t.Parameters}
	}
	return m, nil
}

func jsonMap(m map[string]string) string {
	if len(m) == 0 {
		return "{}"
	}
	b, _ := json.Marshal(m)
	return string(b)
}

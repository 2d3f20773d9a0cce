package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/store"
)

// Subscribe delivers a topic's events through this replica's pub/sub
// connection (its shard's, on a Cluster). It returns once Redis has
// confirmed the channel, so every change committed afterwards is delivered
// (or a resync is signalled). No round trip when the channel is already
// subscribed; else one on the pub/sub connection.
func (s *Store) Subscribe(ctx context.Context, t store.Topic) (*store.Subscription, error) {
	if t.SessionID != "" {
		return s.hub.subscribe(ctx, s.sessionChannel(t.Tenant, t.SessionID), t)
	}
	return s.hub.subscribe(ctx, s.listenerChannel(t.Tenant, t.ListenerID), t)
}

// hub multiplexes every subscription of a replica over its pub/sub
// connections ("links"), reference-counted per channel: one link on a
// single server or a Sentinel-managed master (SUBSCRIBE, which PUBLISH
// reaches), one per shard on a Cluster (SSUBSCRIBE, which SPUBLISH reaches:
// a message travels only within its session's shard; docs/design.md §7).
//
// Pub/sub is fire-and-forget. When a link breaks (its connection drops, its
// node fails over, a slot moves away and Redis unsubscribes the channel),
// the hub subscribes each channel again wherever it now belongs, and once
// Redis confirms it, tells the channel's subscribers to resync (re-read the
// store): anything published meanwhile is lost.
type hub struct {
	c redis.UniversalClient
	// cluster is c on a Cluster, where links are per shard; else nil.
	cluster *redis.ClusterClient
	log     *slog.Logger

	// cmdMu orders (S)SUBSCRIBE and (S)UNSUBSCRIBE commands with the map
	// updates they go with.
	cmdMu sync.Mutex
	mu    sync.Mutex
	chans map[string]*channel
	// links by shard: the address of its master on a Cluster; "" for the
	// one link elsewhere.
	links map[string]*link

	// idleAfter is how long a channel without subscribers stays
	// subscribed; sweepEvery how often that is checked, and how long a
	// quiet link waits before it pings. sweeps counts the checks, for
	// tests.
	idleAfter, sweepEvery time.Duration
	sweeps                atomic.Int64
	// reconnects counts links lost and whose channels are placed again.
	reconnects atomic.Uint64
	// lastLoss is when a link last broke, and lossPause the pause before
	// placing its channels again; guarded by mu.
	lastLoss  time.Time
	lossPause time.Duration
	// master is where the client's own connections go now, elsewhere
	// than on a Cluster: DialHook sends each new one's node here.
	master chan string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type channel struct {
	topic store.Topic
	subs  map[*store.Subscription]struct{}
	// confirmed is closed when Redis first confirms the subscription.
	confirmed chan struct{}
	// idleSince is when the last subscriber left; the channel stays
	// subscribed a while, so short-lived streams don't churn commands.
	idleSince time.Time
	// link is where the channel is subscribed; nil while it is being
	// placed again. resync is set until Redis confirms it there, and then
	// its subscribers re-read the store.
	link   *link
	resync bool
}

// A link is one pub/sub connection. Its goroutine reads it until it
// breaks, then places its channels again.
type link struct {
	shard string
	ps    *redis.PubSub
	// node is the address the link's connection reached, elsewhere than
	// on a Cluster (see DialHook). Guarded by hub.mu.
	node string
	// unsubscribing counts the SUNSUBSCRIBEs sent per channel whose
	// confirmations are due, to tell them from Redis unsubscribing a
	// channel whose slot moved away. Guarded by hub.mu.
	unsubscribing map[string]int
}

// Idle channels are unsubscribed after 30 s, checked every 10 s; Subscribe
// gives up if Redis has not confirmed within confirmTimeout.
const (
	defaultIdleAfter  = 30 * time.Second
	defaultSweepEvery = 10 * time.Second
	confirmTimeout    = 3 * time.Second
	// touchEvery is how often the hub pings the master (touchMaster).
	touchEvery = time.Second
)

func newHub(c redis.UniversalClient, log *slog.Logger, idleAfter, sweepEvery time.Duration) *hub {
	ctx, cancel := context.WithCancel(context.Background())
	cluster, _ := c.(*redis.ClusterClient)
	h := &hub{
		c:          c,
		cluster:    cluster,
		log:        log,
		chans:      make(map[string]*channel),
		links:      make(map[string]*link),
		idleAfter:  idleAfter,
		sweepEvery: sweepEvery,
		ctx:        ctx,
		cancel:     cancel,
		master:     make(chan string, 1),
	}
	c.AddHook(h)
	h.wg.Add(1)
	go h.sweeper()
	return h
}

// linkDial marks the context of a link's subscription, whose dial (if it
// makes one) is the link's connection.
type linkDial struct{}

// DialHook notes where connections go. A link's records its node. Any
// other is the client's own, and goes to the master: on a Sentinel-managed
// master, after a failover, that is another node than the links' (go-redis
// moves its pool, not pub/sub connections). A link left on the old master,
// now a replica, would miss what was published before that node followed
// the new one, with no break to tell; so the links move too.
func (h *hub) DialHook(next redis.DialHook) redis.DialHook {
	if h.sharded() {
		return next
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err != nil {
			return conn, err
		}
		node := conn.RemoteAddr().String()
		if l, ok := ctx.Value(linkDial{}).(*link); ok {
			h.mu.Lock()
			l.node = node
			h.mu.Unlock()
			return conn, nil
		}
		select {
		case h.master <- node:
		default: // the sweeper has one to check already
		}
		return conn, nil
	}
}

// ProcessHook, on a Cluster, has the client learn the layout afresh after
// a call failed for want of a node: go-redis does so on MOVED, but after a
// master died it would go on calling it until its periodic reload, seconds
// after the replica took over.
func (h *hub) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	if !h.sharded() {
		return next
	}
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.noteFailure(err)
		return err
	}
}

func (h *hub) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	if !h.sharded() {
		return next
	}
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.noteFailure(err)
		return err
	}
}

// noteFailure reloads the Cluster's layout (lazily, at most every 200 ms:
// go-redis's) after a failure that may mean a node is gone or the cluster
// is failing over, not after Redis's ordinary answers.
func (h *hub) noteFailure(err error) {
	if err == nil || err == redis.Nil || errors.Is(err, context.Canceled) {
		return
	}
	var re redis.Error
	if errors.As(err, &re) && !strings.HasPrefix(re.Error(), "CLUSTERDOWN") && !strings.HasPrefix(re.Error(), "TRYAGAIN") {
		return
	}
	h.cluster.ReloadState(h.ctx)
}

// followMaster closes the links on another node than the master's; each
// then subscribes its channels again, on the master.
func (h *hub) followMaster(node string) {
	h.cmdMu.Lock()
	h.mu.Lock()
	var stale []*link
	for _, l := range h.links {
		if l.node != "" && l.node != node {
			stale = append(stale, l)
		}
	}
	h.mu.Unlock()
	h.cmdMu.Unlock()
	for _, l := range stale {
		h.log.Warn("pubsub: the master moved; subscribing again there", "from", l.node, "to", node)
		_ = l.ps.Close() // its reader sees the link break
	}
}

func (h *hub) close() {
	h.cancel()
	h.cmdMu.Lock()
	for _, l := range h.links {
		_ = l.ps.Close()
	}
	h.cmdMu.Unlock()
	h.wg.Wait()
}

// sharded reports whether links are per shard (SSUBSCRIBE).
func (h *hub) sharded() bool { return h.cluster != nil }

func (h *hub) subscribe(ctx context.Context, name string, t store.Topic) (*store.Subscription, error) {
	var sub *store.Subscription
	sub = store.NewSubscription(func() { h.release(name, sub) })
	h.cmdMu.Lock()
	h.mu.Lock()
	ch := h.chans[name]
	fresh := ch == nil
	if fresh {
		ch = &channel{topic: t, subs: make(map[*store.Subscription]struct{}), confirmed: make(chan struct{})}
		h.chans[name] = ch
	}
	ch.subs[sub] = struct{}{}
	h.mu.Unlock()
	var err error
	if fresh {
		// Bounded: cmdMu is held, and every other subscription waits on it.
		pctx, cancel := context.WithTimeout(ctx, confirmTimeout)
		failed := h.place(pctx, []string{name}, "")
		cancel()
		if len(failed) > 0 {
			err = failed[name]
			h.mu.Lock()
			delete(h.chans, name) // nobody else joined: cmdMu is held
			h.mu.Unlock()
		}
	}
	h.cmdMu.Unlock()
	if err != nil {
		return nil, unavailable(err)
	}
	timer := time.NewTimer(confirmTimeout)
	defer timer.Stop()
	select {
	case <-ch.confirmed:
		return sub, nil
	case <-ctx.Done():
		sub.Close()
		return nil, ctx.Err()
	case <-timer.C:
		sub.Close()
		return nil, fmt.Errorf("%w: redis did not confirm the subscription within %s", store.ErrUnavailable, confirmTimeout)
	}
}

// place subscribes channels on their shards' links, making the links it
// lacks, and returns those it could not subscribe with why. It is called
// with cmdMu held; a channel counts as subscribed once the command is
// sent, and its confirmation comes through its link.
func (h *hub) place(ctx context.Context, names []string, avoid string) map[string]error {
	failed := map[string]error{}
	if err := h.ctx.Err(); err != nil { // closed: no new links
		for _, name := range names {
			failed[name] = err
		}
		return failed
	}
	byShard := map[string][]string{}
	nodes := map[string]*redis.Client{}
	for _, name := range names {
		shard, node, err := h.shardOf(ctx, name)
		if err == nil && shard == avoid && avoid != "" {
			err = fmt.Errorf("the cluster layout still names %s for %s", avoid, name)
		}
		if err != nil {
			failed[name] = err
			continue
		}
		byShard[shard] = append(byShard[shard], name)
		nodes[shard] = node
	}
	for shard, names := range byShard {
		l, fresh := h.links[shard], false
		if l == nil {
			l, fresh = h.newLink(shard, nodes[shard]), true
		}
		// Set before the command goes: its confirmation may come first.
		h.setLink(names, l)
		var err error
		if h.sharded() {
			err = bySlot(names, func(names []string) error { return l.ps.SSubscribe(ctx, names...) })
		} else {
			err = l.ps.Subscribe(context.WithValue(ctx, linkDial{}, l), names...)
		}
		if err != nil {
			h.setLink(names, nil)
			if fresh {
				_ = l.ps.Close()
			}
			for _, name := range names {
				failed[name] = err
			}
			continue
		}
		if fresh {
			h.links[shard] = l
			h.wg.Add(1)
			go h.run(l)
		}
	}
	return failed
}

// bySlot sends a shard channel command per slot: one SSUBSCRIBE or
// SUNSUBSCRIBE may name channels of one slot only.
func bySlot(names []string, send func(names []string) error) error {
	slots := map[int][]string{}
	for _, name := range names {
		slots[keySlot(name)] = append(slots[keySlot(name)], name)
	}
	for _, names := range slots {
		if err := send(names); err != nil {
			return err
		}
	}
	return nil
}

func (h *hub) setLink(names []string, l *link) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, name := range names {
		if ch := h.chans[name]; ch != nil {
			ch.link = l
		}
	}
}

// shardOf names the link a channel belongs on: on a Cluster, the address of
// the master serving the channel's slot, as the client last learnt it (no
// round trip), and that master's client.
func (h *hub) shardOf(ctx context.Context, name string) (string, *redis.Client, error) {
	if !h.sharded() {
		return "", nil, nil
	}
	m, err := h.cluster.MasterForKey(ctx, name)
	if err != nil {
		return "", nil, err
	}
	return m.Options().Addr, m, nil
}

// newLink makes a link's pub/sub connection, which connects with its first
// subscription: on a Cluster to the shard's master, node, and only to it.
func (h *hub) newLink(shard string, node *redis.Client) *link {
	l := &link{shard: shard, unsubscribing: map[string]int{}}
	if node != nil {
		l.ps = node.SSubscribe(h.ctx)
	} else {
		l.ps = h.c.Subscribe(h.ctx)
	}
	return l
}

func (h *hub) release(name string, sub *store.Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch := h.chans[name]; ch != nil {
		delete(ch.subs, sub)
		if len(ch.subs) == 0 {
			ch.idleSince = time.Now()
		}
	}
}

func (h *hub) sweeper() {
	defer h.wg.Done()
	t := time.NewTicker(h.sweepEvery)
	defer t.Stop()
	touch := time.NewTicker(touchEvery)
	defer touch.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-t.C:
			h.sweep()
		case <-touch.C:
			h.touchMaster()
		case node := <-h.master:
			h.followMaster(node)
		}
	}
}

// touchMaster pings through the client's pool, elsewhere than on a
// Cluster: after a Sentinel failover, a replica too idle to call Redis
// would otherwise never dial the new master, and its links would not learn
// that the master moved (see DialHook).
func (h *hub) touchMaster() {
	if h.sharded() {
		return
	}
	ctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
	defer cancel()
	_ = h.c.Ping(ctx).Err() // a failure is the calls' to report
}

// sweep unsubscribes channels that have been idle a while.
func (h *hub) sweep() {
	defer h.sweeps.Add(1)
	h.cmdMu.Lock()
	defer h.cmdMu.Unlock()
	h.mu.Lock()
	idle := map[*link][]string{}
	for name, ch := range h.chans {
		if len(ch.subs) == 0 && time.Since(ch.idleSince) >= h.idleAfter {
			delete(h.chans, name)
			if ch.link != nil {
				idle[ch.link] = append(idle[ch.link], name)
				if h.sharded() {
					ch.link.unsubscribing[name]++
				}
			}
		}
	}
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
	defer cancel()
	for l, names := range idle {
		var err error
		if h.sharded() {
			err = bySlot(names, func(names []string) error { return l.ps.SUnsubscribe(ctx, names...) })
		} else {
			err = l.ps.Unsubscribe(ctx, names...)
		}
		if err != nil {
			h.log.Debug("pubsub: unsubscribe failed; the link's loss will drop them", "err", err)
		}
	}
}

// run reads a link until it breaks, then places its channels again.
func (h *hub) run(l *link) {
	defer h.wg.Done()
	for {
		msg, err := l.ps.ReceiveTimeout(h.ctx, h.sweepEvery)
		if h.ctx.Err() != nil {
			return
		}
		if slot, ok := movedSlot(err); ok {
			// An SSUBSCRIBE sent where the slot no longer is: the link
			// is fine, and that slot's channels move.
			h.moved(l, func(name string) bool { return keySlot(name) == slot })
			continue
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Quiet; check the connection is alive.
				if err = l.ps.Ping(h.ctx); err == nil {
					continue
				}
			}
			if h.ctx.Err() != nil {
				return
			}
			h.relink(l, err)
			return
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			switch m.Kind {
			case "subscribe", "ssubscribe":
				h.confirm(l, m.Channel)
			case "sunsubscribe":
				h.unsubscribed(l, m.Channel)
			}
		case *redis.Message:
			h.dispatch(m.Channel, m.Payload)
		}
	}
}

func (h *hub) confirm(l *link, name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := h.chans[name]
	if ch == nil || ch.link != l {
		return
	}
	select {
	case <-ch.confirmed: // subscribed again after a link broke
	default:
		close(ch.confirmed)
	}
	if ch.resync {
		ch.resync = false
		for sub := range ch.subs {
			sub.Resync()
		}
	}
}

// unsubscribed handles a SUNSUBSCRIBE: the answer to the sweep's, or Redis
// dropping a channel whose slot moved to another shard.
func (h *hub) unsubscribed(l *link, name string) {
	h.mu.Lock()
	if l.unsubscribing[name] > 0 {
		if l.unsubscribing[name]--; l.unsubscribing[name] == 0 {
			delete(l.unsubscribing, name)
		}
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	h.moved(l, func(n string) bool { return n == name })
}

// moved places the link's channels that match where their slot now is,
// anywhere but on the link's node.
func (h *hub) moved(l *link, match func(name string) bool) {
	h.mu.Lock()
	var names []string
	for name, ch := range h.chans {
		if ch.link == l && match(name) {
			ch.link, ch.resync = nil, true
			names = append(names, name)
		}
	}
	h.mu.Unlock()
	if len(names) == 0 {
		return
	}
	h.log.Info("pubsub: a slot moved; subscribing its channels on their new shard", "from", l.shard, "channels", len(names))
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.rehome(names, l.shard)
	}()
}

// movedSlot reads a MOVED reply's slot.
func movedSlot(err error) (int, bool) {
	var re redis.Error
	if !errors.As(err, &re) {
		return 0, false
	}
	f := strings.Fields(re.Error())
	if len(f) != 3 || f[0] != "MOVED" {
		return 0, false
	}
	slot, err := strconv.Atoi(f[1])
	return slot, err == nil
}

// relink retires a broken link and places its channels again. Links that
// keep breaking (Redis refusing the subscriptions) are retried with a
// growing pause.
func (h *hub) relink(l *link, cause error) {
	h.log.Warn("pubsub: connection lost; subscribing again", "shard", l.shard, "err", cause)
	h.mu.Lock()
	if time.Since(h.lastLoss) < time.Second {
		h.lossPause = min(max(2*h.lossPause, 50*time.Millisecond), 2*time.Second)
	} else {
		h.lossPause = 0
	}
	h.lastLoss = time.Now()
	pause := h.lossPause
	h.mu.Unlock()
	select {
	case <-h.ctx.Done():
	case <-time.After(pause):
	}
	h.cmdMu.Lock()
	h.mu.Lock()
	if h.links[l.shard] == l {
		delete(h.links, l.shard)
	}
	var names []string
	for name, ch := range h.chans {
		if ch.link == l {
			ch.link, ch.resync = nil, true
			names = append(names, name)
		}
	}
	h.mu.Unlock()
	h.cmdMu.Unlock()
	_ = l.ps.Close()
	h.rehome(names, "")
	h.reconnects.Add(1)
}

// rehome places channels again (not on avoid, a node that refused them),
// learning the Cluster's layout afresh before each try and backing off
// between them, until each is placed, dropped, or the hub closes.
func (h *hub) rehome(names []string, avoid string) {
	backoff := 50 * time.Millisecond
	for {
		if h.sharded() {
			h.cluster.ReloadState(h.ctx)
		}
		h.cmdMu.Lock()
		h.mu.Lock()
		wanted := names[:0]
		for _, name := range names {
			if ch := h.chans[name]; ch != nil && ch.link == nil {
				wanted = append(wanted, name)
			}
		}
		h.mu.Unlock()
		var failed map[string]error
		if len(wanted) > 0 {
			// Bounded, as subscribe's: cmdMu is held, and every new
			// subscription waits on it.
			ctx, cancel := context.WithTimeout(h.ctx, confirmTimeout)
			failed = h.place(ctx, wanted, avoid)
			cancel()
		}
		h.cmdMu.Unlock()
		if len(failed) == 0 {
			return
		}
		names = names[:0]
		var cause error
		for name, err := range failed {
			names, cause = append(names, name), err
		}
		h.log.Debug("pubsub: subscribing again failed; retrying", "channels", len(names), "err", cause)
		select {
		case <-h.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

func (h *hub) dispatch(name, payload string) {
	h.mu.Lock()
	ch := h.chans[name]
	if ch == nil || len(ch.subs) == 0 {
		h.mu.Unlock()
		return
	}
	subs := make([]*store.Subscription, 0, len(ch.subs))
	for sub := range ch.subs {
		subs = append(subs, sub)
	}
	t := ch.topic
	h.mu.Unlock()

	var ev store.Event
	switch {
	case t.ListenerID != "":
		ev = store.Event{Kind: store.EventListenerResolved, ListenerID: t.ListenerID}
	case payload == "end":
		ev = store.Event{Kind: store.EventSessionEnded, SessionID: t.SessionID}
	case strings.HasPrefix(payload, "s{"):
		st, err := decodeStatusEvent(payload[1:])
		if err != nil {
			h.log.Error("pubsub: undecodable status; resyncing its subscribers", "channel", name, "err", err)
			for _, sub := range subs {
				sub.Resync()
			}
			return
		}
		ev = store.Event{Kind: store.EventMessageStatus, SessionID: t.SessionID, Status: st}
	case strings.HasPrefix(payload, "{"):
		m, err := decodeMessage(payload)
		if err != nil {
			h.log.Error("pubsub: undecodable message; resyncing its subscribers", "channel", name, "err", err)
			for _, sub := range subs {
				sub.Resync()
			}
			return
		}
		ev = store.Event{Kind: store.EventMessage, SessionID: t.SessionID, Message: &m}
	default:
		return
	}
	for _, sub := range subs {
		sub.Publish(ev)
	}
}

package redisstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/redisstore"
)

// clusterThroughProxies is the production Cluster client (NewClient's
// settings) with every node reached through a proxy of its own, and a
// store on it.
func clusterThroughProxies(t testing.TB, rc *redistest.Cluster, so store.Options) (*redisstore.Store, []*redistest.Proxy) {
	t.Helper()
	prod, err := redisstore.NewClient(rc.URL())
	if err != nil {
		t.Fatal(err)
	}
	o := *prod.(*redis.ClusterClient).Options()
	_ = prod.Close()
	proxies := map[string]*redistest.Proxy{}
	for _, addr := range rc.Addrs() {
		proxies[addr] = redistest.NewProxy(t, addr)
	}
	o.Addrs = []string{proxies[rc.Addrs()[0]].Addr}
	o.ReadTimeout = 300 * time.Millisecond
	o.NewClient = func(no *redis.Options) *redis.Client {
		if p, ok := proxies[no.Addr]; ok { // a node, as CLUSTER SLOTS names it
			no.Addr = p.Addr
		}
		return redis.NewClient(no)
	}
	c := redis.NewClusterClient(&o)
	s, err := redisstore.New(c, redisstore.Options{Options: so, Prefix: fmt.Sprintf("nr%d", prefixes.Add(1))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		_ = c.Close()
	})
	if err := redisstore.LoadScripts(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	var ps []*redistest.Proxy
	for _, p := range proxies {
		ps = append(ps, p)
	}
	return s, ps
}

// postedSession is a session with one post: the client knows where it
// lives.
func postedSession(t *testing.T, s *redisstore.Store) string {
	t.Helper()
	ctx := context.Background()
	ses, err := s.CreateSession(ctx, store.NewSession{Tenant: "t", Platform: "api", Channel: "api", User: "u1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AppendOutbound(ctx, store.OutboundMessage{Tenant: "t", SessionID: ses.ID, Text: "first", Status: store.StatusDelivered}); err != nil {
		t.Fatal(err)
	}
	return ses.ID
}

// breakOnce arms fault on every node's proxy for the next call of op (the
// node that gets it catches it), and reports whether it struck.
func breakOnce(proxies []*redistest.Proxy, op string, fault redistest.Fault) (struck func() bool) {
	tripped := redistest.BreakOne(proxies, redisstore.ClusterScriptHash(op), fault)
	return func() bool {
		select {
		case <-tripped:
			return true
		default:
			return false
		}
	}
}

// On a Cluster, go-redis sends a command again when its connection breaks
// (up to max_redirects times). A post whose reply is lost ran once in Redis:
// it must fail (the store cannot know it ran), not run a second time. With
// no idempotency key, a second run would be a second message.
func TestClusterRunsAScriptOnceWhenItsReplyIsLost(t *testing.T) {
	t.Parallel()
	for _, fault := range []redistest.Fault{redistest.DropReply, redistest.StallReply} {
		t.Run(fault.String(), func(t *testing.T) {
			s, proxies := clusterThroughProxies(t, redistest.SharedCluster(t), store.Options{})
			ctx := context.Background()
			sid := postedSession(t, s)
			struck := breakOnce(proxies, "post", fault)
			_, _, err := s.AppendOutbound(ctx, store.OutboundMessage{Tenant: "t", SessionID: sid, Text: "once", Status: store.StatusDelivered})
			if !struck() {
				t.Fatal("the fault did not strike")
			}
			if err == nil {
				t.Fatal("a post whose reply was lost answered no error: go-redis ran it again")
			}
			for _, p := range proxies {
				p.Restore()
			}
			msgs, err := s.ListMessages(ctx, "t", sid, "", 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != 2 {
				t.Fatalf("%d messages after two posts, want 2", len(msgs))
			}
		})
	}
}

// A script that only reads keeps go-redis's retries on a Cluster: a history
// read whose reply is lost is answered by the retry.
func TestClusterRetriesAReadWhoseReplyIsLost(t *testing.T) {
	t.Parallel()
	s, proxies := clusterThroughProxies(t, redistest.SharedCluster(t), store.Options{})
	sid := postedSession(t, s)
	struck := breakOnce(proxies, "list", redistest.DropReply)
	msgs, err := s.ListMessages(context.Background(), "t", sid, "", 10)
	if !struck() || err != nil || len(msgs) != 1 {
		t.Fatalf("fault struck %v: %d messages, %v; want the read retried", struck(), len(msgs), err)
	}
}

// A Redis that lost its script cache (a restart) runs every script by its
// text, once, on one server and on a Cluster. Not parallel: it flushes the
// shared Cluster's script cache, which the fault tests load so that they
// break the script itself and not a NOSCRIPT answer before it; the
// parallel tests start only once the sequential ones are done.
func TestScriptsRunAfterRedisLostItsScriptCache(t *testing.T) {
	srv := redistest.Start(t)
	rc := redistest.SharedCluster(t)
	for name, url := range map[string]string{"standalone": "redis://" + srv.Addr, "cluster": rc.URL()} {
		t.Run(name, func(t *testing.T) {
			c, err := redisstore.NewClient(url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := redisstore.New(c, redisstore.Options{Prefix: fmt.Sprintf("flush%d", prefixes.Add(1))})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			flush := func() {
				t.Helper()
				var err error
				if cc, ok := c.(*redis.ClusterClient); ok {
					err = cc.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error { return n.ScriptFlush(ctx).Err() })
				} else {
					err = c.ScriptFlush(ctx).Err()
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			flush()
			ses, err := s.CreateSession(ctx, store.NewSession{Tenant: "t", Platform: "api", Channel: "api", User: "u1"})
			if err != nil {
				t.Fatal(err)
			}
			flush()
			if _, _, err := s.AppendOutbound(ctx, store.OutboundMessage{Tenant: "t", SessionID: ses.ID, Text: "one", Status: store.StatusDelivered}); err != nil {
				t.Fatal(err)
			}
			flush()
			if _, err := s.Ingest(ctx, store.InboundMessage{Tenant: "t", Platform: "api", Channel: "api", User: "u1", Text: "two"}); err != nil {
				t.Fatal(err)
			}
			flush()
			msgs, err := s.ListMessages(ctx, "t", ses.ID, "", 10)
			if err != nil || len(msgs) != 2 {
				t.Fatalf("history %d messages, %v; want 2", len(msgs), err)
			}
		})
	}
}

// On one Redis, an ingest into a session a chatbot runs makes the bot's
// queue due in the same script as the append: an ingest whose caller never
// hears back (its reply lost, and no retry) still reaches the bot.
func TestAnIngestForAChatbotIsDueThoughItsCallerNeverHearsBack(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	c := redis.NewClient(&redis.Options{Addr: proxy.Addr, MaxRetries: -1, ReadTimeout: 300 * time.Millisecond})
	defer c.Close()
	ctx := context.Background()
	if err := redisstore.LoadScripts(ctx, c); err != nil {
		t.Fatal(err)
	}
	s, err := redisstore.New(c, redisstore.Options{Prefix: fmt.Sprintf("bq%d", prefixes.Add(1))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.StartChatbot(ctx, store.ChatbotStart{Tenant: "t", Platform: "api", Channel: "api", User: "u1", ChatbotID: "bot1",
		Greeting:       func(store.Session, store.Contact) store.Outgoing { return store.Outgoing{Text: "Hi, I'm a bot"} },
		GreetingStatus: store.StatusDelivered}); err != nil {
		t.Fatal(err)
	}
	proxy.Break(redisstore.ScriptHash("ingest"), redistest.DropReply)
	in := store.InboundMessage{Tenant: "t", Platform: "api", Channel: "api", User: "u1", Text: "hi bot", Bots: []string{"bot1"}}
	if _, err := s.Ingest(ctx, in); err == nil {
		t.Fatal("an ingest whose reply was lost answered no error")
	}
	cs, err := s.ClaimDeliveries(ctx, 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].Bot == nil || cs[0].Message.Text != "hi bot" {
		t.Fatalf("claims %+v; want the message, for its chatbot", cs)
	}
}

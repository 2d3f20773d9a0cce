package server_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/server"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/redisstore"
)

var replicaSets atomic.Int64

// cluster is n chatrelay servers sharing one private redis-server, one key
// prefix and one fake clock: n replicas of one deployment.
type cluster struct {
	redis    *redistest.Server
	prefix   string
	replicas []*testServer
	trips    []*redistest.RoundTrips // per replica
}

func startCluster(t *testing.T, n int, opts ...redistest.Option) *cluster {
	t.Helper()
	return startClusterWith(t, n, clusterOptions{redis: opts})
}

// startClusterVia is startCluster where replica i reaches Redis at via(i),
// when via is given (a proxy the test can cut).
func startClusterVia(t *testing.T, n int, via func(i int, redisAddr string) string, opts ...redistest.Option) *cluster {
	t.Helper()
	return startClusterWith(t, n, clusterOptions{via: via, redis: opts})
}

// The Redis deployments the replica tests run on: one server, and a
// Redis Cluster of three masters with a replica each (shared by the tests
// of this package, each under its own key prefix).
const (
	standalone   = "standalone"
	redisCluster = "redis-cluster"
)

// onEachTopology runs test as parallel subtests, once per Redis topology.
func onEachTopology(t *testing.T, test func(t *testing.T, topology string)) {
	for _, topology := range []string{standalone, redisCluster} {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			test(t, topology)
		})
	}
}

// startClusterOn is startCluster on the given Redis topology.
func startClusterOn(t *testing.T, topology string, n int) *cluster {
	t.Helper()
	return startClusterWith(t, n, clusterOptions{topology: topology})
}

type clusterOptions struct {
	via    func(i int, redisAddr string) string
	redis  []redistest.Option
	server []option // for every replica
	// topology is standalone (the default), redisCluster or sentinel;
	// elsewhere than standalone, cluster.redis is nil. redisCluster and
	// sentinelled are the deployments to use, when not the shared Cluster.
	topology     string
	redisCluster *redistest.Cluster
	sentinelled  *redistest.Sentinel
}

func startClusterWith(t *testing.T, n int, o clusterOptions) *cluster {
	t.Helper()
	via := o.via
	cl := &cluster{prefix: fmt.Sprintf("rs%d", replicaSets.Add(1))}
	rc := o.redisCluster
	switch {
	case o.topology == redisCluster && rc == nil:
		rc = redistest.SharedCluster(t)
	case o.topology == standalone || o.topology == "":
		cl.redis = redistest.Start(t, o.redis...)
	}
	clk := clock.NewFake(epoch)
	for i := range n {
		name := fmt.Sprintf("%s-replica%d", cl.prefix, i)
		var c redis.UniversalClient
		switch {
		case rc != nil:
			c = redis.NewClusterClient(&redis.ClusterOptions{
				Addrs: rc.Addrs(), ClientName: name,
				DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, MaxRetries: -1,
			})
		case o.sentinelled != nil:
			c = redis.NewFailoverClient(&redis.FailoverOptions{
				MasterName: redistest.MasterName, SentinelAddrs: o.sentinelled.SentinelAddrs(), ClientName: name,
				DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, MaxRetries: -1,
			})
		default:
			addr := cl.redis.Addr
			if via != nil {
				addr = via(i, cl.redis.Addr)
			}
			c = redis.NewClient(&redis.Options{
				Addr: addr, ClientName: name,
				DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, MaxRetries: -1,
			})
		}
		trips := &redistest.RoundTrips{}
		c.AddHook(trips)
		cl.trips = append(cl.trips, trips)
		st, err := redisstore.New(c, redisstore.Options{Options: store.Options{Clock: clk}, Prefix: cl.prefix, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close(); _ = c.Close() })
		cl.replicas = append(cl.replicas, start(t, st, clk, o.server...))
	}
	return cl
}

func TestReplicasChatReceiveOnAIsResolvedByIngestOnB(t *testing.T) {
	t.Parallel()
	onEachTopology(t, func(t *testing.T, topology string) {
		cl := startClusterOn(t, topology, 2)
		a, b := cl.replicas[0], cl.replicas[1]
		st, w := a.receive(a.ctx(), &pb.ChatReceiveRequest{FromUser: "+15550001", KeywordFilter: "yes", TimeoutMinutes: 10})
		// Over REST on B, as an integration's webhook would.
		r := b.rest("POST", "/v1/inbound-messages", map[string]any{"from_user": "+15550001", "text": "yes!"})
		if r.code != 200 || path(r.json(t), "listeners_matched") != float64(1) {
			t.Fatalf("ingest on B: %d %s", r.code, r.body)
		}
		s := recvOrFail(t, st.Recv).GetSuccess()
		if s.GetMessageText() != "yes!" || s.ConversationId != w.ConversationId {
			t.Fatalf("A's stream got %v", s)
		}
		wantEOF(t, st.Recv)
	})
}

func TestReplicasPostOnBReachesWatchOnA(t *testing.T) {
	t.Parallel()
	onEachTopology(t, func(t *testing.T, topology string) {
		cl := startClusterOn(t, topology, 3)
		a, b, c := cl.replicas[0], cl.replicas[1], cl.replicas[2]
		ses := c.createSession("visitor")
		watchA, err := a.sessions.WatchSession(a.ctx(), &pb.WatchSessionRequest{SessionId: ses.SessionId})
		if err != nil {
			t.Fatal(err)
		}
		restA := a.restStream("GET", "/v1/sessions/"+ses.SessionId+":watch", nil)
		if _, err := watchA.Header(); err != nil {
			t.Fatal(err)
		}
		var want []string
		for i := range 20 {
			want = append(want, b.post(ses.SessionId, fmt.Sprint("m", i)))
		}
		for i, id := range want {
			if got := recvOrFail(t, watchA.Recv).GetMessage().GetMessageId(); got != id {
				t.Fatalf("gRPC watcher, message %d: %s, want %s", i, got, id)
			}
			if got := str(restA.next(), "result", "message", "message_id"); got != id {
				t.Fatalf("REST watcher, message %d: %s, want %s", i, got, id)
			}
		}
		if _, err := c.sessions.CloseSession(c.ctx(), &pb.CloseSessionRequest{SessionId: ses.SessionId}); err != nil {
			t.Fatal(err)
		}
		if got := recvOrFail(t, watchA.Recv).GetEnded(); got.GetState() != pb.SessionState_SESSION_STATE_CLOSED {
			t.Fatalf("watcher on A got %v, want the end", got)
		}
	})
}

func TestReplicasResumeOnAnotherReplicaAfterADrop(t *testing.T) {
	t.Parallel()
	onEachTopology(t, func(t *testing.T, topology string) {
		cl := startClusterOn(t, topology, 2)
		a, b := cl.replicas[0], cl.replicas[1]
		ctx, cancel := context.WithCancel(a.ctx())
		_, w := a.receive(ctx, &pb.ChatReceiveRequest{FromUser: "u1", KeywordFilter: "ok"})
		cancel()
		if r := b.ingest("u1", "ok then"); r.ListenersMatched != 1 {
			t.Fatalf("the detached listener did not match: %v", r)
		}
		st, again := b.receive(b.ctx(), &pb.ChatReceiveRequest{ConversationId: w.ConversationId})
		if !again.Resumed {
			t.Fatalf("waiting = %v", again)
		}
		if got := recvOrFail(t, st.Recv).GetSuccess().GetMessageText(); got != "ok then" {
			t.Fatalf("resumed on B: %q", got)
		}
	})
}

func TestReplicasResumeOnAnotherReplicaAfterTheFirstStops(t *testing.T) {
	t.Parallel()
	onEachTopology(t, func(t *testing.T, topology string) {
		cl := startClusterOn(t, topology, 2)
		a, b := cl.replicas[0], cl.replicas[1]
		st, w := a.receive(a.ctx(), &pb.ChatReceiveRequest{FromUser: "u1", TimeoutMinutes: 30})
		a.stop() // a rolling deploy takes A away
		_, err := st.Recv()
		wantStatus(t, err, codes.Unavailable, "SERVER_SHUTTING_DOWN", "")
		b.ingest("u1", "are you there")
		st2, again := b.receive(b.ctx(), &pb.ChatReceiveRequest{ConversationId: w.ConversationId})
		if !again.TimeoutAt.AsTime().Equal(w.TimeoutAt.AsTime()) {
			t.Fatalf("deadline moved: %v -> %v", w.TimeoutAt.AsTime(), again.TimeoutAt.AsTime())
		}
		if got := recvOrFail(t, st2.Recv).GetSuccess().GetMessageText(); got != "are you there" {
			t.Fatalf("resumed on B: %q", got)
		}
	})
}

func TestReplicasShareIdempotency(t *testing.T) {
	t.Parallel()
	onEachTopology(t, func(t *testing.T, topology string) {
		cl := startClusterOn(t, topology, 2)
		a, b := cl.replicas[0], cl.replicas[1]
		ses := a.createSession("u1")
		req := &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "pay", IdempotencyKey: "run-9"}
		var wg sync.WaitGroup
		ids := make([]string, 8)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := cl.replicas[i%2]
				resp, err := r.chat.PostMessage(r.ctx(), req)
				if err != nil {
					t.Error(err)
					return
				}
				ids[i] = resp.MessageId
			}()
		}
		wg.Wait()
		for _, id := range ids {
			if id != ids[0] {
				t.Fatalf("replicas answered different messages: %v", ids)
			}
		}
		if h := b.history(ses.SessionId); len(h) != 1 {
			t.Fatalf("history has %d messages, want 1", len(h))
		}
	})
}

// A match and a deadline race on two replicas, many times: each listener
// gets exactly one outcome, and every stream attached to it (on either
// replica) sees that same outcome.
func TestReplicasExactlyOneOutcomeWhenMatchRacesTimeout(t *testing.T) {
	t.Parallel()
	onEachTopology(t, func(t *testing.T, topology string) {
		cl := startClusterOn(t, topology, 2)
		a, b := cl.replicas[0], cl.replicas[1]
		raceMatchAndDeadline(t, b, func(user string) (receiveStream, receiveStream) {
			sa, w := a.receive(a.ctx(), &pb.ChatReceiveRequest{FromUser: user, TimeoutMinutes: 1})
			sb, _ := b.receive(b.ctx(), &pb.ChatReceiveRequest{ConversationId: w.ConversationId})
			return sa, sb
		})
	})
}

// raceMatchAndDeadline races, round after round, an ingest on ts against
// the listeners' deadline passing, until both outcomes have been seen often
// enough to show the race is really run. open registers a one-minute
// listener for user and returns two streams attached to it. The clock moves
// after a delay that adapts to the outcomes (shorter after a match, longer
// after a timeout), so it settles where the ingest and the deadline
// collide; the assertions hold for any interleaving.
func raceMatchAndDeadline(t *testing.T, ts *testServer, open func(user string) (receiveStream, receiveStream)) {
	t.Helper()
	begin := time.Now()
	ts.ingest("warmup", "x")
	delay := time.Since(begin)
	seen := map[string]int{}
	for round := 0; seen["success"] < 3 || seen["timeout"] < 3; round++ {
		if round == 1000 {
			t.Fatalf("after %d rounds the race never went both ways: %v", round, seen)
		}
		user := fmt.Sprint("racer", round)
		sa, sb := open(user)
		jitter := delay/2 + time.Duration(rand.Int64N(int64(delay)+1))
		advanced := make(chan struct{})
		time.AfterFunc(jitter, func() { ts.clk.Advance(time.Minute); close(advanced) })
		matched := ts.ingest(user, "now").ListenersMatched
		<-advanced
		fa, fb := recvOrFail(t, sa.Recv), recvOrFail(t, sb.Recv)
		ka, kb := outcomeOf(fa), outcomeOf(fb)
		if ka != kb || (ka == "success") != (matched == 1) {
			t.Fatalf("round %d: the streams saw %s and %s; the ingest matched %d", round, ka, kb, matched)
		}
		seen[ka]++
		if ka == "success" {
			delay = delay * 4 / 5
		} else {
			delay = delay * 5 / 4
		}
		delay = max(delay, time.Microsecond)
	}
	t.Logf("outcomes: %v", seen)
}

func outcomeOf(f *pb.ChatReceiveResponse) string {
	if f.GetSuccess() != nil {
		return "success"
	}
	return f.GetError().GetErrorCode()
}

// sessionChannel is the pub/sub channel of a session of the default
// tenant: in the slot of the session's hash tag.
func (cl *cluster) sessionChannel(t *testing.T, sid string) string {
	tag, ok := ids.TagOf(sid)
	if !ok {
		t.Fatalf("session id %q carries no tag", sid)
	}
	return fmt.Sprintf("%s:{%s}:ev:s:default:%s", cl.prefix, tag, sid)
}

// pubsubConns counts the pub/sub connections a replica holds, by the client
// name its connections carry.
func pubsubConns(t *testing.T, cl *cluster, replica int) int {
	t.Helper()
	return pubsubConnsOn(t, cl.redis.Client(t), fmt.Sprintf("%s-replica%d", cl.prefix, replica))
}

// pubsubConnsOn counts the pub/sub connections named name that c's server
// holds.
func pubsubConnsOn(t *testing.T, c *redis.Client, name string) int {
	t.Helper()
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	name = "name=" + name + " "
	n := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, name) && strings.Contains(line, " flags=P ") {
			n++
		}
	}
	return n
}

func TestReplicaMultiplexesStreamsOverOnePubSubConnection(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 2)
	a, b := cl.replicas[0], cl.replicas[1]
	const sessions, listeners = 5000, 5000
	// Opening 10,000 streams under -race takes a while: one context for
	// all of them, longer than ts.ctx()'s.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var streams []func() error
	var sesIDs []string
	for i := range sessions {
		ses := b.createSession(fmt.Sprint("w", i))
		sesIDs = append(sesIDs, ses.SessionId)
		st, err := a.sessions.WatchSession(ctx, &pb.WatchSessionRequest{SessionId: ses.SessionId, LiveOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Header(); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, func() error { _, err := st.Recv(); return err })
	}
	for i := range listeners {
		st, _ := a.receive(ctx, &pb.ChatReceiveRequest{FromUser: fmt.Sprint("l", i)})
		streams = append(streams, func() error { _, err := st.Recv(); return err })
	}
	if n := pubsubConns(t, cl, 0); n != 1 {
		t.Fatalf("replica A holds %d pub/sub connections for %d streams, want 1", n, sessions+listeners)
	}
	numsub, err := cl.redis.Client(t).PubSubNumSub(context.Background(), cl.sessionChannel(t, sesIDs[0])).Result()
	if err != nil || numsub[cl.sessionChannel(t, sesIDs[0])] != 1 {
		t.Fatalf("PUBSUB NUMSUB = %v, %v; want one subscriber (the shared connection)", numsub, err)
	}
	// And the multiplexed streams still all work.
	b.post(sesIDs[7], "x")
	if err := streams[7](); err != nil {
		t.Fatalf("a multiplexed watcher: %v", err)
	}
	b.ingest("l9", "y")
	if err := streams[sessions+9](); err != nil {
		t.Fatalf("a multiplexed listener: %v", err)
	}
}

func TestPubSubConnectionKilledLosesNothing(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 2)
	a, b := cl.replicas[0], cl.replicas[1]
	ses := b.createSession("u1")
	watch := a.liveWatch(ses.SessionId)
	lst, _ := a.receive(a.ctx(), &pb.ChatReceiveRequest{FromUser: "u2"})
	var want []string
	post := func(text string) { want = append(want, b.post(ses.SessionId, text)) }
	post("before")
	killed, err := cl.redis.Client(t).ClientKillByFilter(context.Background(), "TYPE", "pubsub").Result()
	if err != nil || killed == 0 {
		t.Fatalf("CLIENT KILL TYPE pubsub: %d, %v", killed, err)
	}
	// Right after the drop, while A reconnects: these are published to
	// nobody, and must still arrive.
	post("during 1")
	post("during 2")
	b.ingest("u2", "hello?")
	post("after")
	wantMessages(t, watch, want) // no loss, no duplicate
	if got := recvOrFail(t, lst.Recv).GetSuccess().GetMessageText(); got != "hello?" {
		t.Fatalf("listener got %q", got)
	}
}

// While replica A is cut off from Redis, messages are posted and a reply
// ingested on B: their publications reach nobody on A. After A reconnects
// nothing else is sent, so only A's resync (history after the watcher's
// last message, the listener's outcome) can deliver them.
func TestPartitionedReplicaResyncsWhatItMissed(t *testing.T) {
	t.Parallel()
	var proxy *redistest.Proxy
	cl := startClusterVia(t, 2, func(i int, addr string) string {
		if i > 0 {
			return addr
		}
		proxy = redistest.NewProxy(t, addr)
		return proxy.Addr
	})
	a, b := cl.replicas[0], cl.replicas[1]
	ses := b.createSession("u1")
	watch := a.liveWatch(ses.SessionId)
	lst, _ := a.receive(a.ctx(), &pb.ChatReceiveRequest{FromUser: "u2"})

	proxy.Cut()
	waitFor(t, "A's pub/sub subscribers to be gone", func() bool {
		n, err := cl.redis.Client(t).PubSubNumSub(context.Background(), cl.sessionChannel(t, ses.SessionId)).Result()
		return err == nil && n[cl.sessionChannel(t, ses.SessionId)] == 0
	})
	want := []string{b.post(ses.SessionId, "while cut 1"), b.post(ses.SessionId, "while cut 2")}
	b.ingest("u2", "reply while cut")
	proxy.Restore()

	wantMessages(t, watch, want)
	if got := recvOrFail(t, lst.Recv).GetSuccess().GetMessageText(); got != "reply while cut" {
		t.Fatalf("listener got %q", got)
	}
}

func TestRedisRestartWhileListenersWait(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 2, redistest.WithAppendOnly())
	a, b := cl.replicas[0], cl.replicas[1]
	var streams []receiveStream
	for i := range 5 {
		st, _ := a.receive(a.ctx(), &pb.ChatReceiveRequest{FromUser: fmt.Sprint("u", i), TimeoutMinutes: 60})
		streams = append(streams, st)
	}
	if err := cl.redis.Restart(); err != nil {
		t.Fatal(err)
	}
	// B's first calls may meet the broken connections; it recovers on its
	// own, so retry until the deadline.
	for i := range streams {
		waitFor(t, "an ingest after the restart", func() bool {
			_, err := b.chat.IngestMessage(b.ctx(), &pb.IngestMessageRequest{FromUser: fmt.Sprint("u", i), Text: "back"})
			return err == nil
		})
	}
	for i, st := range streams {
		if got := recvOrFail(t, st.Recv).GetSuccess().GetMessageText(); got != "back" {
			t.Fatalf("listener %d after the restart: %q", i, got)
		}
	}
}

func TestRedisDownFailsFastAndRecovers(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1, redistest.WithAppendOnly())
	a := cl.replicas[0]
	ses := a.createSession("u1")
	health := healthpb.NewHealthClient(a.conn)
	serving := func(want healthpb.HealthCheckResponse_ServingStatus) func() bool {
		return func() bool {
			h, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{})
			return err == nil && h.Status == want
		}
	}
	waitFor(t, "SERVING", serving(healthpb.HealthCheckResponse_SERVING))

	cl.redis.Kill()
	start := time.Now()
	_, err := a.chat.PostMessage(a.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "x"})
	wantStatus(t, err, codes.Unavailable, "BACKEND_UNAVAILABLE", "")
	took := time.Since(start)
	if took > 5*time.Second {
		t.Fatalf("a call took %s to fail while Redis was down; want fast failure", took)
	}
	t.Logf("PostMessage failed in %s while Redis was down", took.Round(time.Millisecond))
	err = firstErr(a.chat.ChatReceive(a.ctx(), &pb.ChatReceiveRequest{FromUser: "u9"}))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("ChatReceive while Redis is down: %v", err)
	}
	wantREST(t, a.rest("GET", "/v1/sessions/"+ses.SessionId, nil), 503, "BACKEND_UNAVAILABLE")
	waitFor(t, "NOT_SERVING", serving(healthpb.HealthCheckResponse_NOT_SERVING))
	if r := a.rest("GET", "/readyz", nil); r.code != 503 {
		t.Fatalf("/readyz while Redis is down: %d", r.code)
	}

	if err := cl.redis.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "SERVING again", serving(healthpb.HealthCheckResponse_SERVING))
	waitFor(t, "/readyz 200", func() bool { return a.rest("GET", "/readyz", nil).code == 200 })
	if _, err := a.chat.PostMessage(a.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "back"}); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

// TestRedisRoundTripsPerRPC pins the cost of each RPC in Redis round trips
// on replica A (scripts already loaded). A replica learns a session's
// platform and channel from any call that returns the session; only a
// session it has never seen, here one created on B, costs one more read.
func TestRedisRoundTripsPerRPC(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 2)
	a, trips := cl.replicas[0], cl.trips[0]
	ses := a.createSession("u1")
	// Warm up: load every script once and let the replica see the session.
	a.chat.PostMessage(a.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "warm", IdempotencyKey: "w"})
	a.ingest("u1", "warm")
	a.chat.SendChatbotMessage(a.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "bot_plain", From: "api", To: "u0"})
	a.sessions.UpdateSession(a.ctx(), &pb.UpdateSessionRequest{SessionId: ses.SessionId, Metadata: map[string]string{"k": "v"}})
	warm, _ := a.receive(a.ctx(), &pb.ChatReceiveRequest{FromUser: "warm"})
	a.ingest("warm", "x")
	recvOrFail(t, warm.Recv)
	other := a.createSession("u3")
	a.sessions.CloseSession(a.ctx(), &pb.CloseSessionRequest{SessionId: other.SessionId})
	a.history(other.SessionId)
	created, created2 := a.createSession("u7"), a.createSession("u8") // no post or ingest yet
	unseen, unseen2 := cl.replicas[1].createSession("u6"), cl.replicas[1].createSession("u9")
	// Sessions A has seen only through SendChatbotMessage and GetSession.
	byBot, err := a.chat.SendChatbotMessage(a.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "bot_plain", From: "api", To: "u10"})
	if err != nil {
		t.Fatal(err)
	}
	byGet := cl.replicas[1].createSession("u11")
	if _, err := a.sessions.GetSession(a.ctx(), &pb.GetSessionRequest{SessionId: byGet.SessionId}); err != nil {
		t.Fatal(err)
	}

	postInto := func(sid string) func() {
		return func() { a.chat.PostMessage(a.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "m"}) }
	}
	ingestInto := func(sid string) func() {
		return func() { a.chat.IngestMessage(a.ctx(), &pb.IngestMessageRequest{SessionId: sid, Text: "in"}) }
	}
	cases := []struct {
		rpc  string
		want int64
		call func()
	}{
		{"PostMessage", 1, postInto(ses.SessionId)},
		{"PostMessage with idempotency_key", 1, func() {
			a.chat.PostMessage(a.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "m", IdempotencyKey: "k1"})
		}},
		{"IngestMessage, no listener", 1, func() { a.ingest("u1", "in") }},
		{"IngestMessage opening a session", 1, func() { a.ingest("u2", "in") }},
		{"IngestMessage into a named session, no listener", 1, ingestInto(ses.SessionId)},
		{"PostMessage, the first into a session A created", 1, postInto(created.SessionId)},
		{"IngestMessage, the first into a named session A created, no listener", 1, ingestInto(created2.SessionId)},
		{"PostMessage, the first into a session A's SendChatbotMessage opened", 1, postInto(byBot.SessionId)},
		{"PostMessage, the first into a session A only read", 1, postInto(byGet.SessionId)},
		{"PostMessage, the first into a session A never saw", 2, postInto(unseen.SessionId)},
		{"IngestMessage, the first into a named session A never saw, no listener", 2, ingestInto(unseen2.SessionId)},
		{"CreateSession", 1, func() { a.createSession("u4") }},
		{"GetSession", 1, func() { a.sessions.GetSession(a.ctx(), &pb.GetSessionRequest{SessionId: ses.SessionId}) }},
		{"UpdateSession", 1, func() {
			a.sessions.UpdateSession(a.ctx(), &pb.UpdateSessionRequest{SessionId: ses.SessionId, Metadata: map[string]string{"k": "w"}})
		}},
		{"ListMessages", 1, func() { a.history(ses.SessionId) }},
		{"CloseSession", 1, func() { a.sessions.CloseSession(a.ctx(), &pb.CloseSessionRequest{SessionId: ses.SessionId}) }},
		{"SendChatbotMessage", 2, func() {
			a.chat.SendChatbotMessage(a.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "bot_plain", From: "api", To: "u5"})
		}},
	}
	for _, c := range cases {
		before := trips.Count()
		c.call()
		if got := trips.Count() - before; got != c.want {
			t.Errorf("%s: %d round trips, want %d", c.rpc, got, c.want)
		} else {
			t.Logf("%s: %d round trip(s)", c.rpc, got)
		}
	}
}

// errorInfo returns the ErrorInfo detail of err's status, or nil.
func errorInfo(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// A ChatReceive that the backend breaks tells its client how to carry on:
// resume the listener, which lives on in Redis, by its conversation_id,
// said in the message and in ErrorInfo's metadata; retrying "with the same
// idempotency key", as other calls are told, means nothing to a wait.
func TestChatReceiveBrokenByAnOutageSaysHowToResume(t *testing.T) {
	t.Parallel()
	var proxy *redistest.Proxy
	cl := startClusterVia(t, 1, func(_ int, addr string) string {
		proxy = redistest.NewProxy(t, addr)
		return proxy.Addr
	})
	a := cl.replicas[0]
	st, w := a.receive(a.ctx(), &pb.ChatReceiveRequest{FromUser: "u1", TimeoutMinutes: 10})
	proxy.Cut()
	a.clk.Advance(11 * time.Minute) // the deadline: the stream must ask Redis
	_, err := st.Recv()
	wantStatus(t, err, codes.Unavailable, "BACKEND_UNAVAILABLE", "")
	if info := errorInfo(err); info.Metadata["conversation_id"] != w.ConversationId ||
		!strings.Contains(status.Convert(err).Message(), "resume with conversation_id "+w.ConversationId) {
		t.Fatalf("the stream ended with %v (metadata %v); want it to say to resume %s", err, info.Metadata, w.ConversationId)
	}

	// A new wait the outage breaks may or may not be registered.
	err = firstErr(a.chat.ChatReceive(a.ctx(), &pb.ChatReceiveRequest{FromUser: "u2"}))
	wantStatus(t, err, codes.Unavailable, "BACKEND_UNAVAILABLE", "")
	if id := errorInfo(err).Metadata["conversation_id"]; id == "" || !strings.Contains(status.Convert(err).Message(), "if that is NOT_FOUND, wait anew") {
		t.Fatalf("a new wait during the outage: %v", err)
	}

	// And resuming as told works once Redis is back.
	proxy.Restore()
	var res receiveStream
	waitFor(t, "the resume to be accepted", func() bool {
		s, err := a.chat.ChatReceive(a.ctx(), &pb.ChatReceiveRequest{ConversationId: w.ConversationId})
		if err == nil {
			if _, err = s.Recv(); err == nil {
				res = s
			}
		}
		return err == nil
	})
	if got := recvOrFail(t, res.Recv).GetError().GetErrorCode(); got != "timeout" {
		t.Fatalf("the resumed listener's outcome: %q, want timeout", got)
	}
}

// An API key's rate budget is one for the whole deployment: two replicas
// together allow what one would (they used to allow twice the burst).
func TestReplicasShareAKeysRateLimit(t *testing.T) {
	t.Parallel()
	const key = "limited-key-0123456789"
	cl := startClusterWith(t, 2, clusterOptions{server: []option{func(c *serverConfig) {
		c.APIKeys = append(c.APIKeys, server.APIKey{Name: "limited", Tenant: "t", Key: key, RatePerSecond: 1.0 / 3600, Burst: 3})
	}}})
	a, b := cl.replicas[0], cl.replicas[1]
	a.key, b.key = key, key
	get := func(ts *testServer) error {
		_, err := ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: "ses_x"})
		return err
	}
	for i, ts := range []*testServer{a, b, a} {
		if err := get(ts); status.Code(err) != codes.NotFound {
			t.Fatalf("call %d of the burst of 3: %v", i+1, err)
		}
	}
	wantStatus(t, get(b), codes.ResourceExhausted, "RATE_LIMITED", "")
	wantREST(t, a.rest("GET", "/v1/sessions/ses_x", nil), 429, "RATE_LIMITED")
}

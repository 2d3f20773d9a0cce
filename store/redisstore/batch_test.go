package redisstore

import (
	"context"
	"errors"
	"math/rand/v2"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/store"
)

// Posts queued together go to Redis as one script call, and each caller
// still gets its own answer: a new message, a replay, a refusal, or the
// failure of its own post alone.
func TestMergedPostsAnswerEachCallerOnItsOwn(t *testing.T) {
	s, c := newTestStore(t, Options{Prefix: "merge"})
	trips := &redistest.RoundTrips{}
	c.AddHook(trips)
	ctx := context.Background()
	open := func(user string) store.Session { return openTestSession(t, s, user) }
	a, b, closed, broken := open("a"), open("b"), open("c"), open("d")
	if _, err := s.CloseSession(ctx, "t", closed.ID); err != nil {
		t.Fatal(err)
	}
	// A record the script cannot read makes that post fail at run time.
	if err := c.HSet(ctx, s.sessionKey(broken.ID), "seq", "not a number").Err(); err != nil {
		t.Fatal(err)
	}

	key := store.Idempotency{Key: "k1", Fingerprint: "fp"}
	posts := []store.OutboundMessage{
		{Tenant: "t", SessionID: a.ID, Text: "first", Status: store.StatusDelivered, Idempotency: key},
		{Tenant: "t", SessionID: broken.ID, Text: "lost", Status: store.StatusDelivered},
		{Tenant: "t", SessionID: b.ID, Text: "to b", Status: store.StatusDelivered},
		{Tenant: "t", SessionID: a.ID, Text: "second", Status: store.StatusDelivered},
		{Tenant: "t", SessionID: closed.ID, Text: "late", Status: store.StatusDelivered},
		{Tenant: "other", SessionID: a.ID, Text: "not yours", Status: store.StatusDelivered},
		{Tenant: "t", SessionID: a.ID, Text: "first", Status: store.StatusDelivered, Idempotency: key},
	}
	batch, now := make([]*batchReq, len(posts)), s.now()
	for i, m := range posts {
		var err error
		if batch[i], err = s.postCall(m, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := postScript.Load(ctx, c).Err(); err != nil {
		t.Fatal(err)
	}
	scripts, before := trips.Scripts(), trips.Count()
	s.batch.send(batch)
	if n, rt := trips.Scripts()-scripts, trips.Count()-before; n != 1 || rt != 1 {
		t.Fatalf("%d posts went as %d script calls in %d round trips, want 1 in 1", len(posts), n, rt)
	}

	type answer struct {
		msg      store.Message
		replayed bool
		err      error
	}
	got := make([]answer, len(posts))
	for i, r := range batch {
		got[i].msg, got[i].replayed, got[i].err = postAnswer(r.val, r.err, posts[i], now)
	}
	for i, want := range []struct {
		seq uint64
		err error
	}{{1, nil}, {0, store.ErrUnavailable}, {1, nil}, {2, nil}, {0, store.ErrSessionClosed}, {0, store.ErrSessionNotFound}, {1, nil}} {
		if !errors.Is(got[i].err, want.err) || got[i].msg.Seq != want.seq {
			t.Errorf("post %d (%q): seq %d, error %v; want seq %d, error %v", i, posts[i].Text, got[i].msg.Seq, got[i].err, want.seq, want.err)
		}
	}
	if !got[6].replayed || got[6].msg.ID != got[0].msg.ID || got[0].replayed {
		t.Errorf("the repeated key: replayed=%v id %s; want a replay of %s", got[6].replayed, got[6].msg.ID, got[0].msg.ID)
	}

	// The history holds exactly what the callers were told, once each.
	hist, err := s.ListMessages(ctx, "t", a.ID, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	var ids, texts []string
	for _, m := range hist {
		ids, texts = append(ids, m.ID), append(texts, m.Text)
	}
	if want := []string{got[0].msg.ID, got[3].msg.ID}; !reflect.DeepEqual(ids, want) || !reflect.DeepEqual(texts, []string{"first", "second"}) {
		t.Errorf("session a's history: %v %q; want %v [first second]", ids, texts, want)
	}
	ses, err := s.GetSession(ctx, "t", a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ses.LastMessageID != got[3].msg.ID {
		t.Errorf("session a's last message %s, want %s", ses.LastMessageID, got[3].msg.ID)
	}
	// The next post continues the sequence: the merged call saved the record.
	next, _, err := s.AppendOutbound(ctx, store.OutboundMessage{Tenant: "t", SessionID: a.ID, Text: "third", Status: store.StatusDelivered})
	if err != nil || next.Seq != 3 {
		t.Errorf("the post after the merged call: seq %d, %v; want seq 3", next.Seq, err)
	}
}

// A merged call that adds more messages to a session than its history
// holds trims it once, to exactly the limit, and saves the record's
// counters as the integers they are.
func TestMergedPostsKeepTheHistoryLimit(t *testing.T) {
	s, c := newTestStore(t, Options{Prefix: "trim", Options: store.Options{HistoryLimit: 3}})
	ctx := context.Background()
	ses := openTestSession(t, s, "u")
	if err := postScript.Load(ctx, c).Err(); err != nil {
		t.Fatal(err)
	}
	texts := []string{"m1", "m2", "m3", "m4", "m5"}
	batch, now := make([]*batchReq, len(texts)), s.now()
	var err error
	for i, text := range texts {
		if batch[i], err = s.postCall(store.OutboundMessage{Tenant: "t", SessionID: ses.ID, Text: text, Status: store.StatusDelivered}, now); err != nil {
			t.Fatal(err)
		}
	}
	s.batch.send(batch)
	var last store.Message
	for i, r := range batch {
		if last, _, err = postAnswer(r.val, r.err, store.OutboundMessage{SessionID: ses.ID}, now); err != nil || last.Seq != uint64(i+1) {
			t.Fatalf("post %d: seq %d, %v", i, last.Seq, err)
		}
	}
	hist, err := s.ListMessages(ctx, "t", ses.ID, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range hist {
		got = append(got, m.Text)
	}
	if want := texts[2:]; !reflect.DeepEqual(got, want) {
		t.Errorf("history %q, want the last 3: %q", got, want)
	}
	if n := c.XLen(ctx, s.sessionSlot(ses.ID)+"h:"+ses.ID).Val(); n != 3 {
		t.Errorf("history stream holds %d entries, want 3", n)
	}
	rec := c.HGetAll(ctx, s.sessionKey(ses.ID)).Val()
	for _, f := range []string{"seq", "lms", "la", "ex", "v", "gx"} {
		if _, err := strconv.ParseInt(rec[f], 10, 64); err != nil {
			t.Errorf("record field %s = %q, want an integer", f, rec[f])
		}
	}
	if rec["seq"] != "5" || rec["lid"] != last.ID {
		t.Errorf("record seq %s, lid %s; want the fifth post's", rec["seq"], rec["lid"])
	}
}

// Only calls of one script, group and shared arguments merge, in order.
func TestMergeGroupsCallsByScriptGroupAndSharedArgs(t *testing.T) {
	call := func(sc *redis.Script, group string, args ...any) *batchReq {
		return &batchReq{sc: sc, keys: []string{"k"}, group: group, common: 1, args: args}
	}
	other := redis.NewScript("return 1")
	batch := []*batchReq{
		call(postScript, "x", 1, "a"),
		call(postScript, "y", 1, "b"),
		call(postScript, "x", 1, "c"),
		call(other, "x", 1, "d"),
		call(postScript, "x", 2, "e"),                              // shared arg differs
		{sc: postScript, keys: []string{"k"}, args: []any{1, "f"}}, // not mergeable
		call(postScript, "x", 2, "g"),
	}
	var got [][]any
	for _, u := range merge(batch) {
		_, args := u.call()
		got = append(got, args)
	}
	want := [][]any{{1, "a", "c"}, {1, "b"}, {1, "d"}, {2, "e", "g"}, {1, "f"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("units' args %v, want %v", got, want)
	}
}

// An answer of the wrong shape is an error for its callers, not a panic.
func TestMalformedPostAnswersAreErrors(t *testing.T) {
	ctx := context.Background()
	m := store.OutboundMessage{Tenant: "t", SessionID: "s"}
	for _, v := range []any{
		nil, []any{}, []any{"OK"}, []any{[]any{"OK"}}, []any{int64(1)}, int64(1), "OK",
		"msg_1 1 api", "msg_1 one api api", "msg_1", "",
	} {
		if _, _, err := postAnswer(v, nil, m, 0); err == nil {
			t.Errorf("answer %#v: no error", v)
		}
	}
	answer := func(v any) *redis.Cmd {
		cmd := redis.NewCmd(ctx)
		cmd.SetVal(v)
		return cmd
	}
	// A merged call answered with fewer replies than calls, or with no
	// array, fails each call.
	for _, v := range []any{[]any{"x"}, "x"} {
		u := unit{{group: "g"}, {group: "g"}}
		u.deliver(answer(v))
		for i, r := range u {
			if r.err == nil {
				t.Errorf("calls of 2 answered by %#v: call %d got no error", v, i)
			}
		}
	}
}

// slowScript holds Redis for ARGV[1] milliseconds, then counts its call in
// KEYS[1]: a pipeline in flight for as long as a test needs.
var slowScript = newScript(`
local t = redis.call('TIME')
local start = t[1] * 1000 + t[2] / 1000
repeat
  t = redis.call('TIME')
until t[1] * 1000 + t[2] / 1000 - start >= tonumber(ARGV[1])
return redis.call('INCR', KEYS[1])
`)

// settled reports whether the batcher is back at rest: no leader, and no
// call left in its queue that anyone waits for.
func (b *batcher) settled() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.leaders == 0 && b.popLocked() == nil
}

func (b *batcher) queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, r := range b.queue {
		if r.state != abandoned {
			n++
		}
	}
	return n
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A caller that gives up while its call is queued gets its ctx's error at
// once, and the call is never sent; one that gives up while its call is in
// a pipeline gets it at once too, and the call runs exactly once. Either
// way the batcher comes back to rest and serves the next call.
func TestBatcherCallerCancelledWhileQueuedOrInFlight(t *testing.T) {
	s, c := newTestStore(t, Options{Prefix: "cancel"})
	b := s.batch
	ctx := context.Background()
	count := func(key string) int64 { n, _ := c.Get(ctx, key).Int64(); return n }

	// Two slow calls take both leads.
	var leaders sync.WaitGroup
	for range maxLeaders {
		leaders.Go(func() {
			if _, err := b.run(ctx, slowScript, []string{"lead"}, 300); err != nil {
				t.Error(err)
			}
		})
	}
	waitUntil(t, "both leads are taken", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.leaders == maxLeaders })

	// One queued caller gives up; another stays.
	gone, cancel := context.WithCancel(ctx)
	res := make(chan error, 1)
	go func() { _, err := b.run(gone, slowScript, []string{"withdrawn"}, 0); res <- err }()
	waitUntil(t, "the first call is queued", func() bool { return b.queued() == 1 })
	stays := make(chan error, 1)
	go func() { _, err := b.run(ctx, slowScript, []string{"stays"}, 0); stays <- err }()
	waitUntil(t, "the second call is queued", func() bool { return b.queued() == 2 })
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("the withdrawn call answered %v, want context.Canceled", err)
	}
	leaders.Wait()
	if err := <-stays; err != nil {
		t.Fatalf("the queued call that stayed: %v", err)
	}
	waitUntil(t, "the batcher is at rest", b.settled)
	if n := count("withdrawn"); n != 0 {
		t.Errorf("the withdrawn call ran %d times, want never", n)
	}

	// A call in flight when its caller gives up: the caller is answered
	// at once, and the call still runs once.
	for range maxLeaders {
		leaders.Go(func() { _, _ = b.run(ctx, slowScript, []string{"lead"}, 100) })
	}
	waitUntil(t, "both leads are taken", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.leaders == maxLeaders })
	// The first queued call will lead the next pipeline; the second rides
	// in it, which stays in flight long enough for the cancel below to
	// land inside it on a loaded machine.
	leaders.Go(func() { _, _ = b.run(ctx, slowScript, []string{"lead"}, 2000) })
	waitUntil(t, "the next leader is queued", func() bool { return b.queued() == 1 })
	inflight, cancel2 := context.WithCancel(ctx)
	go func() { _, err := b.run(inflight, slowScript, []string{"inflight"}, 0); res <- err }()
	waitUntil(t, "the call is queued", func() bool { return b.queued() == 2 })
	waitUntil(t, "the call is taken into a pipeline", func() bool { return b.queued() == 0 })
	cancel2()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the in-flight call answered %v, want context.Canceled", err)
		}
	case <-time.After(200 * time.Millisecond):
		t.Fatal("the caller of an in-flight call waited for its pipeline after giving up")
	}
	leaders.Wait()
	waitUntil(t, "the batcher is at rest", b.settled)
	waitUntil(t, "the in-flight call ran", func() bool { return count("inflight") == 1 })
	if _, err := b.run(ctx, slowScript, []string{"after"}, 0); err != nil {
		t.Fatalf("a call after the cancellations: %v", err)
	}
}

// A caller handed the lead after it gave up passes the lead on: to the
// next queued call, or, with none, back to the batcher.
func TestBatcherLeadHandedToAGoneCallerPassesOn(t *testing.T) {
	b := newBatcher(nil)
	b.leaders = maxLeaders
	gone := &batchReq{state: leading, wake: make(chan struct{}, 1)}
	next := &batchReq{state: queued, wake: make(chan struct{}, 1)}
	b.queue = []*batchReq{{state: abandoned}, next}
	b.withdraw(gone)
	select {
	case <-next.wake:
	default:
		t.Fatal("the next queued call was not woken")
	}
	if next.state != leading || b.leaders != maxLeaders || gone.state != abandoned {
		t.Fatalf("next %v, leaders %d, gone %v; want next leading, leaders unchanged", next.state, b.leaders, gone.state)
	}
	b.withdraw(next)
	if b.leaders != maxLeaders-1 || len(b.queue) != 0 {
		t.Fatalf("with nobody queued: leaders %d, queue %d; want %d and empty", b.leaders, len(b.queue), maxLeaders-1)
	}
}

// Callers giving up at random points of the batcher's life — queued,
// handed the lead, in flight, answered — never wedge it: every caller that
// stays is answered, the batcher returns to rest, and the next call runs.
func TestBatcherSurvivesACancellationStorm(t *testing.T) {
	s, c := newTestStore(t, Options{Prefix: "storm"})
	b := s.batch
	ctx := context.Background()
	var wg sync.WaitGroup
	var kept, answered atomic.Int64
	for i := range 2000 {
		wg.Go(func() {
			callCtx, cancel := context.WithTimeout(ctx, time.Duration(rand.IntN(3000))*time.Microsecond)
			defer cancel()
			if i%4 == 0 {
				callCtx = ctx // a quarter stay to the end
				kept.Add(1)
			}
			if _, err := b.run(callCtx, slowScript, []string{"storm"}, 0); err == nil {
				answered.Add(1)
			} else if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("call %d: %v", i, err)
			}
		})
	}
	stormOver := make(chan struct{})
	go func() { wg.Wait(); close(stormOver) }()
	select {
	case <-stormOver:
	case <-time.After(30 * time.Second):
		t.Fatal("the batcher is wedged: callers that never gave up got no answer")
	}
	if answered.Load() < kept.Load() {
		t.Errorf("%d calls answered, fewer than the %d that never gave up", answered.Load(), kept.Load())
	}
	waitUntil(t, "the batcher is at rest", b.settled)
	done := make(chan error, 1)
	go func() { _, err := b.run(ctx, slowScript, []string{"after"}, 0); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the batcher is wedged: a call after the storm got no answer")
	}
	ran, _ := c.Get(ctx, "storm").Int64()
	if ran < answered.Load() || ran > 2000 {
		t.Errorf("%d calls ran; %d were answered of 2000", ran, answered.Load())
	}
}

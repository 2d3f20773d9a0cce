package redisstore

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/store"
)

func TestHubUnsubscribesOnlyIdleChannels(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	h := newHub(c, slog.New(slog.NewTextHandler(io.Discard, nil)), 50*time.Millisecond, 20*time.Millisecond)
	t.Cleanup(h.close)
	numsub := func(ch string) int64 {
		n, err := c.PubSubNumSub(ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n[ch]
	}
	waitSweeps := func(n int64) {
		target := h.sweeps.Load() + n
		deadline := time.Now().Add(10 * time.Second)
		for h.sweeps.Load() < target {
			if time.Now().After(deadline) {
				t.Fatal("the hub stopped sweeping")
			}
			time.Sleep(time.Millisecond) // polling the sweep counter, with a deadline
		}
	}

	kept, err := h.subscribe(ctx, "kept", store.Topic{Tenant: "t", SessionID: "kept"})
	if err != nil {
		t.Fatal(err)
	}
	left, err := h.subscribe(ctx, "left", store.Topic{Tenant: "t", SessionID: "left"})
	if err != nil {
		t.Fatal(err)
	}
	left.Close()
	waitSweeps(5) // well past the idle time
	if numsub("left") != 0 {
		t.Fatal("an idle channel was never unsubscribed")
	}
	if numsub("kept") != 1 {
		t.Fatal("a channel with a subscriber was unsubscribed")
	}
	// A channel that was dropped works again when wanted again.
	again, err := h.subscribe(ctx, "left", store.Topic{Tenant: "t", SessionID: "left"})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := c.Publish(ctx, "left", "end").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-again.Ready():
		if evs, _ := again.Next(); len(evs) != 1 || evs[0].Kind != store.EventSessionEnded {
			t.Fatalf("events = %+v", evs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event on the resubscribed channel")
	}
	kept.Close()
}

// On a Cluster, Redis unsubscribes a channel whose slot moves to another
// shard (SUNSUBSCRIBE); the hub subscribes it on its new shard, tells its
// subscribers to resync, and events published there reach them.
func TestHubFollowsASlotToItsNewShard(t *testing.T) {
	t.Parallel()
	rc := redistest.StartCluster(t)
	c := rc.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := newHub(c, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Minute, time.Minute)
	t.Cleanup(h.close)
	const name = "{moving}:ev:s:t:x"
	sub, err := h.subscribe(ctx, name, store.Topic{Tenant: "t", SessionID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	from, err := rc.Master(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	masters, err := rc.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	to := masters[0]
	if to == from {
		to = masters[1]
	}
	slot, err := c.ClusterKeySlot(ctx, name).Result()
	if err != nil || keySlot(name) != int(slot) {
		t.Fatalf("CLUSTER KEYSLOT %s = %d, %v; keySlot says %d", name, slot, err, keySlot(name))
	}
	if err := rc.MoveSlot(ctx, int(slot), from, to); err != nil {
		t.Fatal(err)
	}
	next := func() ([]store.Event, bool) { t.Helper(); return nextEvents(ctx, t, sub) }
	if _, resync := next(); !resync {
		t.Fatal("the subscriber was not told to resync after its slot moved")
	}
	if err := c.SPublish(ctx, name, "end").Err(); err != nil {
		t.Fatal(err)
	}
	if evs, _ := next(); len(evs) != 1 || evs[0].Kind != store.EventSessionEnded {
		t.Fatalf("events = %+v", evs)
	}
	h.cmdMu.Lock()
	_, onNew := h.links[to.Addr]
	h.cmdMu.Unlock()
	if !onNew {
		t.Fatalf("no link to the slot's new master %s", to.Addr)
	}
}

// On a Cluster the hub holds one pub/sub connection per shard, however
// many channels it subscribes, each on the master serving its slot.
func TestHubHoldsOneConnectionPerShard(t *testing.T) {
	t.Parallel()
	rc := redistest.SharedCluster(t)
	ctx := context.Background()
	name := fmt.Sprintf("hub-shards-%d", time.Now().UnixNano())
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: rc.Addrs(), ClientName: name})
	t.Cleanup(func() { _ = c.Close() })
	h := newHub(c, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Minute, time.Minute)
	t.Cleanup(h.close)
	const channels = 300
	for i := range channels {
		ch := fmt.Sprintf("%s:{%d}:ev:s:t:x", name, i)
		sub, err := h.subscribe(ctx, ch, store.Topic{Tenant: "t", SessionID: fmt.Sprint(i)})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
	}
	masters, err := rc.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range masters {
		list, err := m.Client(t).ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		conns, ssub := 0, 0
		for _, line := range strings.Split(list, "\n") {
			if strings.Contains(line, "name="+name+" ") && strings.Contains(line, " flags=P ") {
				conns++
				f := strings.Fields(line[strings.Index(line, " ssub="):])
				ssub, _ = strconv.Atoi(strings.TrimPrefix(f[0], "ssub="))
			}
		}
		if conns != 1 || ssub < channels/6 {
			t.Errorf("master %s: %d pub/sub connections of ours, the last with %d shard channels; want 1 with about a third of %d", m.Addr, conns, ssub, channels)
		}
	}
}

// When the client's new connections go to another node (a Sentinel
// failover moved the master), the hub's link, still on the old node, moves
// there too, and its subscribers resync: the old node may keep its pub/sub
// clients and never relay what the new master publishes.
func TestHubFollowsTheMasterToAnotherNode(t *testing.T) {
	t.Parallel()
	oldMaster, newMaster := redistest.Start(t), redistest.Start(t)
	var master atomic.Pointer[string]
	master.Store(&oldMaster.Addr)
	c := redis.NewClient(&redis.Options{
		Addr: "the master", // the dialer decides, as a Sentinel client's does
		Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, *master.Load())
		},
		ConnMaxIdleTime: time.Millisecond, // every ping dials anew
	})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := newHub(c, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Minute, time.Minute)
	t.Cleanup(h.close)
	const name = "{moving}:ev:s:t:x"
	sub, err := h.subscribe(ctx, name, store.Topic{Tenant: "t", SessionID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	master.Store(&newMaster.Addr)
	next := func() ([]store.Event, bool) { t.Helper(); return nextEvents(ctx, t, sub) }
	if _, resync := next(); !resync {
		t.Fatal("the subscriber was not told to resync after the master moved")
	}
	if err := newMaster.Client(t).Publish(ctx, name, "end").Err(); err != nil {
		t.Fatal(err)
	}
	if evs, _ := next(); len(evs) != 1 || evs[0].Kind != store.EventSessionEnded {
		t.Fatalf("events = %+v", evs)
	}
}

// nextEvents waits for sub's next events, until ctx ends.
func nextEvents(ctx context.Context, t *testing.T, sub *store.Subscription) ([]store.Event, bool) {
	t.Helper()
	select {
	case <-sub.Ready():
		return sub.Next()
	case <-ctx.Done():
		t.Fatal("nothing reached the subscriber")
		return nil, false
	}
}

package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/redistest"
)

// benchCluster measures chatrelay on a private Redis Cluster of three
// masters with a replica each: PostMessage throughput over sessions spread
// across the shards, with each master's CPU per post; how many nodes each
// published event reaches (SPUBLISH keeps it in its shard, where PUBLISH
// would reach every node); and watch fan-out across two replicas. A machine
// whose cores the masters share cannot show throughput growing with shards;
// CPU per post per shard says what more shards would carry.
func benchCluster(ctx context.Context, cfg config) ([]row, error) {
	dir, err := os.MkdirTemp("", "chatbench-cluster")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	rc, err := redistest.LaunchCluster(dir)
	if err != nil {
		return nil, err
	}
	defer rc.Kill()
	posts, err := benchClusterPosts(ctx, cfg, rc)
	if err != nil {
		return nil, err
	}
	reach, err := benchClusterReach(ctx, rc, posts)
	if err != nil {
		return nil, err
	}
	fan := cfg
	fan.redisURL, fan.fanoutKs = rc.URL(), []int{1000}
	if cfg.short {
		fan.fanoutKs = []int{100}
	}
	fanout, err := benchFanout(ctx, fan)
	if err != nil {
		return nil, err
	}
	for i := range fanout {
		fanout[i].name += ", on the cluster"
	}
	return append([]row{posts.row, reach}, fanout...), nil
}

// clusterPosts is the post case's row, and the event counts of the
// cluster bus it caused.
type clusterPosts struct {
	row
	published int64 // posts, each publishing one event
	shardMsgs int64 // SPUBLISH messages the nodes received over the bus
	shards    int
}

func benchClusterPosts(ctx context.Context, cfg config, rc *redistest.Cluster) (clusterPosts, error) {
	a, err := startChild("redis", rc.URL())
	if err != nil {
		return clusterPosts{}, err
	}
	defer a.stop()
	const sessions = 300
	sids := make([]string, sessions)
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	for i := range sids {
		ses, err := a.sessions.CreateSession(ctx, &pb.CreateSessionRequest{User: fmt.Sprintf("cluster-%s-%d", run, i)})
		if err != nil {
			return clusterPosts{}, err
		}
		sids[i] = ses.Session.SessionId
	}
	masters, err := rc.Masters(ctx)
	if err != nil {
		return clusterPosts{}, err
	}
	cpuBefore, err := nodeStats(ctx, masters, "cpu", "used_cpu_sys", "used_cpu_user")
	if err != nil {
		return clusterPosts{}, err
	}
	busBefore, err := nodeStats(ctx, rc.Nodes, "cluster", "cluster_stats_messages_publishshard_received")
	if err != nil {
		return clusterPosts{}, err
	}
	var sent atomic.Int64 // every post, the warm-up's too: the Redis figures span them all
	req := func(i int64) *pb.PostMessageRequest {
		return &pb.PostMessageRequest{SessionId: sids[i%sessions], Message: "Your order has shipped."}
	}
	rec, elapsed, cpu := closedLoopOn(ctx, a, cfg.concurrency, cfg.duration, func(ctx context.Context) error {
		_, err := a.chat.PostMessage(ctx, req(sent.Add(1)))
		return err
	})
	cpuAfter, err := nodeStats(ctx, masters, "cpu", "used_cpu_sys", "used_cpu_user")
	if err != nil {
		return clusterPosts{}, err
	}
	busAfter, err := nodeStats(ctx, rc.Nodes, "cluster", "cluster_stats_messages_publishshard_received")
	if err != nil {
		return clusterPosts{}, err
	}
	n := sent.Load()
	// The posts each master served: the sessions are posted to in turn.
	served := make([]int64, len(masters))
	for i, sid := range sids {
		m, err := rc.Master(ctx, "{"+strings.Split(strings.TrimPrefix(sid, "ses_"), "-")[0]+"}")
		if err != nil {
			return clusterPosts{}, err
		}
		k := slices.Index(masters, m)
		if k < 0 {
			return clusterPosts{}, fmt.Errorf("session %s is on %s, not a master", sid, m.Addr)
		}
		served[k] += n / sessions
		if int64(i) < n%sessions {
			served[k]++
		}
	}
	var per []string
	for i := range masters {
		per = append(per, fmt.Sprintf("%.1fµs (%d posts)", (cpuAfter[i]-cpuBefore[i])*1e6/float64(served[i]), served[i]))
	}
	r := rec.row(fmt.Sprintf("PostMessage over gRPC, %d sessions over %d shards", sessions, len(masters)), 0, elapsed)
	r.cpu = cpu
	r.rssBytes = a.rss()
	r.extra = "Redis CPU per post on its shard, by master: " + strings.Join(per, ", ") + ";"
	var shardMsgs float64
	for i := range rc.Nodes {
		shardMsgs += busAfter[i] - busBefore[i]
	}
	return clusterPosts{row: r, published: n, shardMsgs: int64(shardMsgs), shards: len(masters)}, nil
}

// benchClusterReach reports the nodes an event reaches: the node that runs
// the post, and those the cluster bus carries it to. chatrelay's events
// (SPUBLISH) are set against as many plain PUBLISHes, which is what they
// cost before sharded pub/sub.
func benchClusterReach(ctx context.Context, rc *redistest.Cluster, p clusterPosts) (row, error) {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: rc.Addrs()})
	defer cc.Close()
	before, err := nodeStats(ctx, rc.Nodes, "cluster", "cluster_stats_messages_publish_received")
	if err != nil {
		return row{}, err
	}
	const publishes = 1000
	for i := range publishes {
		if err := cc.Publish(ctx, fmt.Sprintf("bench:{%d}:ev", i), "x").Err(); err != nil {
			return row{}, err
		}
	}
	after, err := nodeStats(ctx, rc.Nodes, "cluster", "cluster_stats_messages_publish_received")
	if err != nil {
		return row{}, err
	}
	var plain float64
	for i := range rc.Nodes {
		plain += after[i] - before[i]
	}
	sharded := 1 + float64(p.shardMsgs)/float64(p.published)
	plainReach := 1 + plain/publishes
	per := len(rc.Nodes) / p.shards // nodes per shard: a master and its replicas
	return row{name: "nodes each published event reaches", extra: fmt.Sprintf(
		"SPUBLISH (chatrelay's events, %d): %.2f nodes = %.2f shards; PUBLISH (%d): %.2f nodes = %.2f shards",
		p.published, sharded, sharded/float64(per), publishes, plainReach, plainReach/float64(per))}, nil
}

// nodeStats sums, for each node, the named fields of an INFO section (or
// of CLUSTER INFO, for section "cluster").
func nodeStats(ctx context.Context, nodes []*redistest.Server, section string, fields ...string) ([]float64, error) {
	out := make([]float64, len(nodes))
	for i, n := range nodes {
		c := redis.NewClient(&redis.Options{Addr: n.Addr})
		var text string
		var err error
		if section == "cluster" {
			text, err = c.ClusterInfo(ctx).Result()
		} else {
			text, err = c.Info(ctx, section).Result()
		}
		c.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.Addr, err)
		}
		for _, line := range strings.Split(text, "\r\n") {
			name, v, _ := strings.Cut(line, ":")
			for _, f := range fields {
				if name == f {
					x, _ := strconv.ParseFloat(v, 64)
					out[i] += x
				}
			}
		}
	}
	return out, nil
}

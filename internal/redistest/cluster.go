package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a private Redis Cluster on loopback: three masters with one
// replica each, every node a Server with its own directory. Roles change
// when a master fails; Master asks the cluster who serves a key now.
type Cluster struct {
	Nodes []*Server
}

// The cluster's shape, and how long a master may be silent before its
// replica takes over (cluster-node-timeout): short, so that failover tests
// are quick, and long enough that a loaded test machine does not fail
// healthy masters over.
const (
	clusterMasters  = 3
	clusterNodes    = 2 * clusterMasters
	nodeTimeout     = 2 * time.Second
	clusterBusShift = 10000 // the cluster bus listens on port+10000
)

// StartCluster starts a Redis Cluster and registers its teardown; it skips
// or fails as Start does when redis-server is not installed.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	requireRedis(t)
	c, err := LaunchCluster(t.TempDir())
	if err != nil {
		t.Fatalf("starting a redis cluster: %v", err)
	}
	t.Cleanup(c.Kill)
	return c
}

// LaunchCluster starts six cluster-enabled redis-servers with their files
// under dir, joins them with redis-cli --cluster create as three masters
// with a replica each, and waits until every slot is served and every
// replica in sync. The caller kills it.
func LaunchCluster(dir string) (*Cluster, error) {
	c := &Cluster{}
	for i := range clusterNodes {
		d := filepath.Join(dir, fmt.Sprintf("node%d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			c.Kill()
			return nil, err
		}
		s, err := Launch(d, func(s *Server) {
			s.pickPort = freeClusterPort
			s.extra = []string{"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(d, "nodes.conf"),
				"--cluster-node-timeout", fmt.Sprint(nodeTimeout.Milliseconds())}
		})
		if err != nil {
			c.Kill()
			return nil, err
		}
		c.Nodes = append(c.Nodes, s)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		c.Kill()
		return nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		c.Kill()
		return nil, err
	}
	return c, nil
}

// freeClusterPort finds a free port whose cluster bus port is free too.
func freeClusterPort() (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		if port+clusterBusShift > 65535 {
			l.Close()
			// Ask for a port below the ephemeral range instead.
			port = 20000 + int(time.Now().UnixNano()%20000)
			if l, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
				continue
			}
		}
		bus, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+clusterBusShift))
		l.Close()
		if err != nil {
			continue
		}
		bus.Close()
		return port, nil
	}
	return 0, errors.New("no free port with a free cluster bus port")
}

// Addrs are the nodes' addresses.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// URL is the cluster in chatrelay's URL form: every node a seed.
func (c *Cluster) URL() string {
	q := url.Values{}
	for _, a := range c.Addrs()[1:] {
		q.Add("addr", a)
	}
	return "redis://" + c.Nodes[0].Addr + "?" + q.Encode()
}

// Client returns a cluster client, closed at cleanup.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Kill stops every node at once.
func (c *Cluster) Kill() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// Node is the Server listening on addr, or nil.
func (c *Cluster) Node(addr string) *Server {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// Masters are the nodes serving slots now.
func (c *Cluster) Masters(ctx context.Context) ([]*Server, error) {
	slots, err := c.slots(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Server
	for _, s := range slots {
		if n := c.Node(s.Nodes[0].Addr); n != nil && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// Master is the node that serves key's slot now.
func (c *Cluster) Master(ctx context.Context, key string) (*Server, error) {
	n := c.live()
	if len(n) == 0 {
		return nil, errors.New("no live node")
	}
	cl := n[0].dial()
	defer cl.Close()
	slot, err := cl.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return nil, err
	}
	slots, err := c.slots(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range slots {
		if int64(s.Start) <= slot && slot <= int64(s.End) {
			if m := c.Node(s.Nodes[0].Addr); m != nil {
				return m, nil
			}
		}
	}
	return nil, fmt.Errorf("no master serves slot %d", slot)
}

// slots is CLUSTER SLOTS as a live node sees it.
func (c *Cluster) slots(ctx context.Context) ([]redis.ClusterSlot, error) {
	var err error
	for _, n := range c.live() {
		cl := n.dial()
		var slots []redis.ClusterSlot
		slots, err = cl.ClusterSlots(ctx).Result()
		cl.Close()
		if err == nil {
			return slots, nil
		}
	}
	return nil, fmt.Errorf("no node answered CLUSTER SLOTS: %v", err)
}

func (c *Cluster) live() []*Server {
	var out []*Server
	for _, n := range c.Nodes {
		if n.alive() {
			out = append(out, n)
		}
	}
	return out
}

// WaitHealthy waits until every live node sees the cluster as ok with all
// 16384 slots served, and every live replica is in sync with its master:
// after LaunchCluster, and after a failover has promoted a replica.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	var last error
	if poll(ctx, func() (bool, error) { last = c.healthy(ctx); return last == nil, nil }) != nil {
		return fmt.Errorf("redis cluster not healthy: %v", last)
	}
	return nil
}

func (c *Cluster) healthy(ctx context.Context) error {
	for _, n := range c.live() {
		if err := n.healthyNode(ctx); err != nil {
			return fmt.Errorf("%s: %w", n.Addr, err)
		}
	}
	return nil
}

func (s *Server) healthyNode(ctx context.Context) error {
	cl := s.dial()
	defer cl.Close()
	info, err := cl.ClusterInfo(ctx).Result()
	if err != nil {
		return err
	}
	if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
		return errors.New("cluster state not ok")
	}
	return inSync(ctx, cl)
}

// inSync is nil unless cl's server is a replica not (yet) in sync.
func inSync(ctx context.Context, cl *redis.Client) error {
	repl, err := cl.Info(ctx, "replication").Result()
	if err != nil {
		return err
	}
	if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
		return errors.New("replica not in sync")
	}
	return nil
}

// shared is the Cluster a test binary's tests share (SharedCluster).
var shared struct {
	once sync.Once
	c    *Cluster
	dir  string
	err  error
}

// SharedCluster is one Cluster for all the tests of a test binary that ask
// for it, started by the first: each test keeps to its own key prefix. The
// package's TestMain stops it with StopShared.
func SharedCluster(t testing.TB) *Cluster {
	t.Helper()
	requireRedis(t)
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "redistest-cluster"); shared.err == nil {
			shared.c, shared.err = LaunchCluster(shared.dir)
		}
	})
	if shared.err != nil {
		t.Fatalf("starting the shared redis cluster: %v", shared.err)
	}
	return shared.c
}

// StopShared kills the shared Cluster, if one was started, and removes its
// files.
func StopShared() {
	if shared.c != nil {
		shared.c.Kill()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
}

// WaitReplicated waits until every replica of master has acknowledged all
// it has written: killing master then loses nothing. (Redis replicates
// asynchronously; without this wait a failover may lose the writes the
// replica had not received yet.)
func WaitReplicated(ctx context.Context, master *Server) error {
	cl := master.dial()
	defer cl.Close()
	err := poll(ctx, func() (bool, error) {
		repl, err := cl.Info(ctx, "replication").Result()
		return err == nil && caughtUp(repl), err
	})
	if err != nil {
		return fmt.Errorf("replicas of %s did not catch up: %w", master.Addr, err)
	}
	return nil
}

// caughtUp reads INFO replication of a master: is every replica online at
// the master's offset?
func caughtUp(repl string) bool {
	var offset string
	replicas := 0
	for _, line := range strings.Split(repl, "\r\n") {
		if v, ok := strings.CutPrefix(line, "master_repl_offset:"); ok {
			offset = v
		}
	}
	for _, line := range strings.Split(repl, "\r\n") {
		if !strings.HasPrefix(line, "slave") || !strings.Contains(line, "state=") {
			continue
		}
		replicas++
		if !strings.Contains(line, "state=online") || !strings.Contains(line, ",offset="+offset+",") {
			return false
		}
	}
	return replicas > 0 && offset != ""
}

// MoveSlot moves an empty slot from one master to another, as resharding
// does (CLUSTER SETSLOT … IMPORTING, MIGRATING, then NODE on every master),
// and waits until every live node sees to serving it.
func (c *Cluster) MoveSlot(ctx context.Context, slot int, from, to *Server) error {
	fc, tc := from.dial(), to.dial()
	defer fc.Close()
	defer tc.Close()
	fromID, err := fc.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		return err
	}
	toID, err := tc.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		return err
	}
	steps := []struct {
		c    *redis.Client
		args []any
	}{
		{tc, []any{"CLUSTER", "SETSLOT", slot, "IMPORTING", fromID}},
		{fc, []any{"CLUSTER", "SETSLOT", slot, "MIGRATING", toID}},
		{tc, []any{"CLUSTER", "SETSLOT", slot, "NODE", toID}},
		{fc, []any{"CLUSTER", "SETSLOT", slot, "NODE", toID}},
	}
	for _, s := range steps {
		if err := s.c.Do(ctx, s.args...).Err(); err != nil {
			return fmt.Errorf("%v: %w", s.args, err)
		}
	}
	err = poll(ctx, func() (bool, error) {
		for _, n := range c.live() {
			cl := n.dial()
			slots, err := cl.ClusterSlots(ctx).Result()
			cl.Close()
			if err != nil {
				return false, err
			}
			for _, s := range slots {
				if s.Start <= slot && slot <= s.End && s.Nodes[0].Addr != to.Addr {
					return false, nil
				}
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("the nodes do not agree slot %d moved: %w", slot, err)
	}
	return nil
}

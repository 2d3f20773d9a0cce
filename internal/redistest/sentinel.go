package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel is a private Sentinel deployment on loopback: a master, its
// replica, and three sentinels (redis-sentinel, or redis-server
// --sentinel where Debian's package is missing) watching them as
// MasterName, any two agreeing.
type Sentinel struct {
	Data      []*Server // the first master and its replica
	Sentinels []*Server
}

// MasterName is the name the sentinels monitor the master by.
const MasterName = "mymaster"

// StartSentinel starts a Sentinel deployment and registers its teardown; it
// skips or fails as Start does when redis-server is not installed.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	requireRedis(t)
	s, err := LaunchSentinel(t.TempDir())
	if err != nil {
		t.Fatalf("starting redis with sentinels: %v", err)
	}
	t.Cleanup(s.Kill)
	return s
}

// LaunchSentinel starts the deployment with its files under dir and waits
// until the replica is in sync and every sentinel knows the replica and
// the other sentinels. The caller kills it.
func LaunchSentinel(dir string) (*Sentinel, error) {
	d := &Sentinel{}
	launch := func(name string, opt Option) (*Server, error) {
		sub := filepath.Join(dir, name)
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return nil, err
		}
		return Launch(sub, opt)
	}
	master, err := launch("master", func(*Server) {})
	if err != nil {
		return nil, err
	}
	d.Data = append(d.Data, master)
	_, port, _ := net.SplitHostPort(master.Addr)
	replica, err := launch("replica", func(s *Server) { s.extra = []string{"--replicaof", "127.0.0.1", port} })
	if err != nil {
		d.Kill()
		return nil, err
	}
	d.Data = append(d.Data, replica)
	for i := range 3 {
		s, err := launch(fmt.Sprintf("sentinel%d", i), func(s *Server) {
			s.sentinel = []string{
				fmt.Sprintf("sentinel monitor %s 127.0.0.1 %s 2", MasterName, port),
				"sentinel down-after-milliseconds " + MasterName + " 2000",
				"sentinel failover-timeout " + MasterName + " 10000",
			}
		})
		if err != nil {
			d.Kill()
			return nil, err
		}
		d.Sentinels = append(d.Sentinels, s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitHealthy(ctx, master); err != nil {
		d.Kill()
		return nil, err
	}
	return d, nil
}

// URL is the deployment in chatrelay's URL form: every sentinel, and the
// master's name.
func (d *Sentinel) URL() string {
	q := url.Values{"master_name": {MasterName}}
	for _, s := range d.Sentinels[1:] {
		q.Add("addr", s.Addr)
	}
	return "redis://" + d.Sentinels[0].Addr + "?" + q.Encode()
}

// SentinelAddrs are the sentinels' addresses.
func (d *Sentinel) SentinelAddrs() []string {
	out := make([]string, len(d.Sentinels))
	for i, s := range d.Sentinels {
		out[i] = s.Addr
	}
	return out
}

// Kill stops every process at once.
func (d *Sentinel) Kill() {
	for _, s := range append(d.Data, d.Sentinels...) {
		s.Kill()
	}
}

// Master is the data node the sentinels name as master now.
func (d *Sentinel) Master(ctx context.Context) (*Server, error) {
	sc := redis.NewSentinelClient(&redis.Options{Addr: d.Sentinels[0].Addr, MaxRetries: -1})
	defer sc.Close()
	addr, err := sc.GetMasterAddrByName(ctx, MasterName).Result()
	if err != nil {
		return nil, err
	}
	for _, s := range d.Data {
		if s.Addr == net.JoinHostPort(addr[0], addr[1]) {
			return s, nil
		}
	}
	return nil, fmt.Errorf("the sentinels name an unknown master %v", addr)
}

// Failover forces a failover (SENTINEL FAILOVER) and waits until the
// replica has been promoted, the old master follows it in sync, and every
// sentinel agrees. It returns the new master.
func (d *Sentinel) Failover(ctx context.Context) (*Server, error) {
	old, err := d.Master(ctx)
	if err != nil {
		return nil, err
	}
	sc := redis.NewSentinelClient(&redis.Options{Addr: d.Sentinels[0].Addr, MaxRetries: -1})
	defer sc.Close()
	if err := sc.Failover(ctx, MasterName).Err(); err != nil {
		return nil, fmt.Errorf("SENTINEL FAILOVER: %w", err)
	}
	next := d.Data[0]
	if next == old {
		next = d.Data[1]
	}
	return next, d.WaitHealthy(ctx, next)
}

// WaitHealthy waits until every sentinel names master, knows a replica and
// the two other sentinels, master says it is one, and every other live data
// node is its replica, in sync.
func (d *Sentinel) WaitHealthy(ctx context.Context, master *Server) error {
	var last error
	if poll(ctx, func() (bool, error) { last = d.healthy(ctx, master); return last == nil, nil }) != nil {
		return fmt.Errorf("sentinel deployment not healthy: %v", last)
	}
	return nil
}

func (d *Sentinel) healthy(ctx context.Context, master *Server) error {
	for _, s := range d.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second})
		m, err := sc.Master(ctx, MasterName).Result()
		sc.Close()
		if err != nil {
			return err
		}
		if net.JoinHostPort(m["ip"], m["port"]) != master.Addr || m["num-slaves"] == "0" || m["num-other-sentinels"] != "2" ||
			strings.Contains(m["flags"], "down") {
			return fmt.Errorf("sentinel %s sees %v", s.Addr, m)
		}
	}
	for _, s := range d.Data {
		if !s.alive() {
			continue
		}
		cl := s.dial()
		repl, err := cl.Info(ctx, "replication").Result()
		cl.Close()
		if err != nil {
			return err
		}
		_, port, _ := net.SplitHostPort(master.Addr)
		switch {
		case s == master && !strings.Contains(repl, "role:master"):
			return errors.New("the new master is not master yet")
		case s != master && (!strings.Contains(repl, "master_port:"+port+"\r") || !strings.Contains(repl, "master_link_status:up")):
			return fmt.Errorf("%s does not follow %s yet", s.Addr, master.Addr)
		}
	}
	return nil
}

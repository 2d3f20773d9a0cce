// Package redistest runs private redis-server instances for tests and the
// benchmark: each on a free loopback port, with its own data directory.
// Start (for tests) kills it at cleanup, and skips when redis-server is not
// installed unless CHATRELAY_REQUIRE_REDIS=1 (as in CI), where it fails.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a running (or stopped) private redis-server, or a
// redis-sentinel (see StartSentinel).
type Server struct {
	Addr string
	port int
	dir  string
	aof  bool
	// extra are more redis-server arguments: cluster mode, replicaof.
	extra []string
	// sentinel, when set, makes this a redis-sentinel whose config file
	// holds these lines after its port, directory and log.
	sentinel []string
	// pickPort finds a port to try; freePort unless set.
	pickPort func() (int, error)

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Option configures Start.
type Option func(*Server)

// WithAppendOnly persists writes to an append-only file in the server's
// directory, so Restart keeps the data.
func WithAppendOnly() Option { return func(s *Server) { s.aof = true } }

// Start starts a redis-server and registers its teardown.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	requireRedis(t)
	s, err := Launch(t.TempDir(), opts...)
	if err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	t.Cleanup(s.Kill)
	return s
}

// requireRedis skips t when redis-server is not installed, or fails it
// under CHATRELAY_REQUIRE_REDIS=1 (as in CI).
func requireRedis(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CHATRELAY_REQUIRE_REDIS") == "1" {
			t.Fatalf("redis-server is required (CHATRELAY_REQUIRE_REDIS=1) but not installed: %v", err)
		}
		t.Skip("redis-server is not installed; install it (apt-get install redis-server) to run the Redis tests")
	}
}

// Launch starts a redis-server keeping its files in dir. The caller kills
// it.
func Launch(dir string, opts ...Option) (*Server, error) {
	s := &Server{dir: dir, pickPort: freePort}
	for _, o := range opts {
		o(s)
	}
	var err error
	for range 5 { // a free port can be taken between finding and binding it
		if s.port, err = s.pickPort(); err != nil {
			continue
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		if err = s.start(); err == nil {
			return s, nil
		}
	}
	return nil, err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start() error {
	cmd, err := s.command()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("redis-server exited: %v\n%s", err, log)
		default:
		}
		// Ready when the server answering is this process: between
		// finding a free port and binding it, a parallel test may take it.
		if info, err := c.Info(context.Background(), "server").Result(); err == nil {
			if !strings.Contains(info, fmt.Sprintf("process_id:%d\r", cmd.Process.Pid)) {
				_ = cmd.Process.Kill()
				return fmt.Errorf("port %d answered by another redis-server", s.port)
			}
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return fmt.Errorf("redis-server on %s did not answer PING within 10s", s.Addr)
		}
		time.Sleep(5 * time.Millisecond) // polling for readiness, with a deadline
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	go func() { <-exited }()
	return nil
}

// command is the redis-server (or redis-sentinel) to run.
func (s *Server) command() (*exec.Cmd, error) {
	logfile := filepath.Join(s.dir, "redis.log")
	if s.sentinel != nil {
		// Sentinel rewrites its config file as it learns the deployment;
		// a restart keeps what it learnt.
		conf := filepath.Join(s.dir, "sentinel.conf")
		if _, err := os.Stat(conf); err != nil {
			lines := append([]string{"port " + strconv.Itoa(s.port), "bind 127.0.0.1", "dir " + s.dir, "logfile " + logfile}, s.sentinel...)
			if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
				return nil, err
			}
		}
		if _, err := exec.LookPath("redis-sentinel"); err == nil {
			return exec.Command("redis-sentinel", conf), nil
		}
		return exec.Command("redis-server", conf, "--sentinel"), nil
	}
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--save", "",
		"--dir", s.dir, "--logfile", logfile,
	}
	if s.aof {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	return exec.Command("redis-server", append(args, s.extra...)...), nil
}

// Client returns a client of this server, closed at cleanup.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// dial is a client of this server for the helpers' own checks: no
// retries, short timeouts. The caller closes it.
func (s *Server) dial() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second})
}

// alive reports whether the server runs (was not killed).
func (s *Server) alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Kill stops the server at once (SIGKILL). It is safe to call twice.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	// Wait until the port is free again, so a Restart can bind it.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", s.Addr, 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(5 * time.Millisecond) // polling for the port to close, with a deadline
	}
}

// Restart starts the server again on the same port and directory.
func (s *Server) Restart() error {
	s.Kill()
	if err := s.start(); err != nil {
		return fmt.Errorf("restarting redis-server: %w", err)
	}
	return nil
}

// RoundTrips is a go-redis hook that counts round trips: each command sent
// alone and each pipeline counts one. PING is not counted: it is the
// readiness probe, not the cost of a call. It also counts the script calls
// (EVALSHA and EVAL) sent, alone or in pipelines. Add it with
// client.AddHook.
type RoundTrips struct{ n, scripts atomic.Int64 }

// Count returns the round trips so far.
func (r *RoundTrips) Count() int64 { return r.n.Load() }

// Scripts returns the script calls so far.
func (r *RoundTrips) Scripts() int64 { return r.scripts.Load() }

func (r *RoundTrips) countScripts(cmds ...redis.Cmder) {
	for _, c := range cmds {
		if name := c.Name(); name == "evalsha" || name == "eval" {
			r.scripts.Add(1)
		}
	}
}

func (r *RoundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *RoundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "ping" {
			r.n.Add(1)
		}
		r.countScripts(cmd)
		return next(ctx, cmd)
	}
}

func (r *RoundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.n.Add(1)
		r.countScripts(cmds...)
		return next(ctx, cmds)
	}
}

// poll calls check until it says done or fails, or ctx ends: waiting for a
// server's view (of its cluster, its replicas) to change, which it does
// not announce.
func poll(ctx context.Context, check func() (done bool, err error)) error {
	for {
		if done, err := check(); done || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // polling, with the caller's deadline
		}
	}
}

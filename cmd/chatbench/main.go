// Command chatbench measures chatrelay: throughput and latency of posting
// (against a bare gRPC echo handler measured in the same run), the memory
// and registration time of idle ChatReceive listeners, match latency across
// replicas, and WatchSession fan-out. Each scenario prints one table.
//
//	go run ./cmd/chatbench -short        # under a minute; CI runs this
//	go run ./cmd/chatbench -full         # the figures in BENCHMARKS.md
//	go run ./cmd/chatbench -scenarios post-grpc-memory,echo -duration 10s
//
// The servers under test run as child processes (chatbench re-executes
// itself with -serve) on loopback ports; Redis scenarios start a private
// redis-server. Load generator and servers share the machine's cores.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/internal/redistest"
)

type config struct {
	short       bool
	duration    time.Duration
	concurrency int
	idleNs      []int
	matchNs     []int
	matchFor    time.Duration
	matchRate   int
	fanoutKs    []int
	fanoutFor   time.Duration
	redisURL    string // -use-redis, or a private redis-server's
}

var allScenarios = []string{"echo", "post-grpc-memory", "post-grpc-redis", "post-rest", "idle", "match", "fanout"}

func main() {
	serve := flag.Bool("serve", false, "internal: run as the server under test")
	backend := flag.String("backend", "memory", "internal: the child's backend: echo, memory or redis")
	childRedis := flag.String("redis-url", "", "internal: the child's Redis URL")
	childProfile := flag.String("cpuprofile", "", "internal: where the child writes its CPU profile")
	flag.StringVar(&profileDir, "profile", "", "write each server's CPU profile to this directory, as <backend>-<n>.prof")
	short := flag.Bool("short", false, "small sizes; finishes in under a minute")
	full := flag.Bool("full", false, "the sizes in BENCHMARKS.md")
	scenarios := flag.String("scenarios", strings.Join(allScenarios, ","), "comma-separated: "+strings.Join(allScenarios, ", "))
	duration := flag.Duration("duration", 0, "how long each throughput scenario runs (default 2s short, 10s full)")
	concurrency := flag.Int("concurrency", 50, "concurrent callers in the throughput scenarios")
	useRedis := flag.String("use-redis", "", "run the Redis scenarios against this Redis URL instead of a private redis-server (its data under the prefix \"bench\" is written)")
	flag.Parse()

	if *serve {
		if err := serveChild(*backend, *childRedis, *childProfile); err != nil {
			fmt.Fprintln(os.Stderr, "chatbench -serve:", err)
			os.Exit(1)
		}
		return
	}
	if *short == *full {
		fmt.Fprintln(os.Stderr, "chatbench: choose -short or -full")
		os.Exit(2)
	}
	cfg := config{short: *short, concurrency: *concurrency, matchRate: 1000, redisURL: *useRedis}
	if *short {
		cfg.duration, cfg.idleNs, cfg.matchNs, cfg.matchFor, cfg.fanoutKs, cfg.fanoutFor =
			2*time.Second, []int{1_000, 10_000}, []int{0, 1_000}, time.Second, []int{1, 100}, time.Second
	} else {
		cfg.duration, cfg.idleNs, cfg.matchNs, cfg.matchFor, cfg.fanoutKs, cfg.fanoutFor =
			10*time.Second, []int{1_000, 10_000, 100_000}, []int{0, 10_000, 100_000}, 5*time.Second, []int{1, 100, 1000}, 3*time.Second
	}
	if *duration > 0 {
		cfg.duration = *duration
	}
	if err := run(cfg, strings.Split(*scenarios, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "chatbench:", err)
		os.Exit(1)
	}
}

func run(cfg config, scenarios []string) error {
	for _, s := range scenarios {
		if !slices.Contains(allScenarios, s) {
			return fmt.Errorf("unknown scenario %q", s)
		}
	}
	host, _ := os.Hostname()
	fmt.Printf("# chatbench (%s)\n\nmachine: %s, %d CPUs, %s %s/%s; concurrency %d, %s per throughput case\n",
		map[bool]string{true: "-short", false: "-full"}[cfg.short], host, runtime.NumCPU(), runtime.Version(),
		runtime.GOOS, runtime.GOARCH, cfg.concurrency, cfg.duration)

	needRedis := slices.ContainsFunc(scenarios, func(s string) bool {
		return s == "post-grpc-redis" || s == "match" || s == "fanout"
	})
	if needRedis && cfg.redisURL == "" {
		if _, err := exec.LookPath("redis-server"); err != nil {
			return fmt.Errorf("redis-server is needed for %v: %w", scenarios, err)
		}
		dir, err := os.MkdirTemp("", "chatbench-redis")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		srv, err := redistest.Launch(dir)
		if err != nil {
			return err
		}
		defer srv.Kill()
		cfg.redisURL = "redis://" + srv.Addr
	}

	var errs int
	var echo float64
	var postGRPC float64
	report := func(title string, rows []row, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", title, err)
		}
		printTable(os.Stdout, title, rows)
		for _, r := range rows {
			errs += r.errors
		}
		return nil
	}
	ctx := context.Background()
	for _, s := range scenarios {
		var rows []row
		var err error
		switch s {
		case "echo":
			rows, err = benchEcho(ctx, cfg)
			if err == nil {
				echo = rows[0].throughput()
			}
		case "post-grpc-memory", "post-grpc-redis":
			backend := strings.TrimPrefix(s, "post-grpc-")
			rows, err = benchPostGRPC(ctx, cfg, backend)
			if err == nil && echo > 0 {
				rows[0].ratio, rows[0].ratioLabel = rows[0].throughput()/echo, "/ echo"
			}
			if err == nil && backend == "memory" {
				postGRPC = rows[0].throughput()
			}
		case "post-rest":
			rows, err = benchPostREST(ctx, cfg)
			if err == nil && postGRPC > 0 {
				rows[0].ratio, rows[0].ratioLabel = rows[0].throughput()/postGRPC, "/ post-grpc (memory)"
			}
		case "idle":
			rows, err = benchIdle(ctx, cfg)
		case "match":
			rows, err = benchMatch(ctx, cfg)
		case "fanout":
			rows, err = benchFanout(ctx, cfg)
		}
		if err := report(s, rows, err); err != nil {
			return err
		}
	}
	if errs > 0 {
		return fmt.Errorf("%d requests failed", errs)
	}
	return nil
}

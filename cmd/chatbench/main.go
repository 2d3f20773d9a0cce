// Command chatbench measures chatrelay: throughput and latency of posting
// (against a bare gRPC echo handler measured in the same run), the memory
// and registration time of idle ChatReceive listeners, match latency across
// replicas, WatchSession fan-out, and idle web widgets (their memory, and
// a post's latency to its event). Each scenario prints one table.
//
//	go run ./cmd/chatbench -short        # under a minute; CI runs this
//	go run ./cmd/chatbench -full         # the figures in BENCHMARKS.md
//	go run ./cmd/chatbench -scenarios post-grpc-memory,echo -duration 10s
//
// The servers under test run as child processes (chatbench re-executes
// itself with -serve) on loopback ports; Redis scenarios start a private
// redis-server, and the cluster scenario a private Redis Cluster. Load
// generator and servers share the machine's cores.
package main

import (
	"cmp"
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
	rounds      int
	concurrency int
	idleNs      []int
	matchNs     []int
	matchFor    time.Duration
	matchRate   int
	fanoutKs    []int
	fanoutFor   time.Duration
	eventNs     []int  // idle listeners in the slack-events scenario
	widgetNs    []int  // idle widget connections in the widget scenario
	redisURL    string // -use-redis, or a private redis-server's
	aofURL      string // a private redis-server's with appendfsync always
}

var allScenarios = []string{"echo", "post-grpc-memory", "post-grpc-redis", "post-grpc-redis-aof", "post-rest", "post-slack", "metrics-off", "idle", "match", "fanout",
	"cancel", "slack-slow", "slack-events", "webhooks", "widget", "cluster"}

func main() {
	serve := flag.Bool("serve", false, "internal: run as the server under test")
	backend := flag.String("backend", "memory", "internal: the child's backend: echo, memory or redis")
	childRedis := flag.String("redis-url", "", "internal: the child's Redis URL")
	childSlack := flag.String("slack-api", "", "internal: the child's Slack Web API, for a Slack account")
	childWebhook := flag.String("webhook-url", "", "internal: where the child's webhook integration delivers")
	childProfile := flag.String("cpuprofile", "", "internal: where the child writes its CPU profile")
	childMetrics := flag.Bool("metrics", true, "internal: the child counts Prometheus metrics, as cmd/chatrelay does")
	flag.StringVar(&profileDir, "profile", "", "write each server's CPU profile (<backend>-<n>.prof) and final heap (<backend>-<n>.heap) to this directory")
	short := flag.Bool("short", false, "small sizes; finishes in under a minute")
	full := flag.Bool("full", false, "the sizes in BENCHMARKS.md")
	scenarios := flag.String("scenarios", strings.Join(allScenarios, ","), "comma-separated: "+strings.Join(allScenarios, ", "))
	duration := flag.Duration("duration", 0, "how long each throughput case runs per round (default 2s short, 4s full)")
	rounds := flag.Int("rounds", 0, "rounds of the throughput cases; ratios are medians of per-round ratios (default 1 short, 5 full)")
	concurrency := flag.Int("concurrency", 50, "concurrent callers in the throughput scenarios")
	useRedis := flag.String("use-redis", "", "run the Redis scenarios against this Redis URL instead of a private redis-server (its data under the prefix \"bench\" is written)")
	hold := flag.String("hold", "", "internal: hold idle ChatReceive listeners open against this gRPC address")
	holdN := flag.Int("hold-n", 0, "internal: how many listeners -hold opens")
	holdPrefix := flag.String("hold-prefix", "idle", "internal: -hold's listeners wait for users <prefix>-<i>")
	holdWidgetsAt := flag.String("hold-widgets", "", "internal: hold idle widget event streams open against this HTTP address")
	holdFile := flag.String("hold-file", "", "internal: -hold-widgets's sessions, lines of \"<session id> <token>\"")
	flag.Parse()

	if *holdWidgetsAt != "" {
		if err := holdWidgets(*holdWidgetsAt, *holdFile); err != nil {
			fmt.Fprintln(os.Stderr, "chatbench -hold-widgets:", err)
			os.Exit(1)
		}
		return
	}

	if *hold != "" {
		if err := holdListeners(*hold, *holdN, *holdPrefix); err != nil {
			fmt.Fprintln(os.Stderr, "chatbench -hold:", err)
			os.Exit(1)
		}
		return
	}
	if *serve {
		if err := serveChild(*backend, *childRedis, *childSlack, *childWebhook, *childProfile, *childMetrics); err != nil {
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
	cfg.rounds = 5
	if *short {
		cfg.rounds = 1
	}
	if *short {
		cfg.duration, cfg.idleNs, cfg.matchNs, cfg.matchFor, cfg.fanoutKs, cfg.fanoutFor =
			2*time.Second, []int{1_000, 10_000}, []int{0, 1_000}, time.Second, []int{1, 100}, time.Second
		cfg.eventNs = []int{1_000}
		cfg.widgetNs = []int{1_000}
	} else {
		cfg.duration, cfg.idleNs, cfg.matchNs, cfg.matchFor, cfg.fanoutKs, cfg.fanoutFor =
			4*time.Second, []int{1_000, 10_000, 100_000}, []int{0, 10_000, 100_000}, 5*time.Second, []int{1, 100, 1000}, 3*time.Second
		cfg.eventNs = []int{0, 10_000} // 0: the same path with no idle listeners, a baseline for the machine
		cfg.widgetNs = []int{1_000, 10_000}
	}
	if *duration > 0 {
		cfg.duration = *duration
	}
	if profileDir != "" {
		// Made here: a child that cannot create its profile fails to
		// start, which would cost the run.
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "chatbench: -profile:", err)
			os.Exit(2)
		}
	}
	if *rounds > 0 {
		cfg.rounds = *rounds
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
	fmt.Printf("# chatbench (%s)\n\nmachine: %s, %d CPUs, %s %s/%s; concurrency %d; throughput cases: %d round(s) of %s each\n",
		map[bool]string{true: "-short", false: "-full"}[cfg.short], host, runtime.NumCPU(), runtime.Version(),
		runtime.GOOS, runtime.GOARCH, cfg.concurrency, cfg.rounds, cfg.duration)

	needRedis := slices.ContainsFunc(scenarios, func(s string) bool {
		return s == "post-grpc-redis" || s == "match" || s == "fanout" || s == "cancel" || s == "slack-events" || s == "webhooks"
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
	if slices.Contains(scenarios, "post-grpc-redis-aof") {
		// What durability on the master's disk costs a post
		// (docs/design.md §7): every write fsynced before Redis answers.
		dir, err := os.MkdirTemp("", "chatbench-redis-aof")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		srv, err := redistest.Launch(dir, redistest.WithAppendOnly())
		if err != nil {
			return err
		}
		defer srv.Kill()
		cfg.aofURL = "redis://" + srv.Addr
	}

	var errs int
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
	if err := runThroughput(ctx, cfg, scenarios, report); err != nil {
		return err
	}
	for _, s := range scenarios {
		var rows []row
		var err error
		switch s {
		case "idle":
			rows, err = benchIdle(ctx, cfg)
		case "match":
			rows, err = benchMatch(ctx, cfg)
		case "fanout":
			rows, err = benchFanout(ctx, cfg)
		case "cancel":
			rows, err = benchCancel(ctx, cfg)
		case "slack-slow":
			rows, err = benchSlackSlow(ctx, cfg)
		case "slack-events":
			rows, err = benchSlackEvents(ctx, cfg)
		case "webhooks":
			rows, err = benchWebhooks(ctx, cfg)
		case "widget":
			rows, err = benchWidget(ctx, cfg)
		case "cluster":
			rows, err = benchCluster(ctx, cfg)
		default:
			continue
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

// throughputCases run in rounds; a ratio compares a case with its
// baseline measured in the same round, so the machine's drift over minutes
// cancels out.
var throughputCases = []struct{ name, baseline, label string }{
	{"echo", "", ""},
	{"post-grpc-memory", "echo", "/ echo"},
	{"post-grpc-redis", "echo", "/ echo"},
	{"post-grpc-redis-aof", "post-grpc-redis", "/ post-grpc (redis)"},
	{"post-rest", "post-grpc-memory", "/ post-grpc (memory)"},
	{"post-slack", "post-grpc-memory", "/ post-grpc (memory)"},
	// Metrics are on in every other case, as in cmd/chatrelay; this one
	// measures what they cost.
	{"metrics-off", "post-grpc-memory", "/ post-grpc (memory, metrics on)"},
}

func runThroughput(ctx context.Context, cfg config, scenarios []string, report func(string, []row, error) error) error {
	rounds := map[string][]row{}
	for range cfg.rounds {
		for _, c := range throughputCases {
			if !slices.Contains(scenarios, c.name) {
				continue
			}
			var rows []row
			var err error
			switch c.name {
			case "echo":
				rows, err = benchEcho(ctx, cfg)
			case "post-grpc-memory", "post-grpc-redis":
				rows, err = benchPostGRPC(ctx, cfg, strings.TrimPrefix(c.name, "post-grpc-"), true)
			case "post-grpc-redis-aof":
				aof := cfg
				aof.redisURL = cfg.aofURL
				if rows, err = benchPostGRPC(ctx, aof, "redis", true); err == nil {
					rows[0].name += ", appendfsync always"
				}
			case "metrics-off":
				rows, err = benchPostGRPC(ctx, cfg, "memory", false)
			case "post-rest":
				rows, err = benchPostREST(ctx, cfg)
			case "post-slack":
				rows, err = benchPostSlack(ctx, cfg)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			rounds[c.name] = append(rounds[c.name], rows[0])
		}
	}
	for _, c := range throughputCases {
		rs := rounds[c.name]
		if len(rs) == 0 {
			continue
		}
		// The median round by throughput stands for the case; the ratio is
		// the median of the per-round ratios.
		med := slices.Clone(rs)
		slices.SortFunc(med, func(a, b row) int { return cmp.Compare(a.throughput(), b.throughput()) })
		r := med[len(med)/2]
		errs := 0
		for _, x := range rs {
			errs += x.errors
		}
		r.errors = errs
		if base := rounds[c.baseline]; len(base) == len(rs) {
			var ratios []float64
			for i := range rs {
				ratios = append(ratios, rs[i].throughput()/base[i].throughput())
			}
			r.extra = "rounds: " + fmtRatios(ratios) + ";"
			slices.Sort(ratios)
			r.ratio, r.ratioLabel = ratios[len(ratios)/2], "median "+c.label
		}
		r.extra = strings.TrimSpace(r.extra + " " + cpuNote(rs, rounds[c.baseline], c.label))
		if len(rs) > 1 {
			r.name += fmt.Sprintf(" (median of %d rounds)", len(rs))
		}
		if err := report(c.name, []row{r}, nil); err != nil {
			return err
		}
	}
	return nil
}

// cpuNote gives the server's CPU time per call, the median of the rounds',
// and its per-round ratio to the baseline's (lower is cheaper).
func cpuNote(rs, base []row, label string) string {
	var per []float64
	var ratios []float64
	for i, r := range rs {
		if r.cpuPerOp() == 0 {
			return ""
		}
		per = append(per, float64(r.cpuPerOp())/float64(time.Microsecond))
		if len(base) == len(rs) && base[i].cpuPerOp() > 0 {
			ratios = append(ratios, float64(r.cpuPerOp())/float64(base[i].cpuPerOp()))
		}
	}
	slices.Sort(per)
	note := fmt.Sprintf("server CPU %.1fµs/call;", per[len(per)/2])
	if len(ratios) == len(rs) {
		note += " CPU/call rounds: " + fmtRatios(ratios) + ";"
		slices.Sort(ratios)
		note += fmt.Sprintf(" median CPU/call %s = %.3f;", label, ratios[len(ratios)/2])
	}
	return note
}

func fmtRatios(rs []float64) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.2f", r)
	}
	return strings.Join(parts, " ")
}

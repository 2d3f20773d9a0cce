package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// profileDir, when set, makes each child write a CPU profile there;
// children numbers them.
var (
	profileDir string
	children   int
)

// child is a server under test.
type child struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	gcs      *gcLog
	grpcAddr string
	httpAddr string
	conn     *grpc.ClientConn
	chat     pb.ChatServiceClient
	sessions pb.SessionServiceClient
}

func startChild(backend, redisURL string) (*child, error) {
	return startChildWith(backend, redisURL, "")
}

// startChildWith starts a server under test whose tenant "default" has a
// Slack account (benchSlackToken, benchSlackSecret) on the Web API at
// slackAPI, when given; extra are more of the child's flags.
func startChildWith(backend, redisURL, slackAPI string, extra ...string) (*child, error) {
	args := append([]string{"-serve", "-backend", backend, "-redis-url", redisURL, "-slack-api", slackAPI}, extra...)
	if profileDir != "" {
		children++
		args = append(args, "-cpuprofile", filepath.Join(profileDir, fmt.Sprintf("%s-%d.prof", backend, children)))
	}
	gcs := &gcLog{}
	cmd, stdin, f, err := spawn(30*time.Second, gcs, gcTraceEnv(), args...)
	if err != nil {
		return nil, fmt.Errorf("server under test: %w", err)
	}
	c := &child{cmd: cmd, stdin: stdin, gcs: gcs}
	if len(f) != 2 {
		c.stop()
		return nil, fmt.Errorf("server under test said READY %q", f)
	}
	c.grpcAddr, c.httpAddr = f[0], f[1]
	if c.conn, err = dial(c.grpcAddr); err != nil {
		c.stop()
		return nil, err
	}
	c.chat, c.sessions = pb.NewChatServiceClient(c.conn), pb.NewSessionServiceClient(c.conn)
	return c, nil
}

// spawn re-executes chatbench with args, in the environment env (nil for
// ours) and with its stderr written to stderr, and waits up to within for
// its first line, "READY <fields…>". The child stops when its stdin closes.
func spawn(within time.Duration, stderr io.Writer, env []string, args ...string) (*exec.Cmd, io.WriteCloser, []string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr, cmd.Env = stderr, env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, err
	}
	type answer struct {
		fields []string
		err    error
	}
	ready := make(chan answer, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		f := strings.Fields(line)
		switch {
		case err != nil:
			ready <- answer{err: fmt.Errorf("did not start: %w", err)}
			return
		case len(f) == 0 || f[0] != "READY":
			ready <- answer{err: fmt.Errorf("said %q", line)}
			return
		}
		ready <- answer{fields: f[1:]}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case a := <-ready:
		if a.err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return nil, nil, nil, a.err
		}
		return cmd, stdin, a.fields, nil
	case <-time.After(within):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, nil, nil, fmt.Errorf("did not start within %s", within)
	}
}

func dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func (c *child) stop() {
	if c.conn != nil {
		c.conn.Close()
	}
	c.stdin.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// rss is the server's resident set size, from /proc.
func (c *child) rss() int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// gcLog takes a child's stderr with the runtime's GC trace on
// (GODEBUG=gctrace=1): it notes when each collection ended and how long
// it took, and passes every other line on to our stderr. A latency tail
// can then be told apart from the server's garbage collection.
type gcLog struct {
	mu      sync.Mutex
	partial []byte
	ends    []gcEnd
}

type gcEnd struct {
	at   time.Time     // when the trace line arrived: the collection's end
	took time.Duration // its wall time: sweep termination, mark, mark termination
}

// gcTraceEnv is our environment with the GC trace added to GODEBUG.
func gcTraceEnv() []string {
	debug := "gctrace=1"
	if cur := os.Getenv("GODEBUG"); cur != "" {
		debug = cur + "," + debug
	}
	return append(os.Environ(), "GODEBUG="+debug)
}

func (g *gcLog) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.partial = append(g.partial, p...)
	for {
		i := bytes.IndexByte(g.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := g.partial[:i+1]
		if took, ok := parseGCTrace(string(line)); ok {
			g.ends = append(g.ends, gcEnd{at: time.Now(), took: took})
		} else {
			_, _ = os.Stderr.Write(line)
		}
		g.partial = g.partial[i+1:]
	}
}

// parseGCTrace reads the wall time of one collection from a trace line,
// "gc 13 @22.581s 8%: 8.3+1075+0.092 ms clock, …".
func parseGCTrace(line string) (time.Duration, bool) {
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "gc" || f[5] != "ms" {
		return 0, false
	}
	var total float64
	for _, part := range strings.Split(f[4], "+") {
		ms, err := strconv.ParseFloat(part, 64)
		if err != nil {
			return 0, false
		}
		total += ms
	}
	return time.Duration(total * float64(time.Millisecond)), true
}

// during says how many collections overlapped [from, to], and the longest.
func (g *gcLog) during(from, to time.Time) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, longest := 0, time.Duration(0)
	for _, e := range g.ends {
		if !e.at.Before(from) && !e.at.Add(-e.took).After(to) {
			n++
			longest = max(longest, e.took)
		}
	}
	if n == 0 {
		return "no GC on A in the window"
	}
	return fmt.Sprintf("%d GC on A in the window (longest %v)", n, longest.Round(time.Millisecond))
}

// settle waits, up to limit, until the child uses less than a tenth of a
// core over a quarter of a second, and says how long that took.
func (c *child) settle(limit time.Duration) time.Duration {
	const every = 250 * time.Millisecond
	begin := time.Now()
	last := c.cpuTime()
	for time.Since(begin) < limit {
		time.Sleep(every)
		now := c.cpuTime()
		if now-last < every/10 {
			break
		}
		last = now
	}
	return time.Since(begin)
}

// cpuTime is the CPU time the child has used (user and system), from
// /proc/<pid>/stat; 0 if it cannot be read.
func (c *child) cpuTime() time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14 and stime 15, in clock ticks.
	_, rest, _ := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// closedLoop runs call from n goroutines for d after a short warm-up and
// records every latency. Workers stop starting calls when the time is up
// and finish the one in flight, so no call is cut off and miscounted.
func closedLoop(ctx context.Context, n int, d time.Duration, call func(context.Context) error) (*recorder, time.Duration) {
	rec, elapsed, _ := closedLoopOn(ctx, nil, n, d, call)
	return rec, elapsed
}

// closedLoopOn is closedLoop that also measures the CPU time the server
// under test c spends in the measured window, when c is not nil: CPU per
// call is far steadier than throughput on shared, noisy cores.
func closedLoopOn(ctx context.Context, c *child, n int, d time.Duration, call func(context.Context) error) (*recorder, time.Duration, time.Duration) {
	warm := min(d/4, time.Second)
	begin := time.Now()
	measureFrom, end := begin.Add(warm), begin.Add(warm+d)
	var cpuFrom time.Duration
	if c != nil {
		snap := time.AfterFunc(warm, func() { cpuFrom = c.cpuTime() })
		defer snap.Stop()
	}
	rec := &recorder{}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				start := time.Now()
				if !start.Before(end) {
					return
				}
				err := call(ctx)
				if !start.Before(measureFrom) {
					rec.add(time.Since(start), err)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(measureFrom)
	var cpu time.Duration
	if c != nil {
		cpu = c.cpuTime() - cpuFrom // the AfterFunc ran: calls went on past it
	}
	return rec, elapsed, cpu
}

func benchEcho(ctx context.Context, cfg config) ([]row, error) {
	c, err := startChild("echo", "")
	if err != nil {
		return nil, err
	}
	defer c.stop()
	req := &pb.PostMessageRequest{SessionId: "ses_bench", Message: "Your order has shipped."}
	rec, elapsed, cpu := closedLoopOn(ctx, c, cfg.concurrency, cfg.duration, func(ctx context.Context) error {
		return c.conn.Invoke(ctx, echoMethod, req, new(pb.PostMessageResponse))
	})
	r := rec.row("echo (bare grpc-go handler)", 0, elapsed)
	r.cpu = cpu
	r.rssBytes = c.rss()
	return []row{r}, nil
}

func benchPostGRPC(ctx context.Context, cfg config, backend string, metrics bool) ([]row, error) {
	var c *child
	var err error
	if metrics {
		c, err = startChild(backend, cfg.redisURL)
	} else {
		c, err = startChildWith(backend, cfg.redisURL, "", "-metrics=false")
	}
	if err != nil {
		return nil, err
	}
	defer c.stop()
	ses, err := c.sessions.CreateSession(ctx, &pb.CreateSessionRequest{User: "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)})
	if err != nil {
		return nil, err
	}
	req := &pb.PostMessageRequest{SessionId: ses.Session.SessionId, Message: "Your order has shipped."}
	rec, elapsed, cpu := closedLoopOn(ctx, c, cfg.concurrency, cfg.duration, func(ctx context.Context) error {
		_, err := c.chat.PostMessage(ctx, req)
		return err
	})
	name := "PostMessage over gRPC, " + backend + " backend"
	if !metrics {
		name += ", metrics off"
	}
	r := rec.row(name, 0, elapsed)
	r.cpu = cpu
	r.rssBytes = c.rss()
	return []row{r}, nil
}

func benchPostREST(ctx context.Context, cfg config) ([]row, error) {
	c, err := startChild("memory", "")
	if err != nil {
		return nil, err
	}
	defer c.stop()
	ses, err := c.sessions.CreateSession(ctx, &pb.CreateSessionRequest{User: "bench-rest"})
	if err != nil {
		return nil, err
	}
	load := newHTTPLoad(c.httpAddr, "POST", "/v1/sessions/"+ses.Session.SessionId+"/messages",
		[]byte(`{"message":"Your order has shipped."}`), cfg.concurrency)
	defer load.close()
	rec, elapsed, cpu := closedLoopOn(ctx, c, cfg.concurrency, cfg.duration, func(context.Context) error { return load.do() })
	r := rec.row("PostMessage over REST, memory backend", 0, elapsed)
	r.cpu = cpu
	r.rssBytes = c.rss()
	return []row{r}, nil
}

// openListeners opens n ChatReceive streams spread over conns and waits for
// every waiting frame. Each stream's cancel is returned.
func openListeners(ctx context.Context, conns []*grpc.ClientConn, n int, req func(i int) *pb.ChatReceiveRequest) ([]pb.ChatService_ChatReceiveClient, *recorder, error) {
	streams := make([]pb.ChatService_ChatReceiveClient, n)
	rec := &recorder{}
	var wg sync.WaitGroup
	var failed atomic.Int64
	sem := make(chan struct{}, 256) // registrations in flight
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			begin := time.Now()
			st, err := pb.NewChatServiceClient(conns[i%len(conns)]).ChatReceive(ctx, req(i))
			if err == nil {
				var first *pb.ChatReceiveResponse
				if first, err = st.Recv(); err == nil && first.GetWaiting() == nil {
					err = fmt.Errorf("first frame %v", first)
				}
			}
			rec.add(time.Since(begin), err)
			if err != nil {
				failed.Add(1)
				return
			}
			streams[i] = st
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		return nil, rec, fmt.Errorf("%d of %d listeners failed to register; first: %v", failed.Load(), n, rec.first)
	}
	return streams, rec, nil
}

func dialMany(addr string, n int) ([]*grpc.ClientConn, error) {
	var conns []*grpc.ClientConn
	for range n {
		c, err := dial(addr)
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

func closeAll(conns []*grpc.ClientConn) {
	for _, c := range conns {
		c.Close()
	}
}

// benchIdle opens N idle listeners on a fresh server and reports the time
// to register them and the server's RSS per listener.
func benchIdle(ctx context.Context, cfg config) ([]row, error) {
	var rows []row
	for _, n := range cfg.idleNs {
		c, err := startChild("memory", "")
		if err != nil {
			return nil, err
		}
		// Warm the server up with a few streams, so fixed costs (buffers,
		// first allocations) are in the baseline, not the per-listener cost.
		conns, err := dialMany(c.grpcAddr, max(1, n/10_000))
		if err != nil {
			c.stop()
			return nil, err
		}
		sctx, cancel := context.WithCancel(ctx)
		if _, _, err := openListeners(sctx, conns, 100, func(i int) *pb.ChatReceiveRequest {
			return &pb.ChatReceiveRequest{FromUser: fmt.Sprint("warm-", i)}
		}); err != nil {
			cancel()
			c.stop()
			return nil, err
		}
		base := c.rss()
		begin := time.Now()
		_, rec, err := openListeners(sctx, conns, n, func(i int) *pb.ChatReceiveRequest {
			return &pb.ChatReceiveRequest{FromUser: fmt.Sprint("idle-", i), KeywordFilter: "yes"}
		})
		elapsed := time.Since(begin)
		if err != nil {
			cancel()
			c.stop()
			return nil, err
		}
		rss := c.rss()
		r := rec.row("idle ChatReceive listeners (register all)", n, elapsed)
		r.rssBytes = rss
		r.extra = fmt.Sprintf("%.1f KiB RSS per listener; all registered in %s", float64(rss-base)/1024/float64(n), elapsed.Round(time.Millisecond))
		rows = append(rows, r)
		cancel()
		closeAll(conns)
		c.stop()
	}
	return rows, nil
}

// holdListeners is chatbench -hold: it opens n idle listeners against addr,
// says READY once every one is waiting, and holds them until stdin closes.
func holdListeners(addr string, n int, prefix string) error {
	conns, err := dialMany(addr, max(1, n/10_000))
	if err != nil {
		return err
	}
	defer closeAll(conns)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, _, err := openListeners(ctx, conns, n, func(i int) *pb.ChatReceiveRequest {
		return &pb.ChatReceiveRequest{FromUser: fmt.Sprintf("%s-%d", prefix, i)}
	}); err != nil {
		return err
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// benchMatch measures, with N idle non-matching listeners on replica A,
// the latency from an ingest on replica B to the success frame on A, at a
// fixed rate.
func benchMatch(ctx context.Context, cfg config) ([]row, error) {
	var rows []row
	for _, n := range cfg.matchNs {
		a, err := startChild("redis", cfg.redisURL)
		if err != nil {
			return nil, err
		}
		b, err := startChild("redis", cfg.redisURL)
		if err != nil {
			a.stop()
			return nil, err
		}
		ingester := pb.NewChatServiceClient(b.conn)
		r, err := matchOnce(ctx, cfg, n, a, fmt.Sprintf("ingest on B → success on A, %d msg/s", cfg.matchRate), func(ctx context.Context, user string) error {
			_, err := ingester.IngestMessage(ctx, &pb.IngestMessageRequest{FromUser: user, Text: "yes"})
			return err
		})
		a.stop()
		b.stop()
		if err != nil {
			return nil, err
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// matchOnce measures, with n idle listeners on a, the latency from send
// (a message from user, on another replica or platform) to the success
// frame on a, at cfg.matchRate.
func matchOnce(ctx context.Context, cfg config, n int, a *child, title string, send func(ctx context.Context, user string) error) (row, error) {
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	conns, err := dialMany(a.grpcAddr, max(1, n/10_000))
	if err != nil {
		return row{}, err
	}
	defer closeAll(conns)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if n > 0 {
		// The idle listeners' client ends live in another process, as
		// they would in production: 100k streams' worth of garbage
		// collection in this one would be measured as latency.
		cmd, stdin, _, err := spawn(5*time.Minute, os.Stderr, nil, "-hold", a.grpcAddr, "-hold-n", strconv.Itoa(n), "-hold-prefix", "idle-"+run)
		if err != nil {
			return row{}, fmt.Errorf("idle listeners: %w", err)
		}
		defer func() {
			_ = stdin.Close()
			_ = cmd.Wait()
		}()
	}
	// The first second of messages warms up the path (connections, script
	// cache, stacks) and is not recorded, as in the throughput cases.
	warm := cfg.matchRate
	msgs := warm + int(cfg.matchFor.Seconds()*float64(cfg.matchRate))
	waiters, _, err := openListeners(sctx, conns, msgs, func(i int) *pb.ChatReceiveRequest {
		return &pb.ChatReceiveRequest{FromUser: fmt.Sprintf("match-%s-%d", run, i)}
	})
	if err != nil {
		return row{}, err
	}
	// Idle listeners are idle: measure once replica A has finished with
	// registering them (the garbage collections that burst leaves behind),
	// as in a deployment where they arrived over time.
	settled := a.settle(30 * time.Second)
	// When each message was sent, by index: written by the sending loop,
	// read by the waiter that receives it (nothing else orders the two).
	sent := make([]time.Time, msgs)
	var sentMu sync.Mutex
	sentAt := func(i int) time.Time {
		sentMu.Lock()
		defer sentMu.Unlock()
		return sent[i]
	}
	rec := &recorder{}
	var wg sync.WaitGroup
	for i, st := range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := st.Recv()
			if err == nil && f.GetSuccess() == nil {
				err = fmt.Errorf("frame %v", f)
			}
			if i >= warm || err != nil {
				rec.add(time.Since(sentAt(i)), err)
			}
		}()
	}
	tick := time.NewTicker(time.Second / time.Duration(cfg.matchRate))
	defer tick.Stop()
	var ingests sync.WaitGroup
	for i := range msgs {
		<-tick.C
		sentMu.Lock()
		sent[i] = time.Now()
		sentMu.Unlock()
		ingests.Add(1)
		go func() {
			defer ingests.Done()
			if err := send(ctx, fmt.Sprintf("match-%s-%d", run, i)); err != nil {
				rec.add(0, err)
			}
		}()
	}
	ingests.Wait()
	wg.Wait()
	r := rec.row(title, n, time.Since(sent[warm]))
	r.rssBytes = a.rss()
	r.extra = fmt.Sprintf("N = idle listeners on A; A settled in %v; %s", settled.Round(100*time.Millisecond), a.gcs.during(sent[warm], time.Now()))
	return r, nil
}

// benchFanout posts into one session watched by K streams split across two
// replicas and reports the delivery latency.
func benchFanout(ctx context.Context, cfg config) ([]row, error) {
	var rows []row
	a, err := startChild("redis", cfg.redisURL)
	if err != nil {
		return nil, err
	}
	defer a.stop()
	b, err := startChild("redis", cfg.redisURL)
	if err != nil {
		return nil, err
	}
	defer b.stop()
	for _, k := range cfg.fanoutKs {
		ses, err := a.sessions.CreateSession(ctx, &pb.CreateSessionRequest{User: "fanout-" + strconv.FormatInt(time.Now().UnixNano(), 36)})
		if err != nil {
			return nil, err
		}
		sid := ses.Session.SessionId
		const posts = 50
		sent := make([]time.Time, posts+1) // by message index in the text
		var sentMu sync.Mutex
		rec := &recorder{}
		sctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		var ready sync.WaitGroup
		for i := range k {
			replica := []*child{a, b}[i%2]
			st, err := replica.sessions.WatchSession(sctx, &pb.WatchSessionRequest{SessionId: sid, LiveOnly: true})
			if err != nil {
				cancel()
				return nil, err
			}
			ready.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := st.Header(); err != nil {
					rec.add(0, err)
				}
				ready.Done()
				for range posts {
					f, err := st.Recv()
					if err != nil {
						rec.add(0, err)
						return
					}
					idx, _ := strconv.Atoi(f.GetMessage().GetText())
					sentMu.Lock()
					at := sent[idx]
					sentMu.Unlock()
					rec.add(time.Since(at), nil)
				}
			}()
		}
		ready.Wait()
		interval := cfg.fanoutFor / posts
		begin := time.Now()
		for i := range posts {
			sentMu.Lock()
			sent[i] = time.Now()
			sentMu.Unlock()
			if _, err := a.chat.PostMessage(ctx, &pb.PostMessageRequest{SessionId: sid, Message: strconv.Itoa(i)}); err != nil {
				rec.add(0, err)
			}
			time.Sleep(interval) // pacing the posts, not synchronising
		}
		wg.Wait()
		cancel()
		r := rec.row("post → every watcher, 2 replicas", k, time.Since(begin))
		r.rssBytes = a.rss()
		r.extra = fmt.Sprintf("K = watchers; %d posts; ops = deliveries", posts)
		rows = append(rows, r)
	}
	return rows, nil
}

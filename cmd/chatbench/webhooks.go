package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/ids"
)

// The bench's webhook integration (docs/design.md §9).
const (
	benchWebhookName   = "bench"
	benchWebhookSecret = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMDEyMzQ1"
)

// hookReceiver is a loopback receiver of the bench integration's
// webhooks that answers at once: while it is down, 503 to the backlog's
// sessions with a Retry-After naming dueAt, so that every retry of the
// backlog comes due at that one instant; 200 to everything else. It
// counts the backlog's messages it took, by webhook-id.
type hookReceiver struct {
	srv      *http.Server
	url      string
	down     atomic.Bool
	dueAt    time.Time // whole seconds: Retry-After as an HTTP date
	accepted atomic.Int64
	mu       sync.Mutex
	backlog  map[string]bool // webhook-ids of the backlog taken
	done     chan struct{}   // closed when want backlog messages were taken
	want     int
}

func newHookReceiver(want int, dueAt time.Time) (*hookReceiver, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &hookReceiver{url: "http://" + l.Addr().String() + "/hooks", backlog: map[string]bool{}, done: make(chan struct{}), want: want, dueAt: dueAt}
	h.srv = &http.Server{Handler: http.HandlerFunc(h.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = h.srv.Serve(l) }()
	return h, nil
}

func (h *hookReceiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var ev struct {
		Session struct {
			User string `json:"user"`
		} `json:"session"`
	}
	_ = json.Unmarshal(body, &ev)
	if !strings.HasPrefix(ev.Session.User, "backlog-") {
		h.accepted.Add(1)
		w.WriteHeader(http.StatusOK)
		return
	}
	if h.down.Load() {
		w.Header().Set("Retry-After", h.dueAt.UTC().Format(http.TimeFormat))
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	h.mu.Lock()
	if !h.backlog[r.Header.Get("webhook-id")] {
		h.backlog[r.Header.Get("webhook-id")] = true
		if len(h.backlog) == h.want {
			close(h.done)
		}
	}
	h.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (h *hookReceiver) close() { _ = h.srv.Close() }

// benchWebhooks: webhook deliveries per second to a receiver that answers
// at once, with a backlog of deliveries pending retry in Redis at the same
// time (the receiver refuses the backlog's sessions with 503); Redis
// memory per pending delivery; and the time the backlog takes to drain
// once it is due (the receiver's Retry-After makes all of it due at once,
// after the receiver recovered).
func benchWebhooks(ctx context.Context, cfg config) ([]row, error) {
	backlog, dueIn := 10_000, 30*time.Second
	if cfg.short {
		backlog, dueIn = 1_000, 10*time.Second
	}
	dueAt := time.Now().Add(dueIn).Truncate(time.Second)
	recv, err := newHookReceiver(backlog, dueAt)
	if err != nil {
		return nil, err
	}
	defer recv.close()
	recv.down.Store(true)
	opts, err := redis.ParseURL(cfg.redisURL)
	if err != nil {
		return nil, err
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	c, err := startChildWith("redis", cfg.redisURL, "", "-webhook-url", recv.url)
	if err != nil {
		return nil, err
	}
	defer c.stop()

	open := func(user string) (string, error) {
		r, err := c.sessions.CreateSession(ctx, &pb.CreateSessionRequest{Platform: "webhook", Channel: benchWebhookName, User: user})
		if err != nil {
			return "", err
		}
		return r.Session.SessionId, nil
	}
	const sessions = 100
	var backlogSIDs []string
	for i := range sessions {
		sid, err := open(fmt.Sprint("backlog-", i))
		if err != nil {
			return nil, err
		}
		backlogSIDs = append(backlogSIDs, sid)
	}
	before, err := usedMemory(ctx, rdb)
	if err != nil {
		return nil, err
	}
	var next atomic.Int64
	fill := &recorder{}
	var wg sync.WaitGroup
	began := time.Now()
	for range cfg.concurrency {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(backlog); i = next.Add(1) {
				t0 := time.Now()
				r, err := c.chat.PostMessage(ctx, &pb.PostMessageRequest{SessionId: backlogSIDs[i%sessions], Message: "backlog message"})
				if err == nil && r.Status != pb.MessageStatus_MESSAGE_STATUS_PENDING {
					err = fmt.Errorf("status %v, want PENDING", r.Status)
				}
				fill.add(time.Since(t0), err)
			}
		})
	}
	wg.Wait()
	fillElapsed := time.Since(began)
	after, err := usedMemory(ctx, rdb)
	if err != nil {
		return nil, err
	}
	outbox := fmt.Sprintf("bench:{%s}:", ids.Tag("outbox"))
	obBytes, err := rdb.MemoryUsage(ctx, outbox+"ob").Result()
	if err != nil {
		return nil, err
	}
	oaBytes, err := rdb.MemoryUsage(ctx, outbox+"oba").Result()
	if err != nil {
		return nil, err
	}
	fillRow := fill.row(fmt.Sprintf("%d posts into webhook sessions, the receiver down (503): all left PENDING for retry", backlog), backlog, fillElapsed)
	fillRow.extra = fmt.Sprintf("Redis memory per pending delivery: %d B with its message and history, %d B of it the outbox's entry",
		(after-before)/int64(backlog), (obBytes+oaBytes)/int64(backlog))

	live, err := open("live-0")
	if err != nil {
		return nil, err
	}
	req := &pb.PostMessageRequest{SessionId: live, Message: "Your order has shipped."}
	rec, elapsed, cpu := closedLoopOn(ctx, c, cfg.concurrency, cfg.duration, func(ctx context.Context) error {
		r, err := c.chat.PostMessage(ctx, req)
		if err == nil && r.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED {
			err = fmt.Errorf("status %v", r.Status)
		}
		return err
	})
	liveRow := rec.row(fmt.Sprintf("PostMessage into a webhook session, receiver answering at once, %d deliveries pending retry", backlog), 0, elapsed)
	liveRow.cpu = cpu

	// The receiver recovers before the backlog's retries come due, all
	// at dueAt: the drain measures delivery, not the schedule (plus up to
	// one poll of the delivery loop).
	if !time.Now().Before(dueAt) {
		return nil, fmt.Errorf("filling the backlog and the live posts outlasted its Retry-After (%s): retries came due while the receiver was down", dueIn)
	}
	recv.down.Store(false)
	select {
	case <-recv.done:
	case <-time.After(10 * time.Minute):
		recv.mu.Lock()
		defer recv.mu.Unlock()
		return nil, fmt.Errorf("the backlog did not drain in 10 minutes: %d of %d delivered", len(recv.backlog), backlog)
	}
	drain := time.Since(dueAt)
	drainRow := row{name: fmt.Sprintf("the backlog of %d delivered once due (all at one instant, by the receiver's Retry-After; up to a 1 s poll)", backlog),
		n: backlog, ops: backlog, elapsed: drain, extra: fmt.Sprintf("drained in %s", drain.Round(10*time.Millisecond))}
	return []row{fillRow, liveRow, drainRow}, nil
}

// usedMemory is Redis's used_memory.
func usedMemory(ctx context.Context, rdb *redis.Client) (int64, error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			var n int64
			_, err := fmt.Sscan(v, &n)
			return n, err
		}
	}
	return 0, fmt.Errorf("no used_memory in INFO memory")
}

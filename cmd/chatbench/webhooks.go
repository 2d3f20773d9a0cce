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

	"github.com/chatrelay/chatrelay/adapters/webhook"
	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/ids"
)

// The bench's webhook integration (docs/design.md §9).
const (
	benchWebhookName   = "bench"
	benchWebhookSecret = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMDEyMzQ1"
)

// hookReceiver is a loopback receiver of the bench integration's
// webhooks that answers at once: 503 to the backlog's sessions while it is
// down, 200 to everything else. It counts the backlog's messages it took,
// by webhook-id.
type hookReceiver struct {
	srv      *http.Server
	url      string
	down     atomic.Bool
	accepted atomic.Int64
	mu       sync.Mutex
	backlog  map[string]bool // webhook-ids of the backlog taken
	done     chan struct{}   // closed when want backlog messages were taken
	want     int
}

func newHookReceiver(want int) (*hookReceiver, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &hookReceiver{url: "http://" + l.Addr().String() + "/hooks", backlog: map[string]bool{}, done: make(chan struct{}), want: want}
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
// memory per pending delivery; and, once the receiver takes the backlog,
// the time until all of it is delivered (its first retry is due 5 s after
// its first attempt).
func benchWebhooks(ctx context.Context, cfg config) ([]row, error) {
	backlog := 10_000
	if cfg.short {
		backlog = 1_000
	}
	recv, err := newHookReceiver(backlog)
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
	allDue := time.Now().Add(webhook.Schedule[0] + webhook.Schedule[0]/10)
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

	// The receiver recovers once every retry is due, so the drain
	// measures delivery, not the schedule (plus up to one poll).
	time.Sleep(time.Until(allDue))
	recv.down.Store(false)
	recovered := time.Now()
	select {
	case <-recv.done:
	case <-time.After(10 * time.Minute):
		recv.mu.Lock()
		defer recv.mu.Unlock()
		return nil, fmt.Errorf("the backlog did not drain in 10 minutes: %d of %d delivered", len(recv.backlog), backlog)
	}
	drain := time.Since(recovered)
	drainRow := row{name: fmt.Sprintf("the backlog of %d delivered after the receiver recovered (its retries all due by then; up to a 1 s poll)", backlog),
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

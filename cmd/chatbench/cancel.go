package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// benchCancel is a cancellation storm against one Redis-backed replica:
// callers over gRPC and REST give up on their calls after a random 0.2 to
// 6 ms, while the calls are queued, in flight or being answered, as wrk
// does when a run ends. Then every kind of call must still be answered
// (a replica once wedged for good after a few such storms). Cancelled
// calls are expected; only the calls after the storm count as errors.
func benchCancel(ctx context.Context, cfg config) ([]row, error) {
	c, err := startChild("redis", cfg.redisURL)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	user := "cancel-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	ses, err := c.sessions.CreateSession(ctx, &pb.CreateSessionRequest{User: user})
	if err != nil {
		return nil, err
	}
	sid := ses.Session.SessionId
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.concurrency}}
	url := "http://" + c.httpAddr + "/v1/sessions/" + sid + "/messages"
	body := []byte(`{"message":"Your order has shipped."}`)

	var started, cancelled atomic.Int64
	storm := func(ctx context.Context) error {
		started.Add(1)
		ctx, cancel := context.WithTimeout(ctx, time.Duration(200+rand.IntN(5800))*time.Microsecond)
		defer cancel()
		var err error
		if rand.IntN(2) == 0 {
			_, err = c.chat.PostMessage(ctx, &pb.PostMessageRequest{SessionId: sid, Message: "Your order has shipped."})
		} else {
			var req *http.Request
			if req, err = http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(body)); err == nil {
				var resp *http.Response
				if resp, err = client.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}
		if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
			cancelled.Add(1)
		}
		return nil // giving up is the point: not an error here
	}
	const storms = 3
	begin := time.Now()
	for range storms {
		closedLoop(ctx, cfg.concurrency, cfg.duration/storms, storm)
	}
	stormFor := time.Since(begin)

	// Then every kind of call, each on a short deadline.
	rec := &recorder{}
	check := func(name string, call func(context.Context) error) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		t0 := time.Now()
		if err := call(cctx); err != nil {
			rec.add(0, fmt.Errorf("%s after the storm: %w", name, err))
			return
		}
		rec.add(time.Since(t0), nil)
	}
	other := user + "-after"
	var after *pb.Session
	check("CreateSession", func(ctx context.Context) error {
		r, err := c.sessions.CreateSession(ctx, &pb.CreateSessionRequest{User: other})
		after = r.GetSession()
		return err
	})
	check("PostMessage", func(ctx context.Context) error {
		_, err := c.chat.PostMessage(ctx, &pb.PostMessageRequest{SessionId: sid, Message: "still here?"})
		return err
	})
	check("UpdateSession", func(ctx context.Context) error {
		_, err := c.sessions.UpdateSession(ctx, &pb.UpdateSessionRequest{SessionId: sid, Metadata: map[string]string{"k": "v"}})
		return err
	})
	check("ChatReceive and IngestMessage", func(ctx context.Context) error {
		st, err := c.chat.ChatReceive(ctx, &pb.ChatReceiveRequest{FromUser: other})
		if err != nil {
			return err
		}
		if _, err := st.Recv(); err != nil {
			return err
		}
		if _, err := c.chat.IngestMessage(ctx, &pb.IngestMessageRequest{FromUser: other, Text: "yes"}); err != nil {
			return err
		}
		f, err := st.Recv()
		if err == nil && f.GetSuccess() == nil {
			err = fmt.Errorf("frame %v, want success", f)
		}
		return err
	})
	check("CloseSession", func(ctx context.Context) error {
		_, err := c.sessions.CloseSession(ctx, &pb.CloseSessionRequest{SessionId: after.GetSessionId()})
		return err
	})
	r := rec.row("calls after a cancellation storm, redis backend", 0, 0)
	r.rssBytes = c.rss()
	r.extra = fmt.Sprintf("storm: %d calls from %d callers over %s, %d given up mid-call; ops = kinds of call answered after it",
		started.Load(), cfg.concurrency, stormFor.Round(time.Millisecond), cancelled.Load())
	r.ops, r.elapsed = len(rec.lat), time.Second
	return []row{r}, nil
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/platformtest"
)

// The platform scenarios run the server under test with a Slack account on
// a fake of Slack's Web API (internal/platformtest) served by this process,
// which answers as Slack does.

// benchPostSlack is PostMessage into a Slack session against a fake that
// answers at once: the cost of delivering through an adapter, as a ratio to
// posting into an api session (the post-grpc-memory case) in the same round.
func benchPostSlack(ctx context.Context, cfg config) ([]row, error) {
	fake := platformtest.NewSlack(benchSlackToken)
	defer fake.Close()
	c, err := startChildWith("memory", "", fake.URL())
	if err != nil {
		return nil, err
	}
	defer c.stop()
	ses, err := c.sessions.CreateSession(ctx, &pb.CreateSessionRequest{Platform: "slack", Channel: benchSlackChan, User: "U0BENCH"})
	if err != nil {
		return nil, err
	}
	req := &pb.PostMessageRequest{SessionId: ses.Session.SessionId, Message: "Your order has shipped."}
	rec, elapsed, cpu := closedLoopOn(ctx, c, cfg.concurrency, cfg.duration, func(ctx context.Context) error {
		r, err := c.chat.PostMessage(ctx, req)
		if err == nil && r.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED {
			err = fmt.Errorf("status %v", r.Status)
		}
		return err
	})
	r := rec.row("PostMessage over gRPC into a Slack session, memory backend, Slack answering at once", 0, elapsed)
	r.cpu = cpu
	r.rssBytes = c.rss()
	return []row{r}, nil
}

// benchSlackSlow posts 500 messages at once into Slack sessions against a
// fake that answers in 100 ms: nothing may serialise them.
func benchSlackSlow(ctx context.Context, _ config) ([]row, error) {
	fake := platformtest.NewSlack(benchSlackToken)
	defer fake.Close()
	fake.Latency = 100 * time.Millisecond
	c, err := startChildWith("memory", "", fake.URL())
	if err != nil {
		return nil, err
	}
	defer c.stop()
	const posts, sessions = 500, 50
	var sids []string
	for i := range sessions {
		ses, err := c.sessions.CreateSession(ctx, &pb.CreateSessionRequest{Platform: "slack", Channel: benchSlackChan, User: fmt.Sprint("U0SLOW", i)})
		if err != nil {
			return nil, err
		}
		sids = append(sids, ses.Session.SessionId)
	}
	rec := &recorder{}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range posts {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			r, err := c.chat.PostMessage(ctx, &pb.PostMessageRequest{SessionId: sids[i%sessions], Message: "m" + strconv.Itoa(i)})
			if err == nil && r.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED {
				err = fmt.Errorf("status %v", r.Status)
			}
			rec.add(time.Since(t0), err)
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	took := time.Since(began)
	r := rec.row("500 concurrent posts into Slack sessions, Slack answering in 100 ms", posts, took)
	r.rssBytes = c.rss()
	r.extra = fmt.Sprintf("all done in %s (serialised they would take %s)", took.Round(time.Millisecond), posts*fake.Latency)
	return []row{r}, nil
}

// benchSlackEvents is signed Slack events on replica B resolving waits on
// replica A, with N idle listeners on A: the latency from the event's
// POST to the success frame.
func benchSlackEvents(ctx context.Context, cfg config) ([]row, error) {
	fake := platformtest.NewSlack(benchSlackToken)
	defer fake.Close()
	cfg.matchRate = 500
	var rows []row
	for _, n := range cfg.eventNs {
		a, err := startChildWith("redis", cfg.redisURL, fake.URL())
		if err != nil {
			return nil, err
		}
		b, err := startChildWith("redis", cfg.redisURL, fake.URL())
		if err != nil {
			a.stop()
			return nil, err
		}
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		url := "http://" + b.httpAddr + "/hooks/slack/bench"
		var seq int64
		var mu sync.Mutex
		r, err := matchOnce(ctx, cfg, n, a, fmt.Sprintf("signed Slack event on B → success on A, %d events/s", cfg.matchRate),
			func(ctx context.Context, user string) error {
				mu.Lock()
				seq++
				id := "Ev" + strconv.FormatInt(seq, 10) + user
				mu.Unlock()
				body := platformtest.SlackEvent(id, benchSlackChan, user, "yes", nil)
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
				if err != nil {
					return err
				}
				req.Header = platformtest.SignSlack(benchSlackSecret, time.Now(), body)
				resp, err := client.Do(req)
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("HTTP %d", resp.StatusCode)
				}
				return nil
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

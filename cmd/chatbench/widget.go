package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// The widget scenario: N idle web widgets, each an SSE connection to
// /widget/v1/events of its own session, held by another process (as
// browsers would hold them); the server's RSS per connection, and the
// latency from a post to its event on a few measured widgets while the N
// are connected.

// widgetSession is a web session and a widget token for it.
type widgetSession struct{ id, token string }

// widgetSessions creates n web sessions named prefix-i, with a token each.
func widgetSessions(ctx context.Context, sessions pb.SessionServiceClient, prefix string, n int) ([]widgetSession, error) {
	out := make([]widgetSession, n)
	var wg sync.WaitGroup
	var first atomic.Value
	sem := make(chan struct{}, 64)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ses, err := sessions.CreateSession(ctx, &pb.CreateSessionRequest{Platform: "web", User: fmt.Sprintf("%s-%d", prefix, i)})
			if err == nil {
				var tok *pb.CreateWidgetTokenResponse
				if tok, err = sessions.CreateWidgetToken(ctx, &pb.CreateWidgetTokenRequest{SessionId: ses.Session.SessionId}); err == nil {
					out[i] = widgetSession{ses.Session.SessionId, tok.Token}
				}
			}
			if err != nil {
				first.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	if err, _ := first.Load().(error); err != nil {
		return nil, err
	}
	return out, nil
}

// widgetStream is one open event stream.
type widgetStream struct {
	body io.ReadCloser
	r    *bufio.Reader
}

// sseClient has no cap on connections per host: each stream holds one.
var sseClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: -1, DisableCompression: true}}

// openWidget opens ses's event stream on httpAddr and reads until the
// stream is set up (its first field, the reconnect delay).
func openWidget(ctx context.Context, httpAddr string, ses widgetSession) (*widgetStream, error) {
	u := "http://" + httpAddr + "/widget/v1/events?session_id=" + url.QueryEscape(ses.id) + "&token=" + url.QueryEscape(ses.token)
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := sseClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		return nil, fmt.Errorf("events: HTTP %d", resp.StatusCode)
	}
	s := &widgetStream{body: resp.Body, r: bufio.NewReaderSize(resp.Body, 512)}
	line, err := s.r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "retry:") {
		resp.Body.Close()
		return nil, fmt.Errorf("events: first line %q, %v", line, err)
	}
	return s, nil
}

// nextData is the data of the stream's next event (heartbeats skipped).
func (s *widgetStream) nextData() (string, error) {
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			return strings.TrimSpace(data), nil
		}
	}
}

// openWidgets opens a stream for each session, 128 at a time.
func openWidgets(ctx context.Context, httpAddr string, sessions []widgetSession) ([]*widgetStream, error) {
	out := make([]*widgetStream, len(sessions))
	var wg sync.WaitGroup
	var first atomic.Value
	sem := make(chan struct{}, 128)
	for i, ses := range sessions {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s, err := openWidget(ctx, httpAddr, ses)
			if err != nil {
				first.CompareAndSwap(nil, err)
				return
			}
			out[i] = s
		}()
	}
	wg.Wait()
	if err, _ := first.Load().(error); err != nil {
		closeWidgets(out)
		return nil, err
	}
	return out, nil
}

func closeWidgets(streams []*widgetStream) {
	for _, s := range streams {
		if s != nil {
			s.body.Close()
		}
	}
}

// holdWidgets is chatbench -hold-widgets: it opens the widget stream on
// httpAddr of each session in file (lines "<session id> <token>"), says
// READY once all are open, and holds them (reading whatever comes) until
// stdin closes.
func holdWidgets(httpAddr, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var sessions []widgetSession
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		id, token, _ := strings.Cut(line, " ")
		sessions = append(sessions, widgetSession{id, token})
	}
	streams, err := openWidgets(context.Background(), httpAddr, sessions)
	if err != nil {
		return err
	}
	defer closeWidgets(streams)
	for _, s := range streams {
		go func() { _, _ = io.Copy(io.Discard, s.body) }()
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// benchWidget measures, for each N, the server's RSS per idle widget
// connection and the post-to-event latency on measured widgets while the
// N are connected.
func benchWidget(ctx context.Context, cfg config) ([]row, error) {
	var rows []row
	for _, n := range cfg.widgetNs {
		r, err := widgetOnce(ctx, cfg, n)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func widgetOnce(ctx context.Context, cfg config, n int) (row, error) {
	c, err := startChild("memory", "")
	if err != nil {
		return row{}, err
	}
	defer c.stop()
	// The sessions come first, so that the figure per connection is the
	// connection's alone; the measured widgets' streams too, so that the
	// server's first buffers are in the baseline.
	const measured = 50
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	mine, err := widgetSessions(ctx, c.sessions, "measured-"+run, measured)
	if err != nil {
		return row{}, err
	}
	idle, err := widgetSessions(ctx, c.sessions, "idle-"+run, n)
	if err != nil {
		return row{}, err
	}
	file, err := os.CreateTemp("", "chatbench-widgets")
	if err != nil {
		return row{}, err
	}
	defer os.Remove(file.Name())
	w := bufio.NewWriter(file)
	for _, s := range idle {
		fmt.Fprintf(w, "%s %s\n", s.id, s.token)
	}
	if err := errors.Join(w.Flush(), file.Close()); err != nil {
		return row{}, err
	}
	streams, err := openWidgets(ctx, c.httpAddr, mine)
	if err != nil {
		return row{}, err
	}
	defer closeWidgets(streams)
	c.settle(10 * time.Second)
	base := c.rss()
	begin := time.Now()
	// The idle widgets' client ends live in another process, as browsers
	// would: their garbage collection here would be measured as latency.
	cmd, stdin, _, err := spawn(5*time.Minute, os.Stderr, nil, "-hold-widgets", c.httpAddr, "-hold-file", file.Name())
	if err != nil {
		return row{}, fmt.Errorf("idle widgets: %w", err)
	}
	defer func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	}()
	opened := time.Since(begin)
	settled := c.settle(30 * time.Second)
	rss := c.rss()

	// Posts at a fixed rate, round robin over the measured sessions; each
	// widget's reader notes when its event arrives.
	rate := 200
	posts := rate * int(max(cfg.matchFor, time.Second)/time.Second)
	sent := make([]time.Time, posts)
	var sentMu sync.Mutex
	rec := &recorder{}
	var wg sync.WaitGroup
	for i, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range (posts - i + measured - 1) / measured {
				data, err := s.nextData()
				if err != nil {
					rec.add(0, err)
					return
				}
				idx, err := postIndex(data)
				if err != nil {
					rec.add(0, err)
					continue
				}
				sentMu.Lock()
				at := sent[idx]
				sentMu.Unlock()
				rec.add(time.Since(at), nil)
			}
		}()
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	from := time.Now()
	for i := range posts {
		<-tick.C
		sentMu.Lock()
		sent[i] = time.Now()
		sentMu.Unlock()
		go func() {
			if _, err := c.chat.PostMessage(ctx, &pb.PostMessageRequest{SessionId: mine[i%measured].id, Message: "post " + strconv.Itoa(i)}); err != nil {
				rec.add(0, err)
			}
		}()
	}
	// A post that failed has no event to wait for: give up on the rest
	// after a while (closing the streams ends their readers).
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		closeWidgets(streams)
		<-done
	}
	r := rec.row("post → widget event, with N idle widgets connected", n, time.Since(from))
	r.rssBytes = c.rss()
	r.extra = fmt.Sprintf("%.1f KiB RSS per idle widget connection; N streams opened in %s, settled in %s; %d posts at %d/s to %d measured widgets; %s",
		float64(rss-base)/1024/float64(n), opened.Round(time.Millisecond), settled.Round(100*time.Millisecond), posts, rate, measured, c.gcs.during(from, time.Now()))
	return r, nil
}

// postIndex is i of an event whose text is "post <i>".
func postIndex(data string) (int, error) {
	_, after, ok := strings.Cut(data, `"text":"post `)
	if !ok {
		return 0, errors.New("an event that is not a post: " + data)
	}
	num, _, _ := strings.Cut(after, `"`)
	return strconv.Atoi(num)
}

package web

import (
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/clock"
)

// Stream writes Server-Sent Events to one client: events whose id is a
// message id (so the browser's Last-Event-ID names the last message it
// has), and a comment line every heartbeat, so that proxies and load
// balancers do not close a connection that is quiet for a while. It is
// safe for concurrent use; nothing is written after Close.
type Stream struct {
	mu     sync.Mutex
	w      http.ResponseWriter
	rc     *http.ResponseController
	clock  clock.Clock
	every  time.Duration
	timer  clock.Timer
	open   bool
	closed bool
	err    error
}

var errClosed = errors.New("the event stream is closed")

// WriteTimeout bounds each write: a client that stops reading for this
// long is cut off instead of holding the stream.
const WriteTimeout = 30 * time.Second

// Reconnect is the delay the stream asks the browser to wait before it
// reconnects (the SSE "retry" field).
const Reconnect = 2 * time.Second

// NewStream writes to w, with a heartbeat every heartbeat on clk.
func NewStream(w http.ResponseWriter, clk clock.Clock, heartbeat time.Duration) *Stream {
	return &Stream{w: w, rc: http.NewResponseController(w), clock: clk, every: heartbeat}
}

// Open sends the response's headers and the reconnect delay, and starts
// the heartbeats.
func (s *Stream) Open() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open || s.closed {
		return s.err
	}
	s.open = true
	h := s.w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// Tells nginx and its kind not to buffer the stream.
	h.Set("X-Accel-Buffering", "no")
	s.w.WriteHeader(http.StatusOK)
	s.write("retry: " + strconv.FormatInt(Reconnect.Milliseconds(), 10) + "\n\n")
	s.timer = s.clock.AfterFunc(s.every, s.beat)
	return s.err
}

// Opened reports whether Open was called: an error before it can still be
// answered with an HTTP status.
func (s *Stream) Opened() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// Event sends one event. id, when not empty, becomes the browser's
// Last-Event-ID; name "" is the default ("message"). data must be one line
// (compact JSON is).
func (s *Stream) Event(id, name string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	buf := make([]byte, 0, len(data)+len(id)+len(name)+24)
	if id != "" {
		buf = append(append(append(buf, "id: "...), id...), '\n')
	}
	if name != "" {
		buf = append(append(append(buf, "event: "...), name...), '\n')
	}
	buf = append(append(append(buf, "data: "...), data...), "\n\n"...)
	s.write(string(buf))
	return s.err
}

func (s *Stream) beat() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.err != nil {
		return
	}
	s.write(":\n\n")
	s.timer = s.clock.AfterFunc(s.every, s.beat)
}

// write sends p and flushes it, under s.mu; the first failure sticks.
func (s *Stream) write(p string) {
	if s.err != nil {
		return
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(WriteTimeout))
	if _, err := s.w.Write([]byte(p)); err != nil {
		s.err = err
		return
	}
	s.err = s.rc.Flush()
}

// Close stops the heartbeats; nothing is written after it returns.
func (s *Stream) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	// The connection may be reused for another request: no deadline.
	_ = s.rc.SetWriteDeadline(time.Time{})
}

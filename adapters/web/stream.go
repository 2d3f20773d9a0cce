package web

import (
	"bytes"
	"errors"
	"net"
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
//
// A widget's stream is idle nearly all its life, and there may be tens of
// thousands. On HTTP/1.1, Open takes the connection over from net/http
// (Hijack): an idle stream then costs its own state, and its connection
// is watched for the client leaving along with every other one
// (watchDeparture), instead of net/http's two goroutines and 10 KiB of
// buffers per request. Where the connection cannot be taken (HTTP/2), the
// stream writes through the ResponseWriter.
type Stream struct {
	mu      sync.Mutex
	w       http.ResponseWriter // until Open
	out     sink
	conn    net.Conn // when taken over
	gone    func()   // called once when a taken-over client goes away
	unwatch func()   // stops watching for that
	clock   clock.Clock
	every   time.Duration
	timer   clock.Timer
	open    bool
	closed  bool
	err     error
}

// sink is where a stream's bytes go.
type sink interface {
	Write(p []byte) (int, error)
	Flush() error
	SetWriteDeadline(t time.Time) error
}

// responseSink writes through net/http.
type responseSink struct {
	http.ResponseWriter
	rc *http.ResponseController
}

func (r responseSink) Flush() error                       { return r.rc.Flush() }
func (r responseSink) SetWriteDeadline(t time.Time) error { return r.rc.SetWriteDeadline(t) }

// connSink writes to a taken-over connection, unbuffered.
type connSink struct{ net.Conn }

func (connSink) Flush() error { return nil }

var errClosed = errors.New("the event stream is closed")

// WriteTimeout bounds each write: a client that stops reading for this
// long is cut off instead of holding the stream.
const WriteTimeout = 30 * time.Second

// Reconnect is the delay the stream asks the browser to wait before it
// reconnects (the SSE "retry" field).
const Reconnect = 2 * time.Second

// NewStream writes to w, with a heartbeat every heartbeat on clk. gone is
// called, once, when the client of a taken-over connection goes away (net/http
// tells the handler's context otherwise).
func NewStream(w http.ResponseWriter, clk clock.Clock, heartbeat time.Duration, gone func()) *Stream {
	return &Stream{w: w, clock: clk, every: heartbeat, gone: gone}
}

// Open sends the response's headers and the reconnect delay, and starts
// the heartbeats. Once Open has taken the connection over (TakenOver), the
// handler may return: the stream is the connection's owner until Close.
func (s *Stream) Open() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open || s.closed {
		return s.err
	}
	s.open = true
	w := s.w
	s.w = nil // net/http's request state is not kept alive by the stream
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// Tells nginx and its kind not to buffer the stream.
	h.Set("X-Accel-Buffering", "no")
	retry := "retry: " + strconv.FormatInt(Reconnect.Milliseconds(), 10) + "\n\n"
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		// The body runs until the connection closes.
		h.Set("Connection", "close")
		var head bytes.Buffer
		head.WriteString("HTTP/1.1 200 OK\r\n")
		_ = h.Write(&head)
		head.WriteString("\r\n" + retry)
		s.conn, s.out = conn, connSink{conn}
		s.write(head.String())
		s.unwatch = watchDeparture(conn, s.gone)
	} else {
		s.out = responseSink{w, http.NewResponseController(w)}
		w.WriteHeader(http.StatusOK)
		s.write(retry)
	}
	s.timer = s.clock.AfterFunc(s.every, s.beat)
	return s.err
}

// readDeparture calls gone when a read on conn returns: a client sends
// nothing more on an event stream, so that is when the connection ends (or
// the stream closes it; then stop, a no-op, has already been called and gone
// is harmless).
func readDeparture(conn net.Conn, gone func()) (stop func()) {
	go func() {
		var b [1]byte
		_, _ = conn.Read(b[:])
		gone()
	}()
	return func() {}
}

// Opened reports whether Open was called: an error before it can still be
// answered with an HTTP status.
func (s *Stream) Opened() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// TakenOver reports whether Open took the connection over from net/http.
func (s *Stream) TakenOver() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn != nil
}

// Event sends one event. id, when not empty, becomes the browser's
// Last-Event-ID; name "" is the default ("message"). data must be one line
// (compact JSON is).
func (s *Stream) Event(id, name string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !s.open {
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
	_ = s.out.SetWriteDeadline(time.Now().Add(WriteTimeout))
	if _, err := s.out.Write([]byte(p)); err != nil {
		s.err = err
		return
	}
	s.err = s.out.Flush()
}

// Close stops the heartbeats, and closes a taken-over connection; nothing
// is written after it returns.
func (s *Stream) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	switch {
	case s.conn != nil:
		s.unwatch()
		_ = s.conn.Close()
	case s.out != nil:
		// The connection may be reused for another request: no deadline.
		_ = s.out.SetWriteDeadline(time.Time{})
	}
}

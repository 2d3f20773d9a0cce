package server

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// bodyReads gives every HTTP request Limits.BodyTimeout to deliver its
// body, and cuts off the bodies still arriving when shutdown begins. A
// client that trickles a body would otherwise hold its connection (and
// hold shutdown up) for as long as it likes; a stream may still run for
// as long as it likes once its request has arrived.
type bodyReads struct {
	timeout time.Duration
	mu      sync.Mutex
	reading map[net.Conn]struct{}
	closed  bool
}

type connKey struct{}

// connContext is http.Server.ConnContext: it makes each request's
// connection known to the middleware.
func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

func newBodyReads(timeout time.Duration) *bodyReads {
	return &bodyReads{timeout: timeout, reading: make(map[net.Conn]struct{})}
}

func (b *bodyReads) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, ok := r.Context().Value(connKey{}).(net.Conn)
		if !ok || r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		b.reading[conn] = struct{}{}
		_ = conn.SetReadDeadline(time.Now().Add(b.timeout))
		b.mu.Unlock()
		r.Body = &deadlineBody{ReadCloser: r.Body, arrived: func() { b.arrived(conn) }}
		defer b.forget(conn)
		next.ServeHTTP(w, r)
	})
}

// arrived clears a connection's read deadline once its body has arrived,
// so the server's own reads (which notice a client going away) are not
// cut. A body that never arrives keeps its deadline after the handler
// returns: net/http then fails to read the rest, and closes the
// connection instead of waiting for it.
func (b *bodyReads) arrived(conn net.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.reading[conn]; ok {
		delete(b.reading, conn)
		_ = conn.SetReadDeadline(time.Time{})
	}
}

func (b *bodyReads) forget(conn net.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.reading, conn)
}

// stop cuts off every body still arriving, and any that would start.
func (b *bodyReads) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for conn := range b.reading {
		_ = conn.SetReadDeadline(time.Now())
	}
}

// deadlineBody is a request body that reports when it has been read to
// its end.
type deadlineBody struct {
	io.ReadCloser
	once    sync.Once
	arrived func()
}

func (d *deadlineBody) Read(p []byte) (int, error) {
	n, err := d.ReadCloser.Read(p)
	if err == io.EOF {
		d.once.Do(d.arrived)
	}
	return n, err
}

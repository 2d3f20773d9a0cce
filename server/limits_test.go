package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/server"
)

func withLimits(set func(*server.Limits)) option {
	return func(c *server.Config) {
		c.Limits = server.DefaultLimits()
		set(&c.Limits)
	}
}

// A tenant has limits.pending_listeners pending waits at most, across
// streams that come and go: RESOURCE_EXHAUSTED TOO_MANY_LISTENERS, over
// gRPC and REST (429). Another tenant has its own.
func TestPendingListenersAreCappedPerTenant(t *testing.T) {
	const keyA, keyB = "key-of-tenant-a-0001", "key-of-tenant-b-0002"
	ts := start(t, nil, nil, withLimits(func(l *server.Limits) { l.PendingListeners = 2 }),
		withKeys(testKey{keyA, "a"}, testKey{keyB, "b"}))
	ts.key = keyA
	for i := range 2 {
		// Dropped at once: the listeners outlive their streams.
		ctx, cancel := context.WithCancel(ts.ctx())
		ts.receive(ctx, &pb.ChatReceiveRequest{FromUser: fmt.Sprint("u", i)})
		cancel()
	}
	err := firstErr(ts.chat.ChatReceive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u3"}))
	wantStatus(t, err, codes.ResourceExhausted, "TOO_MANY_LISTENERS", "")
	wantREST(t, ts.rest("POST", "/v1/chat:receive", `{"from_user":"u3"}`), 429, "TOO_MANY_LISTENERS")
	ts.key = keyB
	if err := firstErr(ts.chat.ChatReceive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u3"})); err != nil {
		t.Fatalf("tenant b, under its own cap: %v", err)
	}
	// A match makes room again.
	ts.key = keyA
	ts.ingest("u0", "hi")
	if err := firstErr(ts.chat.ChatReceive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u3"})); err != nil {
		t.Fatalf("after a match made room: %v", err)
	}
}

// A tenant has limits.streams streams open on a replica at most; closing
// one makes room.
func TestOpenStreamsAreCappedPerTenant(t *testing.T) {
	const keyA, keyB = "key-of-tenant-a-0001", "key-of-tenant-b-0002"
	ts := start(t, nil, nil, withLimits(func(l *server.Limits) { l.Streams = 2 }), withKeys(testKey{keyA, "a"}, testKey{keyB, "b"}))
	ts.key = keyA
	ses := ts.createSession("u1")
	first, cancelFirst := context.WithCancel(ts.ctx())
	st, err := ts.sessions.WatchSession(first, &pb.WatchSessionRequest{SessionId: ses.SessionId})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Header(); err != nil {
		t.Fatal(err)
	}
	ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u2"})
	err = firstErr(ts.sessions.WatchSession(ts.ctx(), &pb.WatchSessionRequest{SessionId: ses.SessionId}))
	wantStatus(t, err, codes.ResourceExhausted, "TOO_MANY_LISTENERS", "")
	wantREST(t, ts.rest("POST", "/v1/chat:receive", `{"from_user":"u3"}`), 429, "TOO_MANY_LISTENERS")
	ts.key = keyB
	if err := firstErr(ts.chat.ChatReceive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u3"})); err != nil {
		t.Fatalf("tenant b: %v", err)
	}
	ts.key = keyA
	cancelFirst()
	waitFor(t, "a closed stream to make room", func() bool {
		return firstErr(ts.chat.ChatReceive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u4"})) == nil
	})
}

// gRPC metadata is bounded before authentication, as HTTP headers are.
func TestOversizedMetadataIsRefused(t *testing.T) {
	ts := start(t, nil, nil, withLimits(func(l *server.Limits) { l.HeaderBytes = 8 << 10 }))
	ctx := metadata.AppendToOutgoingContext(ts.ctx(), "x-filler", strings.Repeat("x", 16<<10))
	_, err := ts.sessions.CreateSession(ctx, &pb.CreateSessionRequest{User: "u1"})
	if err == nil {
		t.Fatal("16 KiB of metadata accepted under an 8 KiB limit")
	}
	if _, err := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{User: "u1"}); err != nil {
		t.Fatalf("a normal call after: %v", err)
	}
	r := ts.restWithHeader("X-Filler", strings.Repeat("x", 16<<10))
	if r != 431 {
		t.Fatalf("REST with 16 KiB of headers: HTTP %d, want 431", r)
	}
}

func (ts *testServer) restWithHeader(name, value string) int {
	ts.t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.base, "http://"))
	if err != nil {
		ts.t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n%s: %s\r\n\r\n", name, value)
	var code int
	if _, err := fmt.Fscanf(bufio.NewReader(conn), "HTTP/1.1 %d", &code); err != nil {
		ts.t.Fatal(err)
	}
	return code
}

// slowBody opens a connection and sends a request whose body never
// finishes arriving. It returns once the server's handler is reading the
// body: the server answers "100 Continue" then.
func (ts *testServer) slowBody() net.Conn {
	ts.t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.base, "http://"))
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.Contains(line, "100 Continue") {
		ts.t.Fatalf("no 100 Continue: %q, %v", line, err)
	}
	fmt.Fprintf(conn, "{\"user\":")
	return conn
}

// A body that trickles in is cut off after limits.body_timeout: the
// connection ends, whatever the client does. A stream, whose body arrived,
// may then run as long as it likes.
func TestSlowRequestBodiesAreCutOff(t *testing.T) {
	ts := start(t, nil, nil, withLimits(func(l *server.Limits) { l.BodyTimeout = 300 * time.Millisecond }))
	conn := ts.slowBody()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("the slow connection was not closed by the server: %v", err)
	}
	// A stream outlives the body timeout.
	s := ts.restStream("POST", "/v1/chat:receive", map[string]any{"from_user": "u1", "timeout": "60s"})
	if path(s.next(), "result", "waiting") == nil {
		t.Fatal("no waiting frame")
	}
	ts.clk.Advance(time.Minute)
	if got := str(s.next(), "result", "error", "error_code"); got != "timeout" {
		t.Fatalf("the stream's outcome %q, want timeout", got)
	}
}

// Shutdown does not wait for a body that is still arriving.
func TestShutdownCutsOffSlowBodies(t *testing.T) {
	ts := start(t, nil, nil) // the default body timeout: 15 s
	conn := ts.slowBody()
	began := time.Now()
	ts.stop()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.ReadAll(conn)
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("shutdown took %s with a slow body open; it waited for it", took.Round(time.Millisecond))
	}
}

// dialFrom is a gRPC client of ts connecting from another loopback
// address: another client address to the server.
func (ts *testServer) dialFrom(local string) *grpc.ClientConn {
	ts.t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := grpc.NewClient("passthrough:///"+strings.TrimPrefix(ts.conn.Target(), "passthrough:///"),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }))
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { conn.Close() })
	return conn
}

// forwarded is a REST call with key that came through proxies: each of
// lines is an X-Forwarded-For line, in order. It answers the HTTP status.
func (ts *testServer) forwarded(method, path, body, key string, lines ...string) int {
	ts.t.Helper()
	req, err := http.NewRequestWithContext(ts.ctx(), method, ts.base+path, strings.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	for _, l := range lines {
		req.Header.Add("X-Forwarded-For", l)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Behind a trusted proxy, failed authentications count against the client
// the proxy names (its X-Forwarded-For entry), not against the proxy,
// whose address every client shares: one client guessing keys does not
// lock out another's good key. A client cannot name itself past the
// proxy: only the entry the proxy appended counts.
func TestFailedAuthenticationsCountThePeerBehindATrustedProxy(t *testing.T) {
	const good = "good-key-of-tenant-a-01"
	for _, trusted := range []bool{true, false} {
		t.Run(map[bool]string{true: "trusted", false: "not trusted"}[trusted], func(t *testing.T) {
			ts := start(t, nil, nil, withLimits(func(l *server.Limits) { l.FailedAuthsPerMinute = 3 }), withKeys(testKey{good, "a"}),
				func(c *serverConfig) {
					if trusted {
						c.TrustedProxies = []string{"127.0.0.0/8"}
					}
				})
			get := func(key, forwarded string) int { return ts.forwarded("GET", "/v1/sessions/ses_x", "", key, forwarded) }
			for i := range 4 { // a client spoofing an entry before the proxy's changes nothing
				get(fmt.Sprint("wrong-key-000000000", i), fmt.Sprintf("198.51.100.%d, 203.0.113.7", i))
			}
			if code := get("wrong-key-0000000009", "203.0.113.7"); code != 429 {
				t.Fatalf("the guessing client: HTTP %d, want 429", code)
			}
			want := map[bool]int{true: 404, false: 429}[trusted]
			if code := get(good, "203.0.113.8"); code != want {
				t.Fatalf("another client behind the same proxy, with a good key: HTTP %d, want %d", code, want)
			}
		})
	}

	// A proxy that adds a line of its own, on the REST post path (which
	// reads its headers itself): the client's forged first line is not its
	// address, and an entry with a port, or an IPv6 one in brackets, is the
	// same client as without.
	ts := start(t, nil, nil, withLimits(func(l *server.Limits) { l.FailedAuthsPerMinute = 3 }), withKeys(testKey{good, "a"}),
		func(c *serverConfig) { c.TrustedProxies = []string{"127.0.0.0/8"} })
	post := func(key string, lines ...string) int {
		return ts.forwarded("POST", "/v1/sessions/ses_x/messages", `{"message":"hi"}`, key, lines...)
	}
	for i, own := range []string{"203.0.113.7", "203.0.113.7:40001", "203.0.113.7"} {
		post(fmt.Sprint("wrong-key-000000000", i), fmt.Sprintf("198.51.100.%d", i), own)
	}
	if code := post("wrong-key-0000000009", "198.51.100.9", "203.0.113.7"); code != 429 {
		t.Fatalf("a client forging a first line on the post path: HTTP %d, want 429", code)
	}
	for i, own := range []string{"2001:db8::7", "[2001:db8::7]:443", "[2001:db8::7]"} {
		post(fmt.Sprint("wrong-key-000000001", i), own)
	}
	if code := post("wrong-key-0000000019", "2001:db8::7"); code != 429 {
		t.Fatalf("an IPv6 client written three ways: HTTP %d, want 429", code)
	}
	if code := post(good, "198.51.100.1", "203.0.113.8"); code != 404 {
		t.Fatalf("another client, with a good key: HTTP %d, want 404", code)
	}
}

// An address that fails to authenticate limits.failed_auths_per_minute
// times is refused, good key or not, before any key is checked; another
// address is not.
func TestFailedAuthenticationsAreThrottledPerAddress(t *testing.T) {
	const good = "good-key-of-tenant-a-01"
	ts := start(t, nil, nil, withLimits(func(l *server.Limits) { l.FailedAuthsPerMinute = 3 }), withKeys(testKey{good, "a"}))
	get := func(key string) error {
		ts.key = key
		_, err := ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: "ses_x"})
		return err
	}
	for i := range 3 {
		wantStatus(t, get(fmt.Sprint("wrong-key-000000000", i)), codes.Unauthenticated, "UNAUTHENTICATED", "")
	}
	wantStatus(t, get("wrong-key-0000000009"), codes.ResourceExhausted, "RATE_LIMITED", "")
	wantStatus(t, get(good), codes.ResourceExhausted, "RATE_LIMITED", "")
	ts.key = good
	r := ts.rest("GET", "/v1/sessions/ses_x", nil)
	wantREST(t, r, 429, "RATE_LIMITED")

	// From 127.0.0.2 the good key works.
	other := pb.NewSessionServiceClient(ts.dialFrom("127.0.0.2"))
	_, err := other.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: "ses_x"})
	wantStatus(t, err, codes.NotFound, "SESSION_NOT_FOUND", "")
}

// limits.metadata_entries bounds a session's metadata as it adds up, not
// only each request's: updates that would take it past the limit are
// INVALID_ARGUMENT, over gRPC and REST, and change nothing, so that no
// session grows past what a client can read back.
func TestSessionMetadataIsBoundedAsItAddsUp(t *testing.T) {
	ts := start(t, nil, nil, withLimits(func(l *server.Limits) { l.MetadataEntries = 4 }))
	sid := ts.createSession("u1").SessionId
	batch := func(from int) map[string]string {
		m := map[string]string{}
		for i := range 3 {
			m[fmt.Sprint("k", from+i)] = "v"
		}
		return m
	}
	if _, err := ts.sessions.UpdateSession(ts.ctx(), &pb.UpdateSessionRequest{SessionId: sid, Metadata: batch(0)}); err != nil {
		t.Fatal(err)
	}
	_, err := ts.sessions.UpdateSession(ts.ctx(), &pb.UpdateSessionRequest{SessionId: sid, Metadata: batch(3)})
	wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", "metadata")
	r := ts.rest("PATCH", "/v1/sessions/"+sid, map[string]any{"metadata": batch(6)})
	wantREST(t, r, 400, "INVALID_ARGUMENT")
	if !strings.Contains(string(r.body), "limits.metadata_entries") {
		t.Fatalf("the refusal does not name its limit: %s", r.body)
	}
	if md := ts.getSession(sid).Metadata; len(md) != 3 {
		t.Fatalf("refused updates changed the metadata: %v", md)
	}
}

// A stream's request past limits.request_bytes, which the REST gateway
// sends over its own gRPC connection, is bad input like a unary call's:
// 400 INVALID_ARGUMENT, not the transport's 429 (which says "retry").
func TestRESTStreamPastRequestBytesIsInvalid(t *testing.T) {
	ts := start(t, nil, nil)
	r := ts.rest("POST", "/v1/chat:receive", map[string]any{"from_user": "u1", "keyword_filter": strings.Repeat("k", 1200<<10)})
	wantREST(t, r, 400, "INVALID_ARGUMENT")
}

package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/server"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/memory"
)

var epoch = time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)

// quiet discards logs: the fault tests provoke warnings on purpose.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestMain(m *testing.M) {
	// go-redis logs its reconnect attempts while a test has Redis down.
	redis.SetLogger(discardLogger{})
	code := m.Run()
	redistest.StopShared()
	os.Exit(code)
}

type discardLogger struct{}

func (discardLogger) Printf(context.Context, string, ...any) {}

// testServer is a real chatrelay server on loopback, with clients of both
// kinds.
type testServer struct {
	t        *testing.T
	clk      *clock.Fake
	store    store.Store
	base     string // http://127.0.0.1:port
	conn     *grpc.ClientConn
	chat     pb.ChatServiceClient
	sessions pb.SessionServiceClient
	stop     func() // shuts the server down and waits for it
	srv      *server.Server
	key      string // bearer key sent by the helpers, if any
}

type option func(*server.Config)

// memoryStore is an in-memory store with o, closed when the test ends: a
// test wraps it to see or steer what a server asks of its store.
func memoryStore(t *testing.T, o store.Options) *memory.Store {
	t.Helper()
	ms, err := memory.New(memory.Options{Options: o})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ms.Close() })
	return ms
}

// start runs a server on 127.0.0.1:0 with a fake clock, sharing st if given
// (to simulate a restart or a second replica of the same state).
func start(t *testing.T, st store.Store, clk *clock.Fake, opts ...option) *testServer {
	t.Helper()
	if clk == nil {
		clk = clock.NewFake(epoch)
	}
	if st == nil {
		st = memoryStore(t, store.Options{Clock: clk})
	}
	cfg := server.Config{
		Store:  st,
		Clock:  clk,
		Logger: quiet,
		Channels: []server.Channel{
			{Name: "support", Platform: "whatsapp", ID: "15550001111"},
			{Name: "team", Platform: "slack", ID: "C0123"},
		},
		Chatbots: []server.Chatbot{
			{ID: "bot_welcome", Name: "welcome", Greeting: "Hi {{contact.name}}, about {{session.topic}}?"},
			{ID: "bot_plain", Greeting: "Hello!"},
		},
		ShutdownTimeout: 5 * time.Second,
		Widget:          server.Widget{Secret: testWidgetSecret},
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, gl, hl) }()
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{
		t: t, clk: clk, store: st, srv: srv,
		base:     "http://" + hl.Addr().String(),
		conn:     conn,
		chat:     pb.NewChatServiceClient(conn),
		sessions: pb.NewSessionServiceClient(conn),
	}
	stopped := false
	ts.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(func() {
		conn.Close()
		ts.stop()
	})
	return ts
}

func (ts *testServer) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	ts.t.Cleanup(cancel)
	if ts.key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+ts.key)
	}
	return ctx
}

// ---- REST ----

type restResp struct {
	code   int
	body   []byte
	header http.Header
}

func (r restResp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response %d is not a JSON object: %v\n%s", r.code, err, r.body)
	}
	return m
}

func (ts *testServer) rest(method, path string, body any) restResp {
	ts.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			ts.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ts.ctx(), method, ts.base+path, rd)
	if err != nil {
		ts.t.Fatal(err)
	}
	if ts.key != "" {
		req.Header.Set("Authorization", "Bearer "+ts.key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		ts.t.Fatal(err)
	}
	return restResp{code: resp.StatusCode, body: data, header: resp.Header}
}

// ndjson is a REST server stream read line by line.
type ndjson struct {
	t      *testing.T
	resp   *http.Response
	lines  chan map[string]any
	cancel context.CancelFunc
}

func (ts *testServer) restStream(method, path string, body any) *ndjson {
	ts.t.Helper()
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, method, ts.base+path, rd)
	if err != nil {
		ts.t.Fatal(err)
	}
	if ts.key != "" {
		req.Header.Set("Authorization", "Bearer "+ts.key)
	}
	// The response headers must come within 10 s (a quiet stream that
	// never flushes them would otherwise hang the test).
	headerTimer := time.AfterFunc(10*time.Second, cancel)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || !headerTimer.Stop() {
		cancel()
		ts.t.Fatalf("%s %s: no response headers within 10s: %v", method, path, err)
	}
	s := &ndjson{t: ts.t, resp: resp, lines: make(chan map[string]any, 64), cancel: cancel}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 4<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				m = map[string]any{"unparsable": sc.Text()}
			}
			s.lines <- m
		}
	}()
	ts.t.Cleanup(func() { cancel(); resp.Body.Close() })
	return s
}

// next returns the next line, failing after 10 s.
func (s *ndjson) next() map[string]any {
	s.t.Helper()
	select {
	case m, ok := <-s.lines:
		if !ok {
			s.t.Fatal("stream ended")
		}
		return m
	case <-time.After(10 * time.Second):
		s.t.Fatal("no line within 10s")
	}
	return nil
}

// end asserts the stream closes with no further line.
func (s *ndjson) end() {
	s.t.Helper()
	select {
	case m, ok := <-s.lines:
		if ok {
			s.t.Fatalf("unexpected line after the last frame: %v", m)
		}
	case <-time.After(10 * time.Second):
		s.t.Fatal("stream did not end within 10s")
	}
}

// path walks a decoded JSON value: path(m, "result", "waiting", "conversation_id").
func path(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any, keys ...string) string {
	s, _ := path(v, keys...).(string)
	return s
}

// ---- errors ----

// wantStatus asserts err is a status with code and ErrorInfo reason, and
// (when field is not empty) a BadRequest violation on field.
func wantStatus(t *testing.T, err error, code codes.Code, reason, field string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("err = %v, want code %v", err, code)
	}
	var info *errdetails.ErrorInfo
	var bad *errdetails.BadRequest
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.BadRequest:
			bad = d
		}
	}
	if info == nil || info.Domain != "chatrelay" || info.Reason != reason {
		t.Fatalf("ErrorInfo = %v, want domain chatrelay reason %s (err %v)", info, reason, err)
	}
	if field == "" {
		return
	}
	if bad == nil {
		t.Fatalf("no BadRequest detail in %v", err)
	}
	for _, v := range bad.FieldViolations {
		if v.Field == field || strings.HasPrefix(v.Field, field+".") {
			return
		}
	}
	t.Fatalf("no violation on %q in %v", field, bad.FieldViolations)
}

// wantREST asserts a REST error response: HTTP code and the same ErrorInfo
// reason as gRPC.
func wantREST(t *testing.T, r restResp, httpCode int, reason string) {
	t.Helper()
	if r.code != httpCode {
		t.Fatalf("HTTP %d, want %d: %s", r.code, httpCode, r.body)
	}
	body := r.json(t)
	if inner, ok := body["error"].(map[string]any); ok {
		body = inner // a stream's error line: {"error": {...}}
	}
	details, _ := body["details"].([]any)
	for _, d := range details {
		if str(d, "@type") == "type.googleapis.com/google.rpc.ErrorInfo" && str(d, "reason") == reason {
			return
		}
	}
	t.Fatalf("no ErrorInfo with reason %s in %s", reason, r.body)
}

// waitFor polls cond until it holds, failing after 10 s. It waits on state,
// never on a fixed time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// firstErr is the error a server stream fails with: from opening it, or
// else from its first Recv (nil if that brings a frame).
func firstErr[T any](st grpc.ServerStreamingClient[T], err error) error {
	if err != nil {
		return err
	}
	_, err = st.Recv()
	return err
}

func recvOrFail[T any](t *testing.T, recv func() (T, error)) T {
	t.Helper()
	v, err := recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return v
}

func wantEOF[T any](t *testing.T, recv func() (T, error)) {
	t.Helper()
	if v, err := recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the terminal frame: %v, %v; want the stream to end OK", v, err)
	}
}

type serverConfig = server.Config

type testKey struct{ key, tenant string }

// withKeys configures API keys (and so, tenants).
func withKeys(keys ...testKey) option {
	return func(c *server.Config) {
		for _, k := range keys {
			c.APIKeys = append(c.APIKeys, server.APIKey{Name: k.tenant, Tenant: k.tenant, Key: k.key})
		}
	}
}

func mustStruct(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/adapters/slack"
	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/platformtest"
	"github.com/chatrelay/chatrelay/internal/redistest"
)

// ---- metrics ----

// metricsScrape is one scrape of /metrics, parsed.
type metricsScrape map[string]*dto.MetricFamily

func (ts *testServer) scrape() metricsScrape {
	ts.t.Helper()
	resp, err := http.Get(ts.base + "/metrics")
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		ts.t.Fatalf("GET /metrics: HTTP %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		ts.t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// value sums name's samples whose labels include want: counters and
// gauges by value, histograms by count. -1 when there is no such sample.
func (m metricsScrape) value(name string, want ...string) float64 {
	fam, ok := m[name]
	if !ok {
		return -1
	}
	total, found := 0.0, false
next:
	for _, s := range fam.GetMetric() {
		labels := map[string]string{}
		for _, l := range s.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
				continue next
			}
		}
		found = true
		switch {
		case s.Counter != nil:
			total += s.Counter.GetValue()
		case s.Gauge != nil:
			total += s.Gauge.GetValue()
		case s.Histogram != nil:
			total += float64(s.Histogram.GetSampleCount())
		}
	}
	if !found {
		return -1
	}
	return total
}

// A scripted run of every RPC, over gRPC and REST, with a Slack account and
// a Redis that stalls and goes away, moves every metric /metrics serves.
func TestMetricsMoveAfterEveryRPC(t *testing.T) {
	t.Parallel()
	p := newPlatforms(t)
	var proxy *redistest.Proxy
	cl := startClusterWith(t, 1, clusterOptions{
		via: func(_ int, addr string) string {
			proxy = redistest.NewProxy(t, addr)
			return proxy.Addr
		},
		server: []option{p.option(), func(c *serverConfig) { c.Metrics = prometheus.NewRegistry() }},
	})
	ts := cl.replicas[0]
	ctx := ts.ctx()
	noErr := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	before := ts.scrape()
	if v := before.value("grpc_server_handled_total", "grpc_method", "PostMessage", "grpc_code", "OK"); v != 0 {
		t.Fatalf("before any call, PostMessage handled = %v; want a zero sample (the metrics are initialised)", v)
	}

	// Sessions and messages on the api platform.
	ses := ts.createSession("u1")
	noErr(ts.sessions.GetSession(ctx, &pb.GetSessionRequest{SessionId: ses.SessionId}))
	noErr(ts.sessions.UpdateSession(ctx, &pb.UpdateSessionRequest{SessionId: ses.SessionId, Metadata: map[string]string{"k": "v"}}))
	noErr(ts.sessions.ListSessions(ctx, &pb.ListSessionsRequest{}))
	ts.post(ses.SessionId, "hello")
	noErr(ts.sessions.ListMessages(ctx, &pb.ListMessagesRequest{SessionId: ses.SessionId}))
	wctx, stopWatch := context.WithCancel(ctx)
	watch, err := ts.sessions.WatchSession(wctx, &pb.WatchSessionRequest{SessionId: ses.SessionId})
	if err != nil {
		t.Fatal(err)
	}
	recvOrFail(t, watch.Recv)
	stopWatch()

	// A wait: counted as waiting while it waits, then by its outcome.
	waiting, _ := ts.receive(ctx, &pb.ChatReceiveRequest{FromUser: "u2"})
	if v := ts.scrape().value("chatrelay_listeners_waiting"); v != 1 {
		t.Fatalf("chatrelay_listeners_waiting = %v during a wait, want 1", v)
	}
	ts.ingest("u2", "yes")
	recvOrFail(t, waiting.Recv)
	timingOut, _ := ts.receive(ctx, &pb.ChatReceiveRequest{FromUser: "u3", TimeoutMinutes: 1})
	ts.clk.Advance(2 * time.Minute)
	recvOrFail(t, timingOut.Recv)

	// Slack: a chatbot greeting and a post go out; events come in, once
	// each, and a forged one is refused.
	noErr(ts.chat.SendChatbotMessage(ctx, &pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "team", To: "U0MET"}))
	event := platformtest.SlackEvent("EvMetrics", slackChan, "U0MET", "hi", nil)
	ts.slackEvent(event)
	ts.slackEvent(event)
	ts.hook("/hooks/slack/acme", event, platformtest.SignSlack("forged", time.Now(), event))
	ts.post(ts.sessionOf("slack", "U0MET").SessionId, "to Slack")
	// A WhatsApp receipt is a callback too; paths no account serves are
	// "other", not a series each.
	ts.whatsAppWebhook(platformtest.WhatsAppStatus(waNumber, "wamid.METRICS", "delivered", "15557654321", time.Now(), 0))
	ts.hook("/hooks/slack/x1", event, nil)
	ts.hook("/hooks/x2%0a", event, nil)

	// REST.
	if r := ts.rest("GET", "/v1/sessions/"+ses.SessionId, nil); r.code != 200 {
		t.Fatalf("REST GetSession: %d %s", r.code, r.body)
	}
	noErr(ts.sessions.CloseSession(ctx, &pb.CloseSessionRequest{SessionId: ses.SessionId}))

	// Redis is busy (a script spins in it): calls queue behind the two
	// pipelines in flight.
	other := ts.createSession("u4")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	spin := cl.redis.Client(t)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				spin.Eval(context.Background(), `local t = redis.call('TIME')
repeat local n = redis.call('TIME') until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 500000`, nil)
			}
		}
	})
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					_, _ = ts.chat.PostMessage(ctx, &pb.PostMessageRequest{SessionId: other.SessionId, Message: "queued"})
				}
			}
		})
	}
	waitFor(t, "calls queued behind the pipelines in flight", func() bool {
		return ts.scrape().value("chatrelay_redis_queued_calls") > 0
	})
	close(stop)
	wg.Wait()
	// A call whose reply never comes fails as the backend's fault.
	<-func() <-chan struct{} {
		tripped := proxy.Break(other.SessionId, redistest.StallReply)
		_, err := ts.chat.PostMessage(ctx, &pb.PostMessageRequest{SessionId: other.SessionId, Message: "stalled"})
		wantStatus(t, err, codes.Unavailable, "BACKEND_UNAVAILABLE", "")
		return tripped
	}()
	// Redis goes away and comes back: the pub/sub connection is remade.
	proxy.Cut()
	proxy.Restore()
	waitFor(t, "the pub/sub reconnect to be counted", func() bool {
		return ts.scrape().value("chatrelay_pubsub_reconnects_total") >= 1
	})

	m := ts.scrape()
	for _, method := range []string{"CreateSession", "GetSession", "UpdateSession", "ListSessions", "ListMessages", "CloseSession",
		"WatchSession", "PostMessage", "SendChatbotMessage", "IngestMessage", "ChatReceive"} {
		if v := m.value("grpc_server_handled_total", "grpc_method", method); v < 1 {
			t.Errorf("grpc_server_handled_total{grpc_method=%q} = %v", method, v)
		}
		if v := m.value("grpc_server_handling_seconds", "grpc_method", method); v < 1 {
			t.Errorf("grpc_server_handling_seconds{grpc_method=%q} count = %v", method, v)
		}
	}
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"chatrelay_http_requests_total", []string{"method", "GET", "route", "/v1/sessions/{session_id}", "code", "200"}},
		{"chatrelay_http_requests_total", []string{"route", "/hooks/slack/acme", "code", "401"}},
		{"chatrelay_http_request_duration_seconds", []string{"route", "/hooks/slack/acme"}},
		{"chatrelay_listener_outcomes_total", []string{"outcome", "success"}},
		{"chatrelay_listener_outcomes_total", []string{"outcome", "timeout"}},
		{"chatrelay_messages_total", []string{"platform", "api", "direction", "outbound", "status", "delivered"}},
		{"chatrelay_messages_total", []string{"platform", "api", "direction", "inbound", "status", "received"}},
		{"chatrelay_messages_total", []string{"platform", "slack", "direction", "outbound", "status", "delivered"}},
		{"chatrelay_messages_total", []string{"platform", "slack", "direction", "inbound", "status", "received"}},
		{"chatrelay_inbound_events_total", []string{"platform", "slack", "result", "accepted"}},
		{"chatrelay_inbound_events_total", []string{"platform", "slack", "result", "duplicate"}},
		{"chatrelay_inbound_events_total", []string{"platform", "slack", "result", "bad_signature"}},
		{"chatrelay_inbound_events_total", []string{"platform", "whatsapp", "result", "accepted"}},
		{"chatrelay_http_requests_total", []string{"route", "other", "code", "404"}},
		{"chatrelay_platform_request_duration_seconds", []string{"platform", "slack", "result", "accepted"}},
		{"chatrelay_delivery_attempts_total", []string{"platform", "slack", "result", "delivered"}},
		{"chatrelay_backend_errors_total", []string{"method", pb.ChatService_PostMessage_FullMethodName}},
	} {
		if v := m.value(c.name, c.labels...); v < 1 {
			t.Errorf("%s%v = %v, want it counted", c.name, c.labels, v)
		}
	}
	if v := m.value("chatrelay_listeners_waiting"); v != 0 {
		t.Errorf("chatrelay_listeners_waiting = %v after every wait ended", v)
	}
	// No label holds an id.
	for name, fam := range m {
		for _, s := range fam.GetMetric() {
			for _, l := range s.GetLabel() {
				if v := l.GetValue(); strings.Contains(v, "ses_") || strings.Contains(v, "U0MET") || strings.Contains(v, "u1") ||
					strings.Contains(v, "x1") || strings.Contains(v, "x2") {
					t.Errorf("%s has label %s=%q", name, l.GetName(), v)
				}
			}
		}
	}
}

// Without a registry, /metrics is not served and nothing is counted.
func TestMetricsOffWithoutARegistry(t *testing.T) {
	ts := start(t, nil, nil)
	ts.post(ts.createSession("u1").SessionId, "hi")
	if r := ts.rest("GET", "/metrics", nil); r.code != 404 {
		t.Fatalf("GET /metrics without a registry: HTTP %d", r.code)
	}
}

// ---- request logs ----

// logLines is a JSON slog handler's output, read back.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// requests are the request lines logged with id.
func (l *logLines) requests(id string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "request" && m["request_id"] == id {
			out = append(out, m)
		}
	}
	return out
}

// Every request is logged once, with its method, code, duration, tenant and
// request id; the id is the caller's x-request-id, or made, and echoed.
func TestRequestsAreLoggedOnceWithTheirID(t *testing.T) {
	logs := &logLines{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ts := start(t, nil, nil, withKeys(testKey{"key-acme-0123456789", "acme"}), func(c *serverConfig) { c.Logger = logger })
	ts.key = "key-acme-0123456789"
	ses := ts.createSession("u1")

	// gRPC, with the caller's id.
	var header metadata.MD
	ctx := metadata.AppendToOutgoingContext(ts.ctx(), "x-request-id", "wf-run-42.step-3")
	if _, err := ts.chat.PostMessage(ctx, &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "hi"}, grpc.Header(&header)); err != nil {
		t.Fatal(err)
	}
	if got := header.Get("x-request-id"); len(got) != 1 || got[0] != "wf-run-42.step-3" {
		t.Fatalf("gRPC response x-request-id = %v", got)
	}
	wantLine(t, logs, "wf-run-42.step-3", map[string]any{"transport": "grpc", "method": pb.ChatService_PostMessage_FullMethodName,
		"code": "OK", "tenant": "acme"})

	// gRPC, failing, with an id made for it: the error's RequestInfo
	// names it (a success does not send a made id: see echoID).
	header = nil
	_, err := ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: "ses_missing"}, grpc.Header(&header))
	wantStatus(t, err, codes.NotFound, "SESSION_NOT_FOUND", "")
	var made string
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RequestInfo); ok {
			made = ri.RequestId
		}
	}
	if len(made) != 24 || len(header.Get("x-request-id")) != 0 {
		t.Fatalf("a made request id: RequestInfo %q, header %v", made, header.Get("x-request-id"))
	}
	wantLine(t, logs, made, map[string]any{"transport": "grpc", "code": "NotFound", "tenant": "acme"})

	// Health checks are probes: logged at debug, so not here.
	hctx := metadata.AppendToOutgoingContext(context.Background(), "x-request-id", "probe-1")
	if _, err := healthpb.NewHealthClient(ts.conn).Check(hctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if lines := logs.requests("probe-1"); len(lines) != 0 {
		t.Fatalf("a health check was logged at info: %v", lines)
	}

	// REST: one line from the HTTP layer, with the route and HTTP code,
	// not a second from the gRPC layer under it.
	req, _ := http.NewRequest("GET", ts.base+"/v1/sessions/"+ses.SessionId, nil)
	req.Header.Set("Authorization", "Bearer "+ts.key)
	req.Header.Set("X-Request-Id", "rest-call-1")
	resp := do(t, req)
	if resp.code != 200 || resp.header.Get("X-Request-Id") != "rest-call-1" {
		t.Fatalf("REST: HTTP %d, X-Request-Id %q", resp.code, resp.header.Get("X-Request-Id"))
	}
	wantLine(t, logs, "rest-call-1", map[string]any{"transport": "http", "method": "GET", "route": "/v1/sessions/{session_id}",
		"code": float64(200), "tenant": "acme"})
	req, _ = http.NewRequest("DELETE", ts.base+"/v1/sessions/"+ses.SessionId, nil)
	req.Header.Set("X-Request-Id", "rest-405")
	do(t, req)
	wantLine(t, logs, "rest-405", map[string]any{"route": "/v1/sessions/{session_id}", "code": float64(405)})

	// A REST stream, and a call with a bad key and an unusable id.
	req, _ = http.NewRequest("GET", ts.base+"/v1/sessions/"+ses.SessionId+":watch?after_message_id=msg_nope", nil)
	req.Header.Set("Authorization", "Bearer "+ts.key)
	req.Header.Set("X-Request-Id", "rest-stream-1")
	if r := do(t, req); r.code != 400 {
		t.Fatalf("watch after an unknown message: HTTP %d %s", r.code, r.body)
	}
	wantLine(t, logs, "rest-stream-1", map[string]any{"transport": "http", "route": "/v1/sessions/{session_id}:watch", "code": float64(400)})
	req, _ = http.NewRequest("GET", ts.base+"/v1/sessions/"+ses.SessionId, nil)
	req.Header.Set("Authorization", "Bearer wrong-key-0123456789")
	req.Header.Set("X-Request-Id", "no spaces allowed")
	resp = do(t, req)
	id := resp.header.Get("X-Request-Id")
	if resp.code != 401 || id == "" || id == "no spaces allowed" {
		t.Fatalf("bad key: HTTP %d, X-Request-Id %q", resp.code, id)
	}
	wantLine(t, logs, id, map[string]any{"code": float64(401), "tenant": ""})
}

func wantLine(t *testing.T, logs *logLines, id string, want map[string]any) {
	t.Helper()
	lines := logs.requests(id)
	if len(lines) != 1 {
		t.Fatalf("%d request lines with id %q, want 1: %v", len(lines), id, lines)
	}
	for k, v := range want {
		if lines[0][k] != v {
			t.Errorf("request %s: %s = %v, want %v (line %v)", id, k, lines[0][k], v, lines[0])
		}
	}
	if _, ok := lines[0]["duration"].(float64); !ok {
		t.Errorf("request %s: no duration in %v", id, lines[0])
	}
}

func do(t *testing.T, req *http.Request) restResp {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return restResp{code: resp.StatusCode, body: body, header: resp.Header}
}

// ---- traces ----

// A traced request's trace runs from the caller through the REST gateway
// and the gRPC service to the platform's API, which receives it in its
// traceparent header.
func TestTraceReachesThePlatform(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	p := newPlatforms(t)
	traced, err := slack.New(slack.Config{Name: "acme", BotToken: slackToken, SigningSecret: slackSecret, APIURL: p.slack.URL(),
		Logger: quiet, HTTPClient: adapters.Client(tp)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	p.slack.OnPost(func(r *http.Request, _ platformtest.SlackPost) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r.Header.Get("Traceparent"))
	})
	ts := start(t, nil, nil, func(c *serverConfig) {
		c.Adapters = []adapters.Adapter{traced}
		c.TracerProvider = tp
	})
	ts.slackEvent(platformtest.SlackEvent("EvTrace", slackChan, "U0TRC", "hi", nil))
	ses := ts.sessionOf("slack", "U0TRC")

	// The caller's trace.
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled, Remote: true})
	req, _ := http.NewRequest("POST", ts.base+"/v1/sessions/"+ses.SessionId+"/messages", strings.NewReader(`{"message":"traced"}`))
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), parent), propagation.HeaderCarrier(req.Header))
	if r := do(t, req); r.code != 200 {
		t.Fatalf("post: HTTP %d %s", r.code, r.body)
	}

	// And over gRPC.
	traceID2, _ := trace.TraceIDFromHex("5bf92f3577b34da6a3ce929d0e0e4737")
	parent = trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID2, SpanID: spanID, TraceFlags: trace.FlagsSampled, Remote: true})
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), parent), carrier)
	if _, err := ts.chat.PostMessage(metadata.NewOutgoingContext(ts.ctx(), metadata.New(carrier)), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "traced"}); err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	sent := append([]string(nil), got...)
	mu.Unlock()
	for i, id := range []trace.TraceID{traceID, traceID2} {
		if !strings.HasPrefix(sent[len(sent)-2+i], "00-"+id.String()+"-") {
			t.Fatalf("Slack got traceparent %q, want one in trace %s", sent[len(sent)-2+i], id)
		}
	}
	spans := func(id trace.TraceID) map[string]trace.SpanKind {
		out := map[string]trace.SpanKind{}
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID() == id {
				out[s.Name()] = s.SpanKind()
			}
		}
		return out
	}
	for id, want := range map[trace.TraceID]map[string]trace.SpanKind{
		traceID:  {"POST /v1/sessions/{session_id}/messages": trace.SpanKindServer, "HTTP POST": trace.SpanKindClient},
		traceID2: {"chatrelay.v1.ChatService/PostMessage": trace.SpanKindServer, "HTTP POST": trace.SpanKindClient},
	} {
		got := spans(id)
		for name, kind := range want {
			if got[name] != kind {
				t.Errorf("trace %s: no %s span %q; spans: %v", id, kind, name, got)
			}
		}
	}
}

package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/server"
)

func TestBadInputIsRejectedWithFieldViolations(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	long := func(n int) string { return strings.Repeat("a", n) }
	bigMeta := map[string]string{}
	for i := range 65 {
		bigMeta[string(rune('A'+i%26))+long(i)] = "v"
	}
	ctx := ts.ctx()
	stream := func(req *pb.ChatReceiveRequest) error { return firstErr(ts.chat.ChatReceive(ctx, req)) }
	watch := func(req *pb.WatchSessionRequest) error { return firstErr(ts.sessions.WatchSession(ctx, req)) }
	post := func(req *pb.PostMessageRequest) error { _, err := ts.chat.PostMessage(ctx, req); return err }
	bot := func(req *pb.SendChatbotMessageRequest) error {
		_, err := ts.chat.SendChatbotMessage(ctx, req)
		return err
	}
	ingest := func(req *pb.IngestMessageRequest) error { _, err := ts.chat.IngestMessage(ctx, req); return err }
	create := func(req *pb.CreateSessionRequest) error { _, err := ts.sessions.CreateSession(ctx, req); return err }

	cases := []struct {
		name   string
		call   func() error
		reason string
		field  string
	}{
		{"post without session_id", func() error { return post(&pb.PostMessageRequest{Message: "x"}) }, "INVALID_ARGUMENT", "session_id"},
		{"post without message", func() error { return post(&pb.PostMessageRequest{SessionId: ses.SessionId}) }, "INVALID_ARGUMENT", "message"},
		{"post message over 32 KiB", func() error { return post(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: long(32<<10 + 1)}) }, "INVALID_ARGUMENT", "message"},
		{"session id with a slash", func() error { return post(&pb.PostMessageRequest{SessionId: "ses/1", Message: "x"}) }, "INVALID_ARGUMENT", "session_id"},
		{"session id over 128 bytes", func() error { return post(&pb.PostMessageRequest{SessionId: long(129), Message: "x"}) }, "INVALID_ARGUMENT", "session_id"},
		{"idempotency key with spaces", func() error {
			return post(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: "x", IdempotencyKey: "a b"})
		}, "INVALID_ARGUMENT", "idempotency_key"},
		{"metadata over 64 entries", func() error {
			return post(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: "x", Metadata: bigMeta})
		}, "INVALID_ARGUMENT", "metadata"},
		{"metadata key over 64 bytes", func() error {
			return post(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: "x", Metadata: map[string]string{long(65): "v"}})
		}, "INVALID_ARGUMENT", "metadata"},
		{"metadata value over 1 KiB", func() error {
			return post(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: "x", Metadata: map[string]string{"k": long(1025)}})
		}, "INVALID_ARGUMENT", "metadata.k"},
		{"unknown chatbot", func() error { return bot(&pb.SendChatbotMessageRequest{Chatbot: "nobody", From: "api", To: "u1"}) }, "INVALID_ARGUMENT", "chatbot"},
		{"unknown channel", func() error { return bot(&pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "nowhere", To: "u1"}) }, "INVALID_ARGUMENT", "from"},
		{"chatbot without to", func() error { return bot(&pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "api"}) }, "INVALID_ARGUMENT", "to"},
		{"whatsapp recipient not E.164", func() error {
			return bot(&pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "support", To: "5551234"})
		}, "INVALID_ARGUMENT", "to"},
		{"chatbot session metadata too big", func() error {
			return bot(&pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "api", To: "u1", SessionMetadata: bigMeta})
		}, "INVALID_ARGUMENT", "session_metadata"},
		{"ingest without text", func() error { return ingest(&pb.IngestMessageRequest{FromUser: "u1"}) }, "INVALID_ARGUMENT", "text"},
		{"ingest without from_user", func() error { return ingest(&pb.IngestMessageRequest{Text: "hi"}) }, "INVALID_ARGUMENT", "from_user"},
		{"ingest on an unknown platform", func() error { return ingest(&pb.IngestMessageRequest{Platform: "icq", FromUser: "u1", Text: "hi"}) }, "INVALID_ARGUMENT", "platform"},
		{"ingest on slack without channel", func() error { return ingest(&pb.IngestMessageRequest{Platform: "slack", FromUser: "U1", Text: "hi"}) }, "INVALID_ARGUMENT", "channel"},
		{"ingest on a channel of another platform", func() error {
			return ingest(&pb.IngestMessageRequest{Platform: "slack", Channel: "support", FromUser: "U1", Text: "hi"})
		}, "INVALID_ARGUMENT", "channel"},
		{"ingest whole request over 1 MiB", func() error {
			return ingest(&pb.IngestMessageRequest{FromUser: "u1", Text: "hi", Raw: mustStruct(t, map[string]any{"blob": long(1 << 20)})})
		}, "INVALID_ARGUMENT", ""},
		{"create session without user", func() error { return create(&pb.CreateSessionRequest{}) }, "INVALID_ARGUMENT", "user"},
		{"create session on unknown channel", func() error { return create(&pb.CreateSessionRequest{Channel: "nowhere", User: "u1"}) }, "INVALID_ARGUMENT", "channel"},
		{"update to CLOSED", func() error {
			_, err := ts.sessions.UpdateSession(ctx, &pb.UpdateSessionRequest{SessionId: ses.SessionId, State: pb.SessionState_SESSION_STATE_CLOSED})
			return err
		}, "INVALID_ARGUMENT", "state"},
		{"negative page size", func() error {
			_, err := ts.sessions.ListMessages(ctx, &pb.ListMessagesRequest{SessionId: ses.SessionId, PageSize: -1})
			return err
		}, "INVALID_ARGUMENT", "page_size"},
		{"receive with both timeouts", func() error {
			return stream(&pb.ChatReceiveRequest{TimeoutMinutes: 1, Timeout: durationpb.New(time.Minute)})
		}, "INVALID_ARGUMENT", "timeout"},
		{"receive with negative timeout_minutes", func() error { return stream(&pb.ChatReceiveRequest{TimeoutMinutes: -1}) }, "INVALID_ARGUMENT", "timeout_minutes"},
		{"receive timeout over 7 days", func() error { return stream(&pb.ChatReceiveRequest{Timeout: durationpb.New(8 * 24 * time.Hour)}) }, "INVALID_ARGUMENT", "timeout"},
		{"receive timeout_minutes over 7 days", func() error { return stream(&pb.ChatReceiveRequest{TimeoutMinutes: 7*24*60 + 1}) }, "INVALID_ARGUMENT", "timeout_minutes"},
		{"receive timeout_minutes that overflows a Duration", func() error { return stream(&pb.ChatReceiveRequest{TimeoutMinutes: 2147483647}) }, "INVALID_ARGUMENT", "timeout_minutes"},
		{"receive timeout_minutes that wraps past the limit", func() error { return stream(&pb.ChatReceiveRequest{TimeoutMinutes: 307445735}) }, "INVALID_ARGUMENT", "timeout_minutes"},
		{"receive zero timeout", func() error { return stream(&pb.ChatReceiveRequest{Timeout: durationpb.New(0)}) }, "INVALID_ARGUMENT", "timeout"},
		{"receive bad regex", func() error {
			return stream(&pb.ChatReceiveRequest{KeywordFilter: "(unclosed", Match: pb.MatchMode_MATCH_MODE_REGEX})
		}, "INVALID_ARGUMENT", "keyword_filter"},
		{"receive regex that compiles too big", func() error {
			return stream(&pb.ChatReceiveRequest{KeywordFilter: "(.*){1000}Z", Match: pb.MatchMode_MATCH_MODE_REGEX})
		}, "INVALID_ARGUMENT", "keyword_filter"},
		{"receive regex just past the compiled-size limit", func() error {
			return stream(&pb.ChatReceiveRequest{KeywordFilter: "[a-z]{1,50}Z", Match: pb.MatchMode_MATCH_MODE_REGEX})
		}, "INVALID_ARGUMENT", "keyword_filter"},
		{"receive keyword over 256 bytes", func() error { return stream(&pb.ChatReceiveRequest{KeywordFilter: long(257)}) }, "INVALID_ARGUMENT", "keyword_filter"},
		{"receive unknown match mode", func() error { return stream(&pb.ChatReceiveRequest{Match: 99}) }, "INVALID_ARGUMENT", "match"},
		{"receive bad user id", func() error { return stream(&pb.ChatReceiveRequest{FromUser: "a user"}) }, "INVALID_ARGUMENT", "from_user"},
		{"watch with both live_only and after_message_id", func() error {
			return watch(&pb.WatchSessionRequest{SessionId: ses.SessionId, LiveOnly: true, AfterMessageId: "msg_1"})
		}, "INVALID_ARGUMENT", "live_only"},
		{"watch without session_id", func() error { return watch(&pb.WatchSessionRequest{}) }, "INVALID_ARGUMENT", "session_id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantStatus(t, c.call(), codes.InvalidArgument, c.reason, c.field)
		})
	}
	if h := ts.history(ses.SessionId); len(h) != 0 {
		t.Fatalf("rejected requests stored %d messages", len(h))
	}
}

func TestBadInputOverREST(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	cases := []struct {
		name, method, path string
		body               any
		code               int
		reason             string
	}{
		// gRPC clients cannot even encode invalid UTF-8; raw bytes arrive
		// this way.
		{"message not UTF-8", "POST", "/v1/sessions/" + ses.SessionId + "/messages", "{\"message\":\"\xff\xfe\"}", 400, "INVALID_ARGUMENT"},
		{"malformed JSON", "POST", "/v1/sessions/" + ses.SessionId + "/messages", `{"message":`, 400, "INVALID_ARGUMENT"},
		{"unknown field", "POST", "/v1/sessions/" + ses.SessionId + "/messages", `{"message":"x","colour":"red"}`, 400, "INVALID_ARGUMENT"},
		{"trailing garbage after the object", "POST", "/v1/sessions/" + ses.SessionId + "/messages", `{"message":"x"} {"message":"y"}`, 400, "INVALID_ARGUMENT"},
		{"missing message", "POST", "/v1/sessions/" + ses.SessionId + "/messages", `{}`, 400, "INVALID_ARGUMENT"},
		{"both timeouts on a stream", "POST", "/v1/chat:receive", `{"timeout_minutes":1,"timeout":"60s"}`, 400, "INVALID_ARGUMENT"},
		{"unknown chatbot", "POST", "/v1/chatbot-messages", `{"chatbot":"nobody","from":"api","to":"u1"}`, 400, "INVALID_ARGUMENT"},
		{"no such route", "GET", "/v1/nothing", nil, 404, "NOT_FOUND"},
		{"body over the limit", "POST", "/v1/inbound-messages", `{"text":"` + strings.Repeat("x", 3<<20) + `"}`, 400, "INVALID_ARGUMENT"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ts.rest(c.method, c.path, c.body)
			if c.reason == "" {
				if r.code != c.code {
					t.Fatalf("HTTP %d, want %d: %s", r.code, c.code, r.body)
				}
				return
			}
			wantREST(t, r, c.code, c.reason)
		})
	}
	// The violations name the field over REST too.
	r := ts.rest("POST", "/v1/sessions/"+ses.SessionId+"/messages", map[string]string{"message": strings.Repeat("x", 33<<10)})
	if !strings.Contains(string(r.body), `"field":"message"`) {
		t.Fatalf("no field violation for message in %s", r.body)
	}
}

func TestAPIKeysAuthenticateAndSeparateTenants(t *testing.T) {
	const keyA, keyB = "key-of-tenant-a-0001", "key-of-tenant-b-0002"
	ts := start(t, nil, nil, withKeys(testKey{keyA, "tenant-a"}, testKey{keyB, "tenant-b"}))

	_, err := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{User: "u1"})
	wantStatus(t, err, codes.Unauthenticated, "UNAUTHENTICATED", "")
	wantREST(t, ts.rest("POST", "/v1/sessions", map[string]string{"user": "u1"}), 401, "UNAUTHENTICATED")
	ts.key = "not-a-key-at-all-xyz"
	_, err = ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{User: "u1"})
	wantStatus(t, err, codes.Unauthenticated, "UNAUTHENTICATED", "")
	err = firstErr(ts.chat.ChatReceive(ts.ctx(), &pb.ChatReceiveRequest{}))
	wantStatus(t, err, codes.Unauthenticated, "UNAUTHENTICATED", "")

	ts.key = keyA
	ses := ts.createSession("u1")
	r := ts.rest("GET", "/v1/sessions/"+ses.SessionId, nil) // the gateway passes the header through
	if r.code != 200 {
		t.Fatalf("REST with a valid key: HTTP %d %s", r.code, r.body)
	}
	_, wA := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{})

	ts.key = keyB
	_, err = ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: ses.SessionId})
	wantStatus(t, err, codes.NotFound, "SESSION_NOT_FOUND", "")
	_, err = ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "x"})
	wantStatus(t, err, codes.NotFound, "SESSION_NOT_FOUND", "")
	// The same user on the same channel is another session in tenant B,
	// and B's messages never reach A's listeners.
	if b := ts.createSession("u1"); b.SessionId == ses.SessionId {
		t.Fatal("tenants share a session")
	}
	if r := ts.ingest("u1", "hi"); r.ListenersMatched != 0 {
		t.Fatalf("tenant B's message matched %d listeners of tenant A (%s)", r.ListenersMatched, wA.ConversationId)
	}

	// Health needs no key.
	ts.key = ""
	h, err := healthpb.NewHealthClient(ts.conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", h, err)
	}
}

func TestAPIKeyRateLimit(t *testing.T) {
	ts := start(t, nil, nil, func(c *serverConfig) {
		c.APIKeys = append(c.APIKeys, server.APIKey{Name: "limited", Tenant: "t", Key: "limited-key-0123456789", RatePerSecond: 0.001, Burst: 2})
	})
	ts.key = "limited-key-0123456789"
	for range 2 {
		if _, err := ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: "ses_x"}); status.Code(err) != codes.NotFound {
			t.Fatalf("within the burst: %v", err)
		}
	}
	_, err := ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: "ses_x"})
	wantStatus(t, err, codes.ResourceExhausted, "RATE_LIMITED", "")
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.RetryDelay.AsDuration() <= 0 {
		t.Fatalf("no RetryInfo in %v", err)
	}
	wantREST(t, ts.rest("GET", "/v1/sessions/ses_x", nil), 429, "RATE_LIMITED")
}

// Health, readiness, reflection and the OpenAPI document need no API key,
// even where keys are configured: probes and grpcurl can describe and check
// the service without one.
func TestHealthReadinessReflectionAndOpenAPI(t *testing.T) {
	ts := start(t, nil, nil, withKeys(testKey{"key-acme-0123456789", "acme"}))
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/openapi.json": 200} {
		if r := ts.rest("GET", path, nil); r.code != want {
			t.Fatalf("%s: HTTP %d", path, r.code)
		}
	}
	doc := ts.rest("GET", "/openapi.json", nil).json(t)
	paths, _ := doc["paths"].(map[string]any)
	for _, p := range []string{"/v1/sessions/{session_id}/messages", "/v1/chatbot-messages", "/v1/chat:receive", "/v1/inbound-messages", "/v1/sessions/{session_id}:watch"} {
		if paths[p] == nil {
			t.Errorf("openapi.json has no path %s", p)
		}
	}
	if info := doc["info"].(map[string]any); info["title"] != "chatrelay" || info["version"] != "v1" {
		t.Errorf("openapi.json info %v", info)
	}
	if typ := path(doc, "securityDefinitions", "bearer", "type"); typ != "apiKey" || path(doc, "securityDefinitions", "bearer", "name") != "Authorization" {
		t.Errorf("openapi.json securityDefinitions %v", doc["securityDefinitions"])
	}
	if sec, _ := doc["security"].([]any); len(sec) != 1 || path(sec[0], "bearer") == nil {
		t.Errorf("openapi.json security %v", doc["security"])
	}
	// :close takes no body, and the document says so.
	for _, p := range path(doc, "paths", "/v1/sessions/{session_id}:close", "post", "parameters").([]any) {
		if path(p, "in") == "body" {
			t.Errorf("openapi.json gives :close a body parameter: %v", p)
		}
	}
	waitFor(t, "SERVING", func() bool {
		h, err := healthpb.NewHealthClient(ts.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "chatrelay.v1.ChatService"})
		return err == nil && h.Status == healthpb.HealthCheckResponse_SERVING
	})
	rc, err := reflectpb.NewServerReflectionClient(ts.conn).ServerReflectionInfo(ts.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Send(&reflectpb.ServerReflectionRequest{MessageRequest: &reflectpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rc.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	if !strings.Contains(strings.Join(names, ","), "chatrelay.v1.ChatService") || !strings.Contains(strings.Join(names, ","), "chatrelay.v1.SessionService") {
		t.Fatalf("reflection lists %v", names)
	}
}

// nested is a raw payload nesting depth levels of objects: {"a":{"a":…}}.
func nested(t *testing.T, depth int) *structpb.Struct {
	t.Helper()
	var v any = "leaf"
	for range depth - 1 {
		v = map[string]any{"a": v}
	}
	return mustStruct(t, map[string]any{"a": v})
}

// A raw payload deeper or bigger than the limits is refused at ingest,
// naming raw, and nothing is stored: before, 3,400 levels were accepted and
// the session's history could never be read again.
func TestIngestRefusesRawPayloadsPastTheLimits(t *testing.T) {
	ts := start(t, nil, nil)
	ctx := ts.ctx()
	ingest := func(raw *structpb.Struct) error {
		_, err := ts.chat.IngestMessage(ctx, &pb.IngestMessageRequest{FromUser: "u1", Text: "hi", Raw: raw})
		return err
	}
	for _, depth := range []int{33, 1000} {
		wantStatus(t, ingest(nested(t, depth)), codes.InvalidArgument, "INVALID_ARGUMENT", "raw")
	}
	wantStatus(t, ingest(mustStruct(t, map[string]any{"blob": strings.Repeat("x", 64<<10)})), codes.InvalidArgument, "INVALID_ARGUMENT", "raw")
	// A list nests as an object does.
	list := mustStruct(t, map[string]any{"a": []any{[]any{[]any{"x"}}}})
	if err := ingest(list); err != nil {
		t.Fatalf("a raw of 4 levels with lists: %v", err)
	}
	// At the limit, stored and read back whole, over both transports.
	r, err := ts.chat.IngestMessage(ctx, &pb.IngestMessageRequest{FromUser: "u2", Text: "hi", Raw: nested(t, 32)})
	if err != nil {
		t.Fatalf("raw of 32 levels: %v", err)
	}
	h := ts.history(r.Session.SessionId)
	if len(h) != 1 || h[0].Raw == nil || structDepthOf(h[0].Raw.AsMap()) != 32 {
		t.Fatalf("history after a 32-level raw: %v", h)
	}
	rr := ts.rest("GET", "/v1/sessions/"+r.Session.SessionId+"/messages", nil)
	if rr.code != 200 {
		t.Fatalf("ListMessages over REST: %d %s", rr.code, rr.body)
	}
	// Over REST the limit is the same, and named.
	for _, depth := range []int{40, 3400} {
		body := `{"from_user":"u3","text":"hi","raw":` + strings.Repeat(`{"a":`, depth) + `1` + strings.Repeat(`}`, depth) + `}`
		r := ts.rest("POST", "/v1/inbound-messages", body)
		wantREST(t, r, 400, "INVALID_ARGUMENT")
		if !strings.Contains(string(r.body), `"field":"raw"`) {
			t.Fatalf("raw of %d levels over REST: no violation naming raw in %s", depth, r.body)
		}
	}
	if n := len(ts.history(r.Session.SessionId)); n != 1 {
		t.Fatalf("refused ingests stored messages: %d", n)
	}
}

func structDepthOf(v any) int {
	switch v := v.(type) {
	case map[string]any:
		d := 0
		for _, e := range v {
			d = max(d, structDepthOf(e))
		}
		return 1 + d
	case []any:
		d := 0
		for _, e := range v {
			d = max(d, structDepthOf(e))
		}
		return 1 + d
	}
	return 0
}

// rawCodec sends a request's bytes as they are: what no generated client
// can send, but any client can.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *v.(*[]byte) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

// Requests whose bytes are not a valid message are bad input: INVALID_ARGUMENT
// with ErrorInfo, through the same mapping as every other error, on unary
// and streaming methods alike, and on the public health service too.
func TestMalformedProtobufIsInvalidArgument(t *testing.T) {
	ts := start(t, nil, nil)
	bodies := map[string][]byte{
		"garbage":                   {0xff, 0xff, 0xff, 0xff},
		"truncated varint":          {0x08, 0x80},
		"string with invalid UTF-8": {0x0a, 0x02, 0xff, 0xfe},
		"length past the end":       {0x0a, 0x7f, 'x'},
	}
	methods := []struct {
		name   string
		stream bool
	}{
		{pb.ChatService_PostMessage_FullMethodName, false},
		{pb.SessionService_CreateSession_FullMethodName, false},
		{healthpb.Health_Check_FullMethodName, false},
		{pb.ChatService_ChatReceive_FullMethodName, true},
		{pb.SessionService_WatchSession_FullMethodName, true},
	}
	for what, body := range bodies {
		for _, m := range methods {
			t.Run(what+" "+m.name, func(t *testing.T) {
				ctx := ts.ctx()
				var err error
				if !m.stream {
					var out []byte
					err = ts.conn.Invoke(ctx, m.name, body, &out, grpc.ForceCodec(rawCodec{}))
				} else {
					var st grpc.ClientStream
					if st, err = ts.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, m.name, grpc.ForceCodec(rawCodec{})); err == nil {
						if err = st.SendMsg(body); err == nil {
							_ = st.CloseSend()
							var out []byte
							err = st.RecvMsg(&out)
						}
					}
				}
				wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", "")
			})
		}
	}
}

// A malformed request refused for its key (none, a wrong one) leaves
// nothing behind: grpc-go decoded it before any interceptor ran, and its
// decoding error was kept for the interceptors, which must forget it on
// every path, or anyone could fill the server's memory without a key.
func TestMalformedRequestsRefusedForTheirKeyAreForgotten(t *testing.T) {
	ts := start(t, nil, nil, withKeys(testKey{"key-acme-0123456789", "acme"}))
	body := append([]byte{0x0a, 0x7f}, make([]byte, 100)...) // a length past the end
	for _, key := range []string{"", "Bearer not-a-key-0123456789"} {
		for range 20 {
			ctx := ts.ctx()
			if key != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", key)
			}
			var out []byte
			err := ts.conn.Invoke(ctx, pb.ChatService_PostMessage_FullMethodName, body, &out, grpc.ForceCodec(rawCodec{}))
			if status.Code(err) != codes.Unauthenticated && status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("key %q: %v, want refused", key, err)
			}
		}
	}
	if n := ts.srv.UndecodedRequests(); n != 0 {
		t.Fatalf("%d refused requests' decoding errors still held", n)
	}
}

// The compiled-size limit admits what waits really use, up to the limit.
func TestRegexAtTheSizeLimitIsAccepted(t *testing.T) {
	ts := start(t, nil, nil)
	for _, re := range []string{`(.*){24}Z`, `(?i)^\s*(yes|y|yeah|ok|approve|approved|lgtm)\s*[.!]*$`, `[A-Z]{2}\d{2}[A-Z0-9]{1,30}`} {
		if err := firstErr(ts.chat.ChatReceive(ts.ctx(), &pb.ChatReceiveRequest{KeywordFilter: re, Match: pb.MatchMode_MATCH_MODE_REGEX})); err != nil {
			t.Errorf("%s: %v", re, err)
		}
	}
}

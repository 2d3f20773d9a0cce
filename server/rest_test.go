package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/server"
)

// ---- REST that behaves like HTTP ----

func TestRESTWrongMethodIs405WithAllow(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	for _, c := range []struct{ method, path, allow string }{
		{"DELETE", "/v1/sessions/" + ses.SessionId, "GET, PATCH"},
		{"PUT", "/v1/sessions/" + ses.SessionId + "/messages", "GET, POST"},
		{"GET", "/v1/chat:receive", "POST"},
		{"POST", "/v1/sessions/" + ses.SessionId + ":watch", "GET"},
	} {
		r := ts.rest(c.method, c.path, nil)
		if r.code != 405 || r.header.Get("Allow") != c.allow {
			t.Errorf("%s %s: HTTP %d, Allow %q; want 405, Allow %q (%s)", c.method, c.path, r.code, r.header.Get("Allow"), c.allow, r.body)
			continue
		}
		wantREST(t, r, 405, "METHOD_NOT_ALLOWED")
		var body struct{ Details []map[string]any }
		_ = json.Unmarshal(r.body, &body)
		named := slices.ContainsFunc(body.Details, func(d map[string]any) bool {
			return d["@type"] == "type.googleapis.com/google.rpc.RequestInfo" && d["request_id"] == r.header.Get("X-Request-Id")
		})
		if id := r.header.Get("X-Request-Id"); id == "" || !named {
			t.Errorf("%s %s: the body names no request, or not %q: %s", c.method, c.path, id, r.body)
		}
	}
	if r := ts.rest("GET", "/v1/nothing-here", nil); r.code != 404 {
		t.Errorf("an unknown path: HTTP %d", r.code)
	}
}

func TestREST401SaysBearer(t *testing.T) {
	ts := start(t, nil, nil, withKeys(testKey{"key-acme-0123456789", "acme"}))
	r := ts.rest("GET", "/v1/sessions", nil)
	if r.code != 401 || r.header.Get("WWW-Authenticate") != `Bearer realm="chatrelay"` {
		t.Fatalf("no key: HTTP %d, WWW-Authenticate %q", r.code, r.header.Get("WWW-Authenticate"))
	}
	ts.key = "wrong-key-0123456789"
	r = ts.rest("GET", "/v1/sessions", nil)
	if r.code != 401 || r.header.Get("WWW-Authenticate") != `Bearer realm="chatrelay", error="invalid_token"` {
		t.Fatalf("a wrong key: HTTP %d, WWW-Authenticate %q", r.code, r.header.Get("WWW-Authenticate"))
	}
	// A stream refused before its first frame too.
	ts.key = ""
	r = ts.rest("GET", "/v1/sessions/ses_x:watch", nil)
	if r.code != 401 || r.header.Get("WWW-Authenticate") != `Bearer realm="chatrelay"` {
		t.Fatalf("a stream without a key: HTTP %d, WWW-Authenticate %q", r.code, r.header.Get("WWW-Authenticate"))
	}
}

func TestREST429SaysRetryAfter(t *testing.T) {
	ts := start(t, nil, nil, withKeys(testKey{"key-acme-0123456789", "acme"}), func(c *serverConfig) {
		c.Limits = server.DefaultLimits()
		c.Limits.FailedAuthsPerMinute = 1
	})
	ts.key = "wrong-key-0123456789"
	var r restResp
	for range 5 {
		if r = ts.rest("GET", "/v1/sessions", nil); r.code == 429 {
			break
		}
	}
	wantREST(t, r, 429, "RATE_LIMITED")
	if ra := r.header.Get("Retry-After"); ra == "" || ra == "0" || strings.ContainsAny(ra, ".s") {
		t.Fatalf("Retry-After %q, want whole seconds", ra)
	}
}

// An error before a stream's first frame answers with its own HTTP code,
// not 200; streams are newline-delimited JSON.
func TestRESTStreamsCarryTheirStatusAndNDJSON(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	r := ts.rest("GET", "/v1/sessions/"+ses.SessionId+":watch?after_message_id=msg_nope", nil)
	wantREST(t, r, 400, "INVALID_ARGUMENT")
	if !bytes.Contains(r.body, []byte("after_message_id")) {
		t.Fatalf("body %s does not name after_message_id", r.body)
	}
	wantREST(t, ts.rest("GET", "/v1/sessions/ses_missing:watch", nil), 404, "SESSION_NOT_FOUND")

	watch := ts.restStream("GET", "/v1/sessions/"+ses.SessionId+":watch", nil)
	if ct := watch.resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Fatalf("watch Content-Type %q", ct)
	}
	for k := range watch.resp.Header {
		if strings.HasPrefix(k, "Grpc-Metadata-") {
			t.Errorf("internal metadata leaked as a header: %s: %s", k, watch.resp.Header.Get(k))
		}
	}
	recv := ts.restStream("POST", "/v1/chat:receive", map[string]any{"from_user": "u9"})
	if ct := recv.resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Fatalf("chat:receive Content-Type %q", ct)
	}
	if path(recv.next(), "result", "waiting") == nil {
		t.Fatal("no waiting frame")
	}
}

// A body field the request does not have is a BadRequest violation that
// names it and the fields there are.
func TestRESTUnknownFieldIsAFieldViolation(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	r := ts.rest("POST", "/v1/sessions/"+ses.SessionId+"/messages", `{"text":"hi"}`)
	wantREST(t, r, 400, "INVALID_ARGUMENT")
	v := violations(t, r)
	if len(v) != 1 || v[0]["field"] != "text" || !strings.Contains(v[0]["description"].(string), "message") {
		t.Fatalf("violations %v, want one on text that lists message", v)
	}
	r = ts.rest("POST", "/v1/sessions/"+ses.SessionId+"/messages", `{"message":3}`)
	if v := violations(t, r); len(v) != 1 || v[0]["field"] != "message" {
		t.Fatalf("a number for a string: violations %v (%s)", v, r.body)
	}
}

func violations(t *testing.T, r restResp) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, d := range path(r.json(t), "details").([]any) {
		if fv, ok := path(d, "field_violations").([]any); ok {
			for _, v := range fv {
				out = append(out, v.(map[string]any))
			}
		}
	}
	return out
}

// A page token that is not one is refused as such, without echoing what it
// decodes to.
func TestRESTGarbagePageToken(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	for _, tok := range []string{"garbage", "%2A%2A%2A", "Zm9vIGJhcg"} { // the last is "foo bar"
		r := ts.rest("GET", "/v1/sessions/"+ses.SessionId+"/messages?page_token="+tok, nil)
		wantREST(t, r, 400, "INVALID_ARGUMENT")
		if v := violations(t, r); len(v) != 1 || v[0]["description"] != "is not a token this server issued" {
			t.Errorf("page_token %s: %v", tok, v)
		}
	}
}

// A refused CreateSession names the session that is active.
func TestCreateSessionConflictNamesTheActiveSession(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	_, err := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{User: "u1"})
	wantStatus(t, err, codes.AlreadyExists, "SESSION_ALREADY_ACTIVE", "")
	if got := errorInfo(err).GetMetadata()["session_id"]; got != ses.SessionId {
		t.Fatalf("ErrorInfo session_id %q, want %s", got, ses.SessionId)
	}
	r := ts.rest("POST", "/v1/sessions", map[string]any{"user": "u1"})
	wantREST(t, r, 409, "SESSION_ALREADY_ACTIVE")
	if !bytes.Contains(r.body, []byte(`"session_id":"`+ses.SessionId+`"`)) {
		t.Fatalf("409 body does not name %s: %s", ses.SessionId, r.body)
	}
}

// ListMessages bounds a page by bytes, below what a default gRPC client
// accepts, however many messages were asked for.
func TestListMessagesPageIsBoundedByBytes(t *testing.T) {
	ts := start(t, nil, nil, func(c *serverConfig) {
		c.Limits = server.DefaultLimits()
		c.Limits.PageBytes = 64 << 10
	})
	ses := ts.createSession("u1")
	text := strings.Repeat("x", 30<<10)
	var want []string
	for range 5 {
		want = append(want, ts.post(ses.SessionId, text))
	}
	var got []string
	token := ""
	for pages := 0; ; pages++ {
		r, err := ts.sessions.ListMessages(ts.ctx(), &pb.ListMessagesRequest{SessionId: ses.SessionId, PageSize: 100, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Messages) == 0 || len(r.Messages) > 2 {
			t.Fatalf("page %d holds %d messages of 30 KiB, want 1 or 2 under 64 KiB", pages, len(r.Messages))
		}
		for _, m := range r.Messages {
			got = append(got, m.MessageId)
		}
		if token = r.NextPageToken; token == "" {
			break
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("paged through %v, want %v", got, want)
	}
}

// The REST PostMessage route is served by a fast path (fastPost); a path
// it leaves to the gateway (an escaped character in the session id) must
// answer every request the same way, to the byte but for ids and times.
func TestFastPostAnswersAsTheGateway(t *testing.T) {
	ts := start(t, nil, nil, withKeys(testKey{"key-acme-0123456789", "acme"}))
	ts.key = "key-acme-0123456789"
	ses := ts.createSession("u1")
	fast := "/v1/sessions/" + ses.SessionId + "/messages"
	viaGateway := "/v1/sessions/" + strings.Replace(ses.SessionId, "_", "%5F", 1) + "/messages"
	normalise := func(b []byte) string {
		var v any
		if json.Unmarshal(b, &v) != nil {
			return string(b)
		}
		var walk func(any) any
		walk = func(v any) any {
			switch x := v.(type) {
			case map[string]any:
				for k := range x {
					switch k {
					case "message_id", "delivered_at", "request_id":
						x[k] = "…"
					default:
						x[k] = walk(x[k])
					}
				}
			case []any:
				for i := range x {
					x[i] = walk(x[i])
				}
			}
			return v
		}
		out, _ := json.Marshal(walk(v))
		return string(out)
	}
	for _, c := range []struct {
		name, body, key string
	}{
		{"a post", `{"message":"hi"}`, ts.key},
		{"a post with metadata and a key", `{"message":"hi","metadata":{"a":"b"},"idempotencyKey":"%s"}`, ts.key},
		{"an empty body", ``, ts.key},
		{"an unknown field", `{"text":"hi"}`, ts.key},
		{"a number for a string", `{"message":3}`, ts.key},
		{"broken JSON", `{"message":`, ts.key},
		{"trailing garbage", `{"message":"a"} x`, ts.key},
		{"too long", `{"message":"` + strings.Repeat("x", 40<<10) + `"}`, ts.key},
		{"no key", `{"message":"hi"}`, ""},
		{"a wrong key", `{"message":"hi"}`, "wrong-key-0123456789"},
	} {
		var got [2]restResp
		for i, p := range []string{fast, viaGateway} {
			body := c.body
			if strings.Contains(body, "%s") {
				body = fmt.Sprintf(body, fmt.Sprint("key-", i))
			}
			req, _ := http.NewRequest("POST", ts.base+p, strings.NewReader(body))
			if c.key != "" {
				req.Header.Set("Authorization", "Bearer "+c.key)
			}
			got[i] = do(t, req)
		}
		f, g := got[0], got[1]
		if f.code != g.code || normalise(f.body) != normalise(g.body) {
			t.Errorf("%s: fast path %d %s\ngateway %d %s", c.name, f.code, f.body, g.code, g.body)
		}
		for _, h := range []string{"Content-Type", "WWW-Authenticate", "Retry-After"} {
			if f.header.Get(h) != g.header.Get(h) {
				t.Errorf("%s: %s %q, gateway %q", c.name, h, f.header.Get(h), g.header.Get(h))
			}
		}
		if f.header.Get("X-Request-Id") == "" {
			t.Errorf("%s: no X-Request-Id", c.name)
		}
	}
}

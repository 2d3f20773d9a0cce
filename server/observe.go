package server

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/textproto"
	"strings"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Request logs and request ids (docs/design.md §11): one line per request,
// with its method, code, duration, tenant and request id. The id is the
// caller's x-request-id, when it sends a usable one, or made here, and is
// echoed back. A REST call is logged by the HTTP layer, which sees its
// HTTP code; the gRPC interceptors log only calls made over gRPC.

const (
	requestIDHeader = "x-request-id"
	// viaGateway marks a call the REST gateway makes: the HTTP layer logs
	// it. The HTTP layer sets it on every request, over anything a client
	// sent, to a value secret to this process (interceptors.gateway), so
	// no client can pass for the gateway.
	viaGateway = "x-chatrelay-via-gateway"
)

// The headers' canonical forms, as an http.Header holds them.
var (
	canonicalRequestID  = textproto.CanonicalMIMEHeaderKey(requestIDHeader)
	canonicalViaGateway = textproto.CanonicalMIMEHeaderKey(viaGateway)
)

// requestInfo is what the layers of one HTTP request tell each other.
type requestInfo struct {
	id     string         // the request id
	route  string         // the REST route's template, set by the gateway
	tenant string         // set by authentication
	failed *status.Status // the error it answers with, set by restStatus
}

type requestInfoKey struct{}

func infoFrom(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return info
}

// requestID is id when it is a usable one (at most 128 bytes of
// [A-Za-z0-9_.:@+-]), else a new one.
func requestID(id string) string {
	if id != "" && len(id) <= 128 && strings.IndexFunc(id, func(r rune) bool { return r > 127 || !idChar(byte(r)) }) < 0 {
		return id
	}
	return newRequestID()
}

// Request ids made here are this process's random prefix (48 bits) and a
// 48-bit counter: unique across replicas and restarts in practice, and
// cheaper than reading random bytes per request, which showed in profiles.
var (
	idPrefix  = randomHex(6)
	idCounter atomic.Uint64
)

func newRequestID() string {
	var b [24]byte
	copy(b[:], idPrefix)
	n := idCounter.Add(1)
	hex.Encode(b[12:], []byte{byte(n >> 40), byte(n >> 32), byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	return string(b[:])
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// observeHTTP logs and counts every HTTP request, and gives it an id.
func (s *Server) observeHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		began := time.Now()
		id := requestID(r.Header.Get(requestIDHeader))
		r.Header.Set(requestIDHeader, id)
		r.Header.Set(viaGateway, s.ic.gateway)
		w.Header().Set("X-Request-Id", id)
		rec := &statusRecorder{ResponseWriter: w}
		info := &rec.own
		info.id = id
		rec.info = info
		r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))
		next.ServeHTTP(rec, r)
		took := time.Since(began)
		route := s.routeOf(r)
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		s.metrics.httpRequest(r.Method, route, code, took)
		tenant := info.tenant
		if tenant == "" {
			tenant = s.ic.keys.tenantOf(r.Header.Get("Authorization"))
		}
		level := slog.LevelInfo
		if route == "/healthz" || route == "/readyz" || route == "/metrics" {
			level = slog.LevelDebug // probes and scrapes: every few seconds
		}
		s.cfg.Logger.Log(r.Context(), level, "request", "transport", "http", "method", r.Method, "route", route,
			"code", code, "duration", took, "tenant", tenant, "request_id", id)
	})
}

// fixedRoute names a request's route for metrics and logs when the REST
// gateway did not: a fixed path, a platform callback, or "other" (never
// the path itself, which could hold anything).
func (s *Server) fixedRoute(path string) string {
	switch path {
	case "/healthz", "/readyz", "/metrics", "/openapi.json",
		"/widget.js", "/widget/demo", "/widget/demo.css", widgetEvents, widgetMessages:
		return path
	}
	if s.hooks[path] {
		return path // a configured account's callback: a bounded set
	}
	return "other"
}

// noteRoute tells the HTTP layer which REST route the gateway chose, for
// its log line, metrics and span name. The gateway's answers call it,
// success or error: ctx is then the call's annotated context.
func noteRoute(ctx context.Context) {
	if info := infoFrom(ctx); info != nil {
		info.route, _ = runtime.HTTPPathPattern(ctx)
	}
}

// routeOf is the route of r for metrics, logs and spans: the REST route's
// template once the gateway chose it, or fixedRoute's name.
func (s *Server) routeOf(r *http.Request) string {
	if info := infoFrom(r.Context()); info != nil && info.route != "" {
		return info.route
	}
	return s.fixedRoute(r.URL.Path)
}

// statusRecorder keeps a response's status code, and sets an error's
// headers as its code is written; it passes Flush and Unwrap on, which
// streaming needs.
type statusRecorder struct {
	http.ResponseWriter
	info *requestInfo
	code int
	own  requestInfo // info, allocated with the recorder
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
		if code >= 400 && s.info.failed != nil {
			errorHeaders(s.Header(), s.info.failed)
		}
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Flush() { _ = http.NewResponseController(s.ResponseWriter).Flush() }

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// callInfo is what the gRPC interceptors learn of a call for its log line.
type callInfo struct {
	id      string
	gateway bool // made by the REST gateway: the HTTP layer logs it
	echo    bool // the caller sent the id: echo it in the response header
	began   time.Time
}

// A REST call the gateway runs in process carries the HTTP layer's
// requestInfo in its context: that is all it takes. A stream the gateway
// calls over its loopback connection carries the viaGateway mark instead,
// which only the stream interceptor looks for (stream is set). Metadata is
// read with ValueFromIncomingContext, which does not copy it all as
// FromIncomingContext does: these lookups showed in profiles.
func (ic *interceptors) newCallInfo(ctx context.Context, stream bool) callInfo {
	c := callInfo{began: time.Now()}
	if info := infoFrom(ctx); info != nil {
		c.gateway, c.id = true, info.id
		return c
	}
	if v := metadata.ValueFromIncomingContext(ctx, requestIDHeader); len(v) > 0 {
		c.id = v[len(v)-1]
	}
	id := requestID(c.id)
	c.echo = c.id != "" && c.id == id
	c.id = id
	if stream {
		if v := metadata.ValueFromIncomingContext(ctx, viaGateway); len(v) == 1 {
			c.gateway = subtle.ConstantTimeCompare([]byte(v[0]), []byte(ic.gateway)) == 1
		}
	}
	return c
}

// log writes the call's line, unless the HTTP layer does.
func (ic *interceptors) log(ctx context.Context, c callInfo, method string, err error) {
	if c.gateway {
		return
	}
	level := slog.LevelInfo
	if public(method) {
		level = slog.LevelDebug // health checks and reflection: probes and tools
	}
	if !ic.logger.Enabled(ctx, level) {
		return // before the line's values are worked out
	}
	ic.logger.Log(ctx, level, "request", "transport", "grpc", "method", method, "code", status.Code(err).String(),
		"duration", time.Since(c.began), "tenant", tenantFrom(ctx), "request_id", c.id)
}

// echoID sends the caller's request id back in the response headers. An
// id made here is not sent on a gRPC call's success: a new value in every
// response defeats HPACK's table, and cost a tenth of PostMessage's server
// CPU in chatbench. It is in the log line, and in RequestInfo when the call
// fails (finish).
func echoID(ctx context.Context, c callInfo) {
	if c.echo {
		_ = grpc.SetHeader(ctx, metadata.MD{requestIDHeader: {c.id}})
	}
}

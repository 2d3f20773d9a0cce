package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chatrelay/chatrelay/adapters/web"
	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/store"
)

// Widget configures the built-in web widget (docs/design.md §12). The
// configuration file's `widget:` section; the zero value of each field but
// Secret takes the default noted.
type Widget struct {
	// SecretEnv names the environment variable that holds Secret.
	SecretEnv string `yaml:"secret_env"`
	// Secret signs widget tokens: at least 32 bytes, and the same on every
	// replica of a deployment, so that each accepts the tokens the others
	// mint. Empty: CreateWidgetToken is refused (cmd/chatrelay makes a
	// random one on the memory backend, where there is one process).
	Secret string `yaml:"-"`
	// AllowedOrigins are the sites whose pages may call the widget's
	// endpoints from the browser, each "scheme://host[:port]", matched
	// exactly. The server's own pages (the demo) need no entry.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// TokenTTL is a token's lifetime when CreateWidgetToken names none;
	// default 1 h.
	TokenTTL time.Duration `yaml:"token_ttl"`
	// MaxTokenTTL bounds the lifetime a caller may ask for; default 24 h.
	MaxTokenTTL time.Duration `yaml:"max_token_ttl"`
	// ConnectionsPerSession caps a session's open event streams on one
	// replica (a visitor's tabs); default 5.
	ConnectionsPerSession int `yaml:"connections_per_session"`
	// Streams caps a tenant's open event streams on one replica; default
	// 10,000. They are counted apart from limits.streams, so that a site's
	// visitors cannot take the streams its backend waits on.
	Streams int `yaml:"streams"`
	// Heartbeat is how often an idle event stream sends a comment, so that
	// proxies do not close it; default 15 s.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// NoDemo leaves the demo page (/widget/demo) out. It is a working chat
	// on the hub's own origin for whoever holds a token, which a
	// deployment that serves only its sites' pages has no use for.
	NoDemo bool `yaml:"no_demo"`
	// MessagesPerMinute caps what a session's visitor may send, across
	// replicas (10 at once at most); default 30. A token is the page's
	// to use, and anyone on the page holds it.
	MessagesPerMinute int `yaml:"messages_per_minute"`
}

func (w *Widget) setDefaults() error {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&w.TokenTTL, time.Hour)
	def(&w.MaxTokenTTL, 24*time.Hour)
	def(&w.Heartbeat, 15*time.Second)
	if w.ConnectionsPerSession == 0 {
		w.ConnectionsPerSession = 5
	}
	if w.MessagesPerMinute == 0 {
		w.MessagesPerMinute = 30
	}
	if w.Streams == 0 {
		w.Streams = 10_000
	}
	switch {
	case w.TokenTTL < 0 || w.MaxTokenTTL < 0 || w.Heartbeat < 0 || w.ConnectionsPerSession < 0 || w.MessagesPerMinute < 0 || w.Streams < 0:
		return errors.New("widget: durations, connections_per_session, messages_per_minute and streams must not be negative")
	case w.TokenTTL > w.MaxTokenTTL:
		return fmt.Errorf("widget: token_ttl (%s) exceeds max_token_ttl (%s)", w.TokenTTL, w.MaxTokenTTL)
	}
	for _, o := range w.AllowedOrigins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
			return fmt.Errorf("widget: allowed_origins: %q is not an origin (scheme://host[:port])", o)
		}
	}
	return nil
}

// widget serves the web widget: its script and demo page (adapters/web),
// and its two endpoints, which a widget token authorizes instead of an API
// key: the session's events, on WatchSession's own machinery, and the
// visitor's messages, through IngestMessage.
type widget struct {
	s       *Server
	tokens  *web.Tokens // nil without a secret
	origins map[string]bool
	conns   *streamCounts // per tenant and session
	streams *streamCounts // per tenant
	codec   runtime.Marshaler
	// running are the event streams running: once one has taken its
	// connection over, net/http's Shutdown no longer waits for it. Once
	// wait has begun (closing, under mu), no stream starts: a WaitGroup
	// may not grow from zero while it is waited on.
	running sync.WaitGroup
	mu      sync.Mutex
	closing bool
}

func newWidget(s *Server) (*widget, error) {
	cfg := s.cfg.Widget
	w := &widget{s: s, origins: map[string]bool{}, codec: newJSONCodec()}
	for _, o := range cfg.AllowedOrigins {
		w.origins[o] = true
	}
	w.streams = newStreamCounts(cfg.Streams, func(open, limit int) error {
		return &codedError{code: codes.ResourceExhausted, reason: reasonTooManyListeners,
			msg: fmt.Sprintf("the tenant has %d widget streams open on this replica; the limit is %d (widget.streams)", open, limit)}
	})
	w.conns = newStreamCounts(cfg.ConnectionsPerSession, func(open, limit int) error {
		return &codedError{code: codes.ResourceExhausted, reason: reasonTooManyListeners,
			msg: fmt.Sprintf("the session has %d widget connections open on this replica; the limit is %d (widget.connections_per_session)", open, limit)}
	})
	if cfg.Secret != "" {
		t, err := web.NewTokens([]byte(cfg.Secret), s.cfg.Clock)
		if err != nil {
			return nil, fmt.Errorf("config: widget: %w", err)
		}
		w.tokens = t
	}
	return w, nil
}

// The widget's endpoints.
const (
	widgetEvents   = "/widget/v1/events"
	widgetMessages = "/widget/v1/messages"
)

func (w *widget) register(mux *http.ServeMux) {
	assets := web.Assets()
	mux.Handle("GET /widget.js", assets)
	if !w.s.cfg.Widget.NoDemo {
		mux.Handle("GET /widget/demo", assets)
		mux.Handle("GET /widget/demo.css", assets)
	}
	mux.HandleFunc("GET "+widgetEvents, w.events)
	mux.HandleFunc("POST "+widgetMessages, w.messages)
	mux.HandleFunc("OPTIONS "+widgetEvents, w.preflight)
	mux.HandleFunc("OPTIONS "+widgetMessages, w.preflight)
}

// CreateWidgetToken mints a token for one active web session.
func (s *sessionService) CreateWidgetToken(ctx context.Context, req *pb.CreateWidgetTokenRequest) (*pb.CreateWidgetTokenResponse, error) {
	cfg := s.cfg.Widget
	chk := s.checker()
	chk.id("session_id", req.SessionId, true)
	ttl := cfg.TokenTTL
	if req.Ttl != nil {
		switch d := req.Ttl.AsDuration(); {
		case req.Ttl.CheckValid() != nil || d <= 0:
			chk.add("ttl", "must be a positive duration")
		case d > cfg.MaxTokenTTL:
			chk.add("ttl", "is %s; the limit is %s (widget.max_token_ttl)", d, cfg.MaxTokenTTL)
		default:
			ttl = d
		}
	}
	if err := chk.err(); err != nil {
		return nil, err
	}
	if s.widget.tokens == nil {
		return nil, &codedError{code: codes.FailedPrecondition, reason: reasonFailedPrecondition,
			msg: "the widget has no secret to sign tokens with: set widget.secret_env (every replica the same)"}
	}
	tenant := tenantFrom(ctx)
	ses, err := s.cfg.Store.GetSession(ctx, tenant, req.SessionId)
	switch {
	case err != nil:
		return nil, err
	case ses.Platform != platformWeb:
		return nil, invalid("session_id", "is a %s session; widget tokens are for web sessions", ses.Platform)
	case ses.State == store.StateClosed:
		return nil, store.ErrSessionClosed
	case ses.State == store.StateExpired:
		return nil, store.ErrSessionExpired
	}
	exp := time.UnixMilli(s.cfg.Clock.Now().Add(ttl).UnixMilli())
	return &pb.CreateWidgetTokenResponse{
		Token:     s.widget.tokens.Mint(web.Claims{Tenant: tenant, SessionID: ses.ID, Expires: exp}),
		SessionId: ses.ID,
		ExpiresAt: timestamppb.New(exp),
	}, nil
}

// authorize checks a widget request's token against the session it names:
// a missing, forged or expired token is UNAUTHENTICATED, a token of
// another session PERMISSION_DENIED.
func (w *widget) authorize(r *http.Request, sessionID, token string) (web.Claims, error) {
	chk := w.s.checker()
	chk.id("session_id", sessionID, true)
	if err := chk.err(); err != nil {
		return web.Claims{}, err
	}
	unauthenticated := func(msg string) error {
		return &codedError{code: codes.Unauthenticated, reason: reasonUnauthenticated, msg: msg}
	}
	switch {
	case w.tokens == nil:
		return web.Claims{}, unauthenticated("the widget is not configured on this server (widget.secret_env)")
	case token == "":
		return web.Claims{}, unauthenticated("missing widget token: ?token= on " + widgetEvents + ", `Authorization: Bearer` on " + widgetMessages)
	}
	c, err := w.tokens.Verify(token)
	if err != nil {
		return web.Claims{}, unauthenticated(err.Error())
	}
	if c.SessionID != sessionID {
		return web.Claims{}, &codedError{code: codes.PermissionDenied, reason: reasonPermissionDenied,
			msg: "the widget token is for another session"}
	}
	if info := infoFrom(r.Context()); info != nil {
		info.tenant = c.Tenant
	}
	return c, nil
}

// cors applies widget.allowed_origins to a request from a browser: the
// server's own pages and exactly the origins listed may call; any other is
// refused before anything is done (a POST need not be preflighted to
// arrive).
func (w *widget) cors(rw http.ResponseWriter, r *http.Request) bool {
	rw.Header().Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	switch {
	case origin == "" || sameOrigin(origin, r):
		return true
	case w.origins[origin]:
		rw.Header().Set("Access-Control-Allow-Origin", origin)
		return true
	}
	w.fail(rw, r, &codedError{code: codes.PermissionDenied, reason: reasonPermissionDenied,
		msg: fmt.Sprintf("origin %s is not in widget.allowed_origins", origin)})
	return false
}

// sameOrigin reports whether origin is the server's own, as the request
// reached it (the scheme may differ behind a TLS-terminating proxy).
func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

// preflight answers a browser's CORS preflight of the widget's endpoints.
func (w *widget) preflight(rw http.ResponseWriter, r *http.Request) {
	if !w.cors(rw, r) {
		return
	}
	h := rw.Header()
	h.Set("Access-Control-Allow-Methods", "GET, POST")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID")
	h.Set("Access-Control-Max-Age", "600")
	rw.WriteHeader(http.StatusNoContent)
}

// fail answers err as the REST API answers errors: the HTTP status of its
// code, and the status as JSON.
func (w *widget) fail(rw http.ResponseWriter, r *http.Request, err error) {
	st := toStatus(err)
	logError(w.s.cfg.Logger, r.URL.Path, err, st)
	if info := infoFrom(r.Context()); info != nil {
		info.failed = st
	}
	body, merr := w.codec.Marshal(st.Proto())
	if merr != nil {
		body = []byte(`{}`)
	}
	errorHeaders(rw.Header(), st)
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(runtime.HTTPStatusFromCode(st.Code()))
	_, _ = rw.Write(body)
}

// events streams the session's messages as Server-Sent Events: history
// after Last-Event-ID (or ?after=, for a page that reconnects by itself),
// then live, each message with its id as the event's. It is WatchSession,
// written as SSE, on a goroutine of its own: once the stream has taken the
// connection over from net/http (web.Stream), the handler returns and the
// request is logged; the stream goes on until the session ends, the client
// leaves, the token expires or the server stops.
func (w *widget) events(rw http.ResponseWriter, r *http.Request) {
	if !w.cors(rw, r) {
		return
	}
	q := r.URL.Query()
	c, err := w.authorize(r, q.Get("session_id"), q.Get("token"))
	if err != nil {
		w.fail(rw, r, err)
		return
	}
	after := r.Header.Get("Last-Event-ID")
	if after == "" {
		after = q.Get("after")
	}
	release, err := w.streams.acquire(c.Tenant)
	if err != nil {
		w.fail(rw, r, err)
		return
	}
	releaseConn, err := w.conns.acquire(c.Tenant + "/" + c.SessionID)
	if err != nil {
		release()
		w.fail(rw, r, err)
		return
	}
	// The stream's context outlives the request's once it has the
	// connection (until then the client leaving ends it), and holds
	// nothing of it: the request's context reaches net/http's state for
	// the connection, its buffers, which an idle stream has no use for.
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), tenantKey{}, c.Tenant))
	sw := &sseWatch{ctx: ctx, es: web.NewStream(rw, w.s.cfg.Clock, w.s.cfg.Widget.Heartbeat, cancel),
		detach: context.AfterFunc(r.Context(), cancel), taken: make(chan struct{})}
	clk := w.s.cfg.Clock
	expiry := clk.AfterFunc(c.Expires.Sub(clk.Now()), func() { sw.expired.Store(true); cancel() })
	sw.release = func() {
		expiry.Stop()
		sw.detachRequest()
		cancel()
		releaseConn()
		release()
	}
	taken, done := sw.taken, make(chan error, 1)
	if !w.begin() {
		sw.release()
		w.fail(rw, r, &codedError{code: codes.Unavailable, reason: reasonShuttingDown, msg: "the server is shutting down; reconnect"})
		return
	}
	go w.stream(&pb.WatchSessionRequest{SessionId: c.SessionID, AfterMessageId: after}, sw, done)
	select {
	case <-taken:
	case err := <-done:
		if err != nil {
			w.fail(rw, r, err)
		}
	}
}

// stream runs WatchSession into sw, on the stream's own goroutine, and
// ends it. An idle widget costs little more than this goroutine's stack
// (docs/design.md §12), so the frames it waits on stay small: the work after
// the watch is in end.
func (w *widget) stream(req *pb.WatchSessionRequest, sw *sseWatch, done chan<- error) {
	defer w.running.Done()
	defer sw.release()
	done <- w.end(sw, w.watch(req, sw))
}

// watch is WatchSession into sw. A panic ends the stream as an error, as
// interceptors.stream ends a gRPC stream's: this goroutine is not one of
// net/http's, which would have recovered it.
func (w *widget) watch(req *pb.WatchSessionRequest, sw *sseWatch) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			w.s.cfg.Logger.Error("widget stream panicked", "err", err)
		}
	}()
	return w.s.sessions.WatchSession(req, sw)
}

// begin counts a stream among those running, unless shutdown is waiting
// for them already.
func (w *widget) begin() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing {
		return false
	}
	w.running.Add(1)
	return true
}

// wait waits until every event stream has ended (they end when shutdown
// begins), or ctx does.
func (w *widget) wait(ctx context.Context) error {
	w.mu.Lock()
	w.closing = true
	w.mu.Unlock()
	done := make(chan struct{})
	go func() { w.running.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// end closes a stream whose watch returned err, saying why where the
// browser must not just reconnect. It answers the error of a stream that
// never opened, for the handler to answer with its HTTP status, or nil.
func (w *widget) end(sw *sseWatch, err error) error {
	expired := sw.expired.Load()
	if expired {
		err = errTokenExpired
	}
	if !sw.es.Opened() {
		return err
	}
	defer sw.es.Close()
	switch {
	case expired:
	case err == nil || sw.ctx.Err() != nil:
		return nil // the session ended (said so), or the client left
	}
	st := toStatus(err)
	if st.Code() == codes.Unavailable {
		return nil // the browser reconnects by itself, perhaps to another replica
	}
	data, _ := json.Marshal(map[string]string{"reason": reasonOf(st), "message": st.Message()})
	_ = sw.es.Event("", "failed", data)
	return nil
}

// messages ingests the visitor's text as the session's user, as
// IngestMessage does: its limits, its idempotency key, its matching of
// ChatReceive listeners.
func (w *widget) messages(rw http.ResponseWriter, r *http.Request) {
	if !w.cors(rw, r) {
		return
	}
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	c, err := w.authorize(r, r.URL.Query().Get("session_id"), token)
	if err != nil {
		w.fail(rw, r, err)
		return
	}
	n := w.s.cfg.Widget.MessagesPerMinute
	rate := store.Rate{PerSecond: float64(n) / 60, Burst: min(n, 10)}
	if wait, err := w.s.cfg.Store.Take(r.Context(), "widget:"+c.Tenant+"/"+c.SessionID, rate, 1); err != nil || wait > 0 {
		if err == nil {
			err = rateLimited(fmt.Sprintf("the session's visitor may send %d messages a minute (widget.messages_per_minute)", n), wait)
		}
		w.fail(rw, r, err)
		return
	}
	var in struct {
		Text           string `json:"text"`
		IdempotencyKey string `json:"idempotency_key"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(rw, r.Body, int64(w.s.cfg.Limits.RequestBytes)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			err = invalid("", "the request is over %d bytes (limits.request_bytes)", tooBig.Limit)
		} else {
			err = invalid("", `the body must be a JSON object {"text": …, "idempotency_key": …}: %v`, err)
		}
		w.fail(rw, r, err)
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		w.fail(rw, r, invalid("", "the body must hold one JSON object and nothing after it"))
		return
	}
	ctx := context.WithValue(r.Context(), tenantKey{}, c.Tenant)
	resp, err := w.s.chat.IngestMessage(ctx, &pb.IngestMessageRequest{SessionId: c.SessionID, Text: in.Text, IdempotencyKey: in.IdempotencyKey})
	if err != nil {
		w.fail(rw, r, err)
		return
	}
	writeJSON(rw, http.StatusOK, widgetMessageOf(resp.Message))
}

// widgetMessage is a message as the widget sees it: what a visitor may
// read, and none of the tenant's metadata or the raw payload.
type widgetMessage struct {
	ID string `json:"id"`
	// Direction is "inbound" (the visitor's) or "outbound".
	Direction string `json:"direction"`
	Text      string `json:"text"`
	// Status is "received" for the visitor's; an outbound message's
	// delivery: "pending", "sent", "delivered", "read" or "failed".
	Status string `json:"status"`
	At     string `json:"at"` // RFC 3339
}

func widgetMessageOf(m *pb.Message) widgetMessage {
	return widgetMessage{
		ID:        m.MessageId,
		Direction: strings.ToLower(strings.TrimPrefix(m.Direction.String(), "DIRECTION_")),
		Text:      m.Text,
		Status:    wireStatus(m.Status),
		At:        m.CreatedAt.AsTime().Format(time.RFC3339Nano),
	}
}

func wireStatus(s pb.MessageStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "MESSAGE_STATUS_"))
}

// sseWatch is a WatchSession stream written as Server-Sent Events: each
// message an event with its id, a status change a "status" event, the end
// an "ended" event. When the stream takes the connection over, taken is
// closed (the handler returns) and detach stops the request's context from
// ending the stream.
type sseWatch struct {
	ctx     context.Context
	es      *web.Stream
	taken   chan struct{}
	expired atomic.Bool // the token expired: the stream ends UNAUTHENTICATED
	release func()      // once the stream is over

	mu     sync.Mutex
	detach func() bool // nil once called
}

// detachRequest stops the request's context from ending the stream, and
// lets go of it.
func (s *sseWatch) detachRequest() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.detach != nil {
		s.detach()
		s.detach = nil
	}
}

func (s *sseWatch) Context() context.Context     { return s.ctx }
func (s *sseWatch) SetHeader(metadata.MD) error  { return nil }
func (s *sseWatch) SendHeader(metadata.MD) error { return s.open() }
func (s *sseWatch) SetTrailer(metadata.MD)       {}
func (s *sseWatch) RecvMsg(any) error            { return io.EOF }
func (s *sseWatch) SendMsg(m any) error          { return s.Send(m.(*pb.WatchSessionResponse)) }

func (s *sseWatch) open() error {
	if err := s.es.Open(); err != nil {
		return err
	}
	if s.es.TakenOver() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.taken != nil {
			s.detach()
			s.detach = nil
			close(s.taken)
			s.taken = nil
		}
	}
	return nil
}

func (s *sseWatch) Send(f *pb.WatchSessionResponse) error {
	if err := s.open(); err != nil {
		return err
	}
	var id, name string
	var v any
	switch e := f.Event.(type) {
	case *pb.WatchSessionResponse_Message:
		id, v = e.Message.MessageId, widgetMessageOf(e.Message)
	case *pb.WatchSessionResponse_MessageStatus:
		name, v = "status", map[string]string{"id": e.MessageStatus.MessageId, "status": wireStatus(e.MessageStatus.Status)}
	case *pb.WatchSessionResponse_Ended:
		name, v = "ended", map[string]string{"state": strings.ToLower(strings.TrimPrefix(e.Ended.State.String(), "SESSION_STATE_"))}
	default:
		return nil
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.es.Event(id, name, data)
}

// reasonOf is a status's ErrorInfo reason.
func reasonOf(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.Reason
		}
	}
	return ""
}

// errTokenExpired ends a stream whose token expired while it was open.
var errTokenExpired = &codedError{code: codes.Unauthenticated, reason: reasonUnauthenticated, msg: web.ErrExpired.Error()}

// reasonFailedPrecondition is CreateWidgetToken's reason on a server with no
// widget secret.
const reasonFailedPrecondition = "FAILED_PRECONDITION"

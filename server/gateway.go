package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/chatrelay/chatrelay"
	"github.com/chatrelay/chatrelay/adapters"
	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// httpHandler serves the REST gateway, the platforms' callbacks
// (/hooks/<platform>/<name>), /openapi.json, /healthz and /readyz.
// Unary REST calls run the services in process, through the same
// interceptors as gRPC (auth, limits, error mapping); the two streaming
// calls go over a gRPC connection to this server (conn), which the
// gateway's in-process mode does not support.
func (s *Server) httpHandler(ctx context.Context, conn *grpc.ClientConn) http.Handler {
	codec := newJSONCodec()
	opts := []runtime.ServeMuxOption{
		runtime.WithMarshalerOption(runtime.MIMEWildcard, codec),
		// The request id and the gateway's mark go to the call as they
		// are (the HTTP layer set them, so they are in canonical form);
		// the rest as the gateway forwards them.
		runtime.WithIncomingHeaderMatcher(func(key string) (string, bool) {
			switch key {
			case canonicalRequestID, canonicalViaGateway:
				return key, true
			}
			return runtime.DefaultHeaderMatcher(key)
		}),
		// Internal metadata stays internal; the rest is forwarded as the
		// gateway does, as Grpc-Metadata-*.
		runtime.WithOutgoingHeaderMatcher(func(key string) (string, bool) {
			switch strings.ToLower(key) {
			case streamHeader, "content-type", requestIDHeader:
				return "", false
			}
			return runtime.MetadataHeaderPrefix + key, true
		}),
		runtime.WithForwardResponseOption(func(ctx context.Context, w http.ResponseWriter, m proto.Message) error {
			noteRoute(ctx)
			return flushStreamHeaders(ctx, w, m)
		}),
		runtime.WithErrorHandler(func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
			runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, restStatus(ctx, err).Err())
		}),
		runtime.WithStreamErrorHandler(restStatus),
		runtime.WithRoutingErrorHandler(routingError),
	}
	// Registration cannot fail with these arguments; the errors are kept
	// for API compatibility.
	unary := runtime.NewServeMux(opts...)
	direct := &inProcess{chat: s.chat, sessions: s.sessions, unary: s.ic.unary}
	_ = pb.RegisterChatServiceHandlerServer(ctx, unary, direct)
	_ = pb.RegisterSessionServiceHandlerServer(ctx, unary, direct)
	streams := runtime.NewServeMux(opts...)
	_ = pb.RegisterChatServiceHandler(ctx, streams, conn)
	_ = pb.RegisterSessionServiceHandler(ctx, streams, conn)
	fast := &fastPost{mux: unary, codec: codec, service: direct}
	gw := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, ok := fast.sessionOf(r); ok {
			fast.serve(w, r, id)
			return
		}
		if isStream(r) {
			streams.ServeHTTP(w, r)
			return
		}
		unary.ServeHTTP(w, r)
	})

	mux := http.NewServeMux()
	limit := int64(s.cfg.Limits.RequestBytes) * 2
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// As http.MaxBytesHandler, without its copy of the request.
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		gw.ServeHTTP(w, r)
	}))
	// Platform callbacks: no API key; each verifies its platform's
	// signature instead.
	for _, a := range s.cfg.Adapters {
		mux.Handle(hookPath(a), a.Handler(hub{s}))
	}
	s.widget.register(mux)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-s.stopping:
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "shutting down"})
			return
		default:
		}
		if err := s.ready(r.Context()); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "backend unavailable"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	if s.cfg.Metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Metrics, promhttp.HandlerOpts{Registry: s.cfg.Metrics}))
	}
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(chatrelay.OpenAPI)
	})
	return mux
}

// isStream tells the two server-streaming routes (docs/design.md §3) apart;
// TestIsStreamKnowsEveryStreamingRoute checks it against the protos.
func isStream(r *http.Request) bool {
	return (r.Method == http.MethodPost && r.URL.Path == "/v1/chat:receive") ||
		(r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/sessions/") && strings.HasSuffix(r.URL.Path, ":watch"))
}

// withErrorInfo adds ErrorInfo to errors the gateway makes itself (bad
// JSON, an unknown route), so every error body has the same shape. Errors
// from the gRPC server already carry theirs.
func withErrorInfo(st *status.Status) *status.Status {
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.ErrorInfo); ok {
			return st
		}
	}
	reason := strings.ToUpper(code.Code_name[int32(st.Code())])
	if with, err := st.WithDetails(&errdetails.ErrorInfo{Domain: errorDomain, Reason: reason}); err == nil {
		return with
	}
	return st
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// flushStreamHeaders sends a stream's HTTP headers as soon as the gRPC
// handler has accepted the call (it sends the streamHeader metadata after
// validation), so a WatchSession client sees 200 before the first message.
// The gateway calls it once with a nil message before streaming; for any
// other call it does nothing. Errors before acceptance keep their HTTP code.
func flushStreamHeaders(ctx context.Context, w http.ResponseWriter, m proto.Message) error {
	if m != nil {
		return nil
	}
	md, ok := runtime.ServerMetadataFromContext(ctx)
	if !ok || len(md.HeaderMD.Get(streamHeader)) == 0 {
		return nil
	}
	w.Header().Set("Content-Type", streamContentType)
	w.WriteHeader(http.StatusOK)
	return http.NewResponseController(w).Flush()
}

// hookPath is where a platform account's callbacks arrive.
func hookPath(a adapters.Adapter) string { return "/hooks/" + a.Platform() + "/" + a.Name() }

// Package server is chatrelay's gRPC service, its REST gateway and the HTTP
// endpoints around them. Run wires it all; cmd/chatrelay only builds Config.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/chatrelay/chatrelay/adapters/webhook"
	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/telemetry"
)

// Server is a configured chatrelay server, ready to Serve.
type Server struct {
	cfg  Config
	dir  *directory
	grpc *grpc.Server
	// health is grpc.health.v1; NOT_SERVING while the store is unreachable
	// and during shutdown.
	health *health.Server
	// stopping is closed when shutdown begins, so open streams end with a
	// status instead of holding GracefulStop up forever.
	stopping chan struct{}
	stopOnce sync.Once
	// places caches where sessions live, for PostMessage and IngestMessage.
	places placeCache
	// The services and interceptors, shared by gRPC and the in-process
	// REST path.
	chat     *chatService
	sessions *sessionService
	ic       *interceptors
	// bodies bounds how long HTTP request bodies take to arrive.
	bodies *bodyReads
	// metrics is nil when Config.Metrics is.
	metrics *metrics
	// hooks are the platform callbacks' paths, /hooks/<platform>/<name>.
	hooks map[string]bool
	// bots are the chatbots that run on webhooks, by id (bots.go), and
	// botIDs their ids; nudge wakes the delivery loop (drain).
	bots   map[string]*webhook.Bot
	botIDs []string
	nudge  chan struct{}
	// workers run deliveries (workers.go).
	workers workers
	// widget serves the web widget (docs/design.md §12).
	widget *widget
}

// TransportOptions are the grpc-go settings of the server's transport,
// which do not depend on Config. chatbench gives its bare echo baseline the
// same, so that the two differ only by chatrelay's own work.
func TransportOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		// Reuse goroutines (and their grown stacks) for calls instead of
		// starting one per call; when all are busy, as with long streams,
		// grpc-go starts a new one. Calls that wait on Redis are in flight
		// for a millisecond or two, so dozens run at once under load.
		grpc.NumStreamWorkers(uint32(32 * runtime.GOMAXPROCS(0))),
	}
}

// New validates cfg and builds a Server.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	dir, err := newDirectory(&cfg)
	if err != nil {
		return nil, err
	}
	keys, err := newKeyring(cfg.APIKeys, cfg.Limits, cfg.Store, cfg.TrustedProxies)
	if err != nil {
		return nil, err
	}
	bots, botIDs, err := newBots(&cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, dir: dir, health: health.NewServer(), stopping: make(chan struct{}), metrics: newMetrics(cfg.Metrics, cfg.Store),
		hooks: map[string]bool{}, bots: bots, botIDs: botIDs, nudge: make(chan struct{}, 1),
		workers: newWorkers()}
	for _, a := range cfg.Adapters {
		s.hooks[hookPath(a)] = true
	}
	s.ic = &interceptors{logger: cfg.Logger, keys: keys, lim: cfg.Limits, codec: newRequestCodec(),
		streams: newStreamCounts(cfg.Limits.Streams, tooManyStreams), metrics: s.metrics, gateway: randomHex(16)}
	s.chat, s.sessions = &chatService{Server: s}, &sessionService{Server: s}
	if s.widget, err = newWidget(s); err != nil {
		return nil, err
	}
	unary, stream := []grpc.UnaryServerInterceptor{s.ic.unary}, []grpc.StreamServerInterceptor{s.ic.stream}
	if s.metrics != nil {
		unary = append([]grpc.UnaryServerInterceptor{s.metrics.grpc.unary}, unary...)
		stream = append([]grpc.StreamServerInterceptor{s.metrics.grpc.stream}, stream...)
	}
	opts := append(TransportOptions(),
		grpc.ForceServerCodecV2(s.ic.codec),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		// The transport's own limit sits above Limits.RequestBytes so that
		// oversized requests reach the interceptor and get a proper error:
		// above what the REST gateway takes too (twice RequestBytes of
		// JSON, which is no smaller as protobuf), since it sends a stream's
		// request over gRPC.
		grpc.MaxRecvMsgSize(2*cfg.Limits.RequestBytes+64<<10),
		// Metadata arrives before authentication: bound it as HTTP
		// headers are.
		grpc.MaxHeaderListSize(uint32(cfg.Limits.HeaderBytes)),
	)
	if cfg.TracerProvider != nil {
		opts = append(opts, grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(cfg.TracerProvider),
			otelgrpc.WithPropagators(telemetry.Propagators))))
	}
	s.grpc = grpc.NewServer(opts...)
	pb.RegisterChatServiceServer(s.grpc, s.chat)
	pb.RegisterSessionServiceServer(s.grpc, s.sessions)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	if s.metrics != nil {
		s.metrics.grpc.init(s.grpc)
	}
	if len(cfg.APIKeys) == 0 {
		cfg.Logger.Warn("no API keys configured: every caller is tenant \"default\" without authentication")
	}
	return s, nil
}

func (s *Server) checker() checker { return checker{lim: s.cfg.Limits} }

// Run listens on cfg's addresses and serves until ctx is cancelled.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	gl, err := net.Listen("tcp", s.cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("grpc listener: %w", err)
	}
	hl, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		gl.Close()
		return fmt.Errorf("http listener: %w", err)
	}
	return s.Serve(ctx, gl, hl)
}

// Serve serves gRPC on gl and HTTP on hl until ctx is cancelled or a server
// fails, then shuts down within cfg.ShutdownTimeout: streams are told to
// end, HTTP drains, and gRPC stops gracefully or, past the deadline, hard.
func (s *Server) Serve(ctx context.Context, gl, hl net.Listener) error {
	log := s.cfg.Logger
	dial := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if s.cfg.TracerProvider != nil {
		dial = append(dial, grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(s.cfg.TracerProvider),
			otelgrpc.WithPropagators(telemetry.Propagators))))
	}
	conn, err := grpc.NewClient(dialTarget(gl.Addr()), dial...)
	if err != nil {
		gl.Close()
		hl.Close()
		return fmt.Errorf("gateway connection: %w", err)
	}
	defer conn.Close()
	s.bodies = newBodyReads(s.cfg.Limits.BodyTimeout)
	hs := &http.Server{
		Handler:           s.observeHTTP(s.bodies.wrap(s.traceHTTP(s.httpHandler(ctx, conn)))),
		ConnContext:       connContext,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    s.cfg.Limits.HeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// No WriteTimeout: it would cut long-lived streams.
	}

	errc := make(chan error, 2)
	go func() { errc <- s.grpc.Serve(gl) }()
	go func() {
		if err := hs.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go s.watchReadiness(watchCtx)
	if len(s.cfg.Adapters) > 0 || len(s.bots) > 0 {
		// Without an adapter or a chatbot's webhook this replica has
		// nothing to deliver with.
		go s.drain(watchCtx)
	}
	log.Info("chatrelay serving", "grpc", gl.Addr().String(), "http", hl.Addr().String())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		log.Error("server failed", "err", serveErr)
	}
	s.shutdown(hs)
	return serveErr
}

func (s *Server) shutdown(hs *http.Server) {
	log := s.cfg.Logger
	log.Info("shutting down", "timeout", s.cfg.ShutdownTimeout)
	s.health.Shutdown()
	s.stopOnce.Do(func() { close(s.stopping) })
	s.bodies.stop()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(ctx); err != nil {
		log.Warn("http shutdown incomplete; closing", "err", err)
		hs.Close()
	}
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		log.Warn("grpc graceful stop timed out; stopping hard")
		s.grpc.Stop()
		<-done
	}
	// Widget streams own their connections (net/http's Shutdown does not
	// wait for them), and end on s.stopping.
	if err := s.widget.wait(ctx); err != nil {
		log.Warn("widget streams still open at the shutdown timeout", "err", err)
	}
	log.Info("stopped")
}

// watchReadiness keeps grpc.health.v1 in step with the store.
func (s *Server) watchReadiness(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		st := healthpb.HealthCheckResponse_SERVING
		if s.ready(ctx) != nil {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		// After health.Shutdown these are ignored: shutdown wins.
		s.health.SetServingStatus("", st)
		s.health.SetServingStatus(pb.ChatService_ServiceDesc.ServiceName, st)
		s.health.SetServingStatus(pb.SessionService_ServiceDesc.ServiceName, st)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return s.cfg.Store.Ping(ctx)
}

// dialTarget turns a listener address into one the gateway can dial: an
// unspecified host (":9090") becomes loopback.
func dialTarget(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return a.String()
	}
	if tcp.IP.To4() != nil || tcp.IP.Equal(net.IPv6unspecified) {
		return net.JoinHostPort("127.0.0.1", fmt.Sprint(tcp.Port))
	}
	return net.JoinHostPort("::1", fmt.Sprint(tcp.Port))
}

// traceHTTP traces HTTP requests, when tracing is on.
func (s *Server) traceHTTP(h http.Handler) http.Handler {
	if s.cfg.TracerProvider == nil {
		return h
	}
	return otelhttp.NewHandler(h, "http", otelhttp.WithTracerProvider(s.cfg.TracerProvider), otelhttp.WithPropagators(telemetry.Propagators),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + s.routeOf(r) }))
}

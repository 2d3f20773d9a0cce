// Command chatrelay serves the chat-session hub: gRPC on -grpc-addr, and the
// REST gateway, platform callbacks, /metrics, /openapi.json, /healthz and
// /readyz on -http-addr.
//
// Tracing is on when the standard OTEL_EXPORTER_OTLP_* variables name an
// endpoint (internal/telemetry).
//
// Every flag can also be set by its environment variable (CHATRELAY_*); an
// explicit flag wins over the environment.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/internal/config"
	"github.com/chatrelay/chatrelay/internal/logbuf"
	"github.com/chatrelay/chatrelay/internal/telemetry"
	"github.com/chatrelay/chatrelay/server"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/memory"
	"github.com/chatrelay/chatrelay/store/redisstore"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "chatrelay:", err)
		os.Exit(1)
	}
}

func run() error {
	grpcAddr := flag.String("grpc-addr", env("CHATRELAY_GRPC_ADDR", ":9090"), "gRPC listen address (env CHATRELAY_GRPC_ADDR)")
	httpAddr := flag.String("http-addr", env("CHATRELAY_HTTP_ADDR", ":8080"), "HTTP listen address (env CHATRELAY_HTTP_ADDR)")
	redisURL := flag.String("redis-url", env("CHATRELAY_REDIS_URL", ""), "Redis URL (redis://, rediss://, Sentinel or Cluster forms); empty runs on the in-memory backend (env CHATRELAY_REDIS_URL)")
	configPath := flag.String("config", env("CHATRELAY_CONFIG", ""), "YAML file with channels, chatbots and API keys (env CHATRELAY_CONFIG)")
	logLevel := flag.String("log-level", env("CHATRELAY_LOG_LEVEL", "info"), "debug, info, warn or error (env CHATRELAY_LOG_LEVEL)")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	// One line per request: buffered, so that each is not a write of its
	// own (they cost a fifth of REST throughput unbuffered, into a pipe).
	logs := logbuf.New(os.Stderr, 64<<10, 100*time.Millisecond)
	defer logs.Close()
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)
	redis.SetLogger(redisstore.LogTo(logger))

	tp, stopTracing, err := telemetry.Tracing(context.Background())
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(ctx); err != nil {
			logger.Warn("tracing: spans not flushed", "err", err)
		}
	}()

	file := config.Default()
	if *configPath != "" {
		var err error
		if file, err = config.Load(*configPath, os.LookupEnv); err != nil {
			return err
		}
	}
	accounts, err := file.Adapters(logger, adapters.Client(tp))
	if err != nil {
		return err
	}
	st, closeStore, err := openStore(*redisURL, file, logger, tp)
	if err != nil {
		return err
	}
	defer closeStore()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return server.Run(ctx, server.Config{
		GRPCAddr:        *grpcAddr,
		HTTPAddr:        *httpAddr,
		Store:           st,
		Logger:          logger,
		Channels:        file.Channels,
		Chatbots:        file.Chatbots,
		APIKeys:         file.APIKeys,
		TrustedProxies:  file.TrustedProxies,
		Limits:          file.Limits,
		ResumeWindow:    file.ResumeWindow,
		Adapters:        accounts,
		DeliveryTimeout: file.DeliveryTimeout,
		Metrics:         metrics(),
		TracerProvider:  tp,
		Widget:          widgetConfig(file, *redisURL, logger),
	})
}

// widgetConfig is the file's widget section. Without widget.secret_env, the
// memory backend (one process) signs with a secret made now; on Redis every
// replica must share one, so the widget is off.
func widgetConfig(f *config.File, redisURL string, logger *slog.Logger) server.Widget {
	w := f.Widget
	switch {
	case w.Secret != "":
	case redisURL == "":
		w.Secret = rand.Text() + rand.Text()
	default:
		logger.Warn("the web widget is off: set widget.secret_env, the same on every replica, to sign its tokens")
	}
	return w
}

// openStore opens the Redis backend when a URL is given, else the memory
// one, and returns how to close what it opened.
func openStore(redisURL string, f *config.File, logger *slog.Logger, tp trace.TracerProvider) (store.Store, func(), error) {
	opts := store.Options{SessionTTL: f.SessionTTL, HistoryLimit: f.HistoryLimit}
	if redisURL == "" {
		st, err := memory.New(memory.Options{Options: opts})
		if err != nil {
			return nil, nil, err
		}
		logger.Info("using the in-memory backend: state lives in this process only")
		return st, func() { _ = st.Close() }, nil
	}
	client, err := redisstore.NewClient(redisURL)
	if err != nil {
		return nil, nil, err
	}
	if tp != nil {
		if err := redisotel.InstrumentTracing(client, redisotel.WithTracerProvider(tp), redisotel.WithDBStatement(false)); err != nil {
			_ = client.Close()
			return nil, nil, fmt.Errorf("redis tracing: %w", err)
		}
	}
	st, err := redisstore.New(client, redisstore.Options{Options: opts, Logger: logger})
	if err != nil {
		_ = client.Close()
		return nil, nil, err
	}
	logger.Info("using the Redis backend") // never the URL: it may hold a password
	return st, func() { _ = st.Close(); _ = client.Close() }, nil
}

// metrics is the registry /metrics serves: the server's metrics, and the
// process's and the Go runtime's.
func metrics() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func env(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/adapters/slack"
	"github.com/chatrelay/chatrelay/adapters/webhook"
	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/server"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/memory"
	"github.com/chatrelay/chatrelay/store/redisstore"
	"github.com/prometheus/client_golang/prometheus"
)

// The server under test runs in a child process (chatbench -serve …), so
// its RSS is its own and the load generator's allocations don't disturb it.
// It prints "READY <grpc addr> <http addr>" and stops when stdin closes.

const echoMethod = "/chatbench.Echo/Post"

// echoDesc is the baseline: a bare grpc-go unary handler that decodes a
// PostMessageRequest and answers a PostMessageResponse, with no
// interceptors, validation or storage, on a server with chatrelay's
// transport settings (server.TransportOptions). With grpc-go's defaults
// instead, each call runs on a fresh goroutine whose stack grows on every
// call: a fifth of the echo server's CPU, a handicap that made every ratio
// look better than chatrelay's own work deserves.
var echoDesc = grpc.ServiceDesc{
	ServiceName: "chatbench.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Post",
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(pb.PostMessageRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			return &pb.PostMessageResponse{
				Status: pb.MessageStatus_MESSAGE_STATUS_DELIVERED, MessageId: "msg_echo", SessionId: in.SessionId,
				DeliveredAt: timestamppb.Now(), Platform: "api", Channel: "api",
			}, nil
		},
	}},
}

// The bench's Slack account.
const (
	benchSlackToken  = "xoxb-bench-0123456789"
	benchSlackSecret = "bench-signing-secret"
	benchSlackChan   = "C0BENCH"
)

func serveChild(backend, redisURL, slackAPI, webhookURL, cpuprofile string, metrics bool) error {
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
		// And the heap as it stands when the parent stops us.
		defer func() {
			if h, err := os.Create(strings.TrimSuffix(cpuprofile, ".prof") + ".heap"); err == nil {
				_ = pprof.WriteHeapProfile(h)
				h.Close()
			}
		}()
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // the parent closes our stdin to stop us
		_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		cancel()
	}()
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	if backend == "echo" {
		s := grpc.NewServer(server.TransportOptions()...)
		s.RegisterService(&echoDesc, struct{}{})
		fmt.Printf("READY %s %s\n", gl.Addr(), hl.Addr())
		go func() { <-ctx.Done(); s.Stop() }()
		return s.Serve(gl)
	}

	var st store.Store
	switch backend {
	case "memory":
		ms, err := memory.New(memory.Options{})
		if err != nil {
			return err
		}
		defer ms.Close()
		st = ms
	case "redis":
		c, err := redisstore.NewClient(redisURL)
		if err != nil {
			return err
		}
		defer c.Close()
		rs, err := redisstore.New(c, redisstore.Options{Prefix: "bench", Logger: quiet})
		if err != nil {
			return err
		}
		defer rs.Close()
		st = rs
	default:
		return fmt.Errorf("unknown backend %q", backend)
	}
	// The idle scenario holds 100k listeners of one tenant: past the
	// default caps, which are for production.
	limits := server.DefaultLimits()
	limits.Streams, limits.PendingListeners = 1_000_000, 1_000_000
	// The widget scenario holds one connection per session: past the
	// default cap on a tenant's widget streams too.
	cfg := server.Config{Store: st, Logger: quiet, Limits: limits, Widget: server.Widget{Secret: rand.Text() + rand.Text(), Streams: 1_000_000}}
	if metrics {
		cfg.Metrics = prometheus.NewRegistry()
	}
	if slackAPI != "" {
		a, err := slack.New(slack.Config{Name: "bench", BotToken: benchSlackToken, SigningSecret: benchSlackSecret, APIURL: slackAPI, Logger: quiet})
		if err != nil {
			return err
		}
		cfg.Adapters = []adapters.Adapter{a}
	}
	if webhookURL != "" {
		a, err := webhook.New(webhook.Config{Name: benchWebhookName, URL: webhookURL, Secret: benchWebhookSecret, Logger: quiet})
		if err != nil {
			return err
		}
		cfg.Adapters = append(cfg.Adapters, a)
	}
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	fmt.Printf("READY %s %s\n", gl.Addr(), hl.Addr())
	if err := srv.Serve(ctx, gl, hl); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

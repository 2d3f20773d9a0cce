package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"

	"github.com/chatrelay/chatrelay/store"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// public reports whether a method needs no API key: health checks, so load
// balancers can probe without credentials, and server reflection, so
// grpcurl can describe the API (which /openapi.json publishes anyway).
func public(method string) bool {
	return strings.HasPrefix(method, "/"+grpc_health_v1.Health_ServiceDesc.ServiceName+"/") ||
		strings.HasPrefix(method, "/grpc.reflection.")
}

// interceptors applies, to every RPC including those arriving through the
// REST gateway: panic recovery, authentication, the request size limit, the
// cap on each tenant's open streams, and the mapping of errors to statuses
// with details.
type interceptors struct {
	logger  *slog.Logger
	keys    *keyring
	lim     Limits
	codec   *requestCodec
	streams *streamCounts
	metrics *metrics
	// gateway is the value of the viaGateway header on the REST
	// gateway's calls.
	gateway string
}

func (ic *interceptors) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	call := ic.newCallInfo(ctx, false)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
		if err != nil {
			resp, err = nil, ic.finish(info.FullMethod, call, err)
		}
		ic.log(ctx, call, info.FullMethod, err)
	}()
	echoID(ctx, call)
	// Taken before the key is checked, since grpc-go decoded the request
	// before any interceptor: its decoding error is forgotten on every
	// path, a refused key's included.
	undecoded := ic.codec.take(req)
	if ctx, err = ic.authenticate(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	if err := ic.decoded(req, undecoded); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (ic *interceptors) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	ctx := ss.Context()
	call := ic.newCallInfo(ctx, true)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
		if err != nil {
			err = ic.finish(info.FullMethod, call, err)
		}
		ic.log(ctx, call, info.FullMethod, err)
	}()
	if !call.gateway { // once per stream: cheap, unlike per unary call
		_ = ss.SetHeader(metadata.MD{requestIDHeader: {call.id}})
	}
	if ctx, err = ic.authenticate(ctx, info.FullMethod); err != nil {
		return err
	}
	if !public(info.FullMethod) {
		release, err := ic.streams.acquire(tenantFrom(ctx))
		if err != nil {
			return err
		}
		defer release()
	}
	return handler(srv, &serverStream{ServerStream: ss, ctx: ctx, ic: ic})
}

// authenticate is the API key check of a method that needs one, and tells
// the HTTP layer (for a REST call) whose call it is. Refused, it returns
// ctx as it was.
func (ic *interceptors) authenticate(ctx context.Context, method string) (context.Context, error) {
	if public(method) {
		return ctx, nil
	}
	actx, err := ic.keys.authenticate(ctx)
	if err != nil {
		return ctx, err
	}
	if info := infoFrom(actx); info != nil {
		info.tenant = tenantFrom(actx)
	}
	return actx, nil
}

// finish maps err to its status, with the call's request id as
// RequestInfo, and counts and logs it.
func (ic *interceptors) finish(method string, call callInfo, err error) error {
	st := toStatus(err)
	logError(ic.logger, method, err, st)
	if st.Code() == codes.Unavailable && errors.Is(err, store.ErrUnavailable) {
		ic.metrics.backendError(method)
	}
	if with, err := st.WithDetails(&errdetails.RequestInfo{RequestId: call.id}); err == nil {
		st = with
	}
	return st.Err()
}

// decoded checks a request arrived whole: it decoded (see requestCodec)
// and is within the request size limit.
func (ic *interceptors) decoded(req any, undecoded error) error {
	if undecoded != nil {
		return invalid("", "the request is not a valid protobuf message: %v", undecoded)
	}
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if n := proto.Size(m); n > ic.lim.RequestBytes {
		return invalid("", "the request is %d bytes; the limit is %d", n, ic.lim.RequestBytes)
	}
	return nil
}

// serverStream carries the authenticated context and checks the size of
// each received message.
type serverStream struct {
	grpc.ServerStream
	ctx context.Context
	ic  *interceptors
}

func (s *serverStream) Context() context.Context { return s.ctx }

func (s *serverStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.ic.decoded(m, s.ic.codec.take(m))
}

package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

type tenantKey struct{}

// tenantFrom returns the caller's tenant, set by the auth step.
func tenantFrom(ctx context.Context) string {
	if t, ok := ctx.Value(tenantKey{}).(string); ok {
		return t
	}
	return defaultTenant
}

// keyring authenticates API keys. Keys are kept as SHA-256 digests and
// compared in constant time, so neither memory dumps nor timing reveal them.
type keyring struct {
	keys []keyEntry
}

type keyEntry struct {
	digest  [32]byte
	name    string
	tenant  string
	limiter *rate.Limiter // nil: unlimited
}

func newKeyring(keys []APIKey, lim Limits) (*keyring, error) {
	kr := &keyring{}
	chk := checker{lim: lim}
	seen := map[[32]byte]bool{}
	for i, k := range keys {
		field := fmt.Sprintf("api_keys[%d]", i)
		chk.id(field+".tenant", k.Tenant, true)
		if len(k.Key) < 16 {
			chk.add(field+".key", "must be at least 16 characters")
		}
		if k.RatePerSecond < 0 || k.Burst < 0 {
			chk.add(field+".rate_per_second", "must not be negative")
		}
		d := sha256.Sum256([]byte(k.Key))
		if seen[d] {
			chk.add(field+".key", "is the same as another key")
		}
		seen[d] = true
		e := keyEntry{digest: d, name: k.Name, tenant: k.Tenant}
		if k.RatePerSecond > 0 {
			burst := max(k.Burst, 1)
			e.limiter = rate.NewLimiter(rate.Limit(k.RatePerSecond), burst)
		}
		kr.keys = append(kr.keys, e)
	}
	if err := chk.err(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return kr, nil
}

var errMissingKey = &codedError{code: codes.Unauthenticated, reason: reasonUnauthenticated,
	msg: "missing API key: send the header `authorization: Bearer <key>`"}
var errBadKey = &codedError{code: codes.Unauthenticated, reason: reasonUnauthenticated, msg: "invalid API key"}

// authenticate returns ctx carrying the caller's tenant.
func (kr *keyring) authenticate(ctx context.Context) (context.Context, error) {
	if len(kr.keys) == 0 {
		return context.WithValue(ctx, tenantKey{}, defaultTenant), nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return nil, errMissingKey
	}
	token, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok {
		token, ok = strings.CutPrefix(vals[0], "bearer ")
	}
	if !ok || token == "" {
		return nil, errMissingKey
	}
	d := sha256.Sum256([]byte(token))
	var found *keyEntry
	for i := range kr.keys {
		// Compare against every key, so timing does not tell which matched.
		if subtle.ConstantTimeCompare(d[:], kr.keys[i].digest[:]) == 1 {
			found = &kr.keys[i]
		}
	}
	if found == nil {
		return nil, errBadKey
	}
	if found.limiter != nil {
		r := found.limiter.Reserve()
		if delay := r.Delay(); delay > 0 {
			r.Cancel()
			return nil, &codedError{code: codes.ResourceExhausted, reason: reasonRateLimited,
				msg: fmt.Sprintf("rate limit of API key %q exceeded; retry in %s", found.name, delay.Round(1e6)), retryAfter: delay}
		}
	}
	return context.WithValue(ctx, tenantKey{}, found.tenant), nil
}

// public reports whether a method needs no API key: health checks, so load
// balancers can probe without credentials.
func public(method string) bool {
	return strings.HasPrefix(method, "/"+grpc_health_v1.Health_ServiceDesc.ServiceName+"/")
}

// interceptors applies, to every RPC including those arriving through the
// REST gateway: panic recovery, authentication, the request size limit, the
// cap on each tenant's open streams, and the mapping of errors to statuses
// with details.
type interceptors struct {
	log     *slog.Logger
	keys    *keyring
	lim     Limits
	codec   *requestCodec
	streams *streamCounts
}

func (ic *interceptors) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
		if err != nil {
			resp, err = nil, ic.finish(info.FullMethod, err)
		}
	}()
	if !public(info.FullMethod) {
		if ctx, err = ic.keys.authenticate(ctx); err != nil {
			return nil, err
		}
	}
	if err := ic.decoded(req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (ic *interceptors) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
		if err != nil {
			err = ic.finish(info.FullMethod, err)
		}
	}()
	ctx := ss.Context()
	if !public(info.FullMethod) {
		if ctx, err = ic.keys.authenticate(ctx); err != nil {
			return err
		}
		release, err := ic.streams.acquire(tenantFrom(ctx))
		if err != nil {
			return err
		}
		defer release()
	}
	return handler(srv, &serverStream{ServerStream: ss, ctx: ctx, ic: ic})
}

func (ic *interceptors) finish(method string, err error) error {
	st := toStatus(err)
	logError(ic.log, method, err, st)
	return st.Err()
}

// decoded checks a request arrived whole: it decoded (see requestCodec)
// and is within the request size limit.
func (ic *interceptors) decoded(req any) error {
	if ic.codec != nil {
		if err := ic.codec.take(req); err != nil {
			return invalid("", "the request is not a valid protobuf message: %v", err)
		}
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
	return s.ic.decoded(m)
}

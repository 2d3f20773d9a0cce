package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/chatrelay/chatrelay/store"
)

// errorDomain is ErrorInfo.domain on every error chatrelay returns.
const errorDomain = "chatrelay"

// Reasons in ErrorInfo (docs/design.md §5), beyond those that equal the code name.
const (
	reasonInvalid           = "INVALID_ARGUMENT"
	reasonSessionNotFound   = "SESSION_NOT_FOUND"
	reasonSessionExpired    = "SESSION_EXPIRED"
	reasonSessionClosed     = "SESSION_CLOSED"
	reasonSessionExists     = "SESSION_ALREADY_ACTIVE"
	reasonListenerNotFound  = "LISTENER_NOT_FOUND"
	reasonUnauthenticated   = "UNAUTHENTICATED"
	reasonPermissionDenied  = "PERMISSION_DENIED"
	reasonRateLimited       = "RATE_LIMITED"
	reasonBackend           = "BACKEND_UNAVAILABLE"
	reasonShuttingDown      = "SERVER_SHUTTING_DOWN"
	reasonInternal          = "INTERNAL"
	reasonCanceled          = "CANCELLED"
	reasonDeadlineExceeded  = "DEADLINE_EXCEEDED"
	reasonIdempotencyReused = "IDEMPOTENCY_KEY_REUSED"
	reasonHistoryTrimmed    = "HISTORY_TRIMMED"
	reasonTooManyListeners  = "TOO_MANY_LISTENERS"
)

// invalidError is bad input: one or more field violations.
type invalidError struct {
	reason     string // default reasonInvalid
	violations []*errdetails.BadRequest_FieldViolation
}

func (e *invalidError) Error() string {
	if len(e.violations) == 1 {
		v := e.violations[0]
		if v.Field == "" {
			return v.Description
		}
		return v.Field + ": " + v.Description
	}
	return fmt.Sprintf("%d invalid fields; first %s: %s", len(e.violations), e.violations[0].Field, e.violations[0].Description)
}

// invalid returns an invalidError for one field.
func invalid(field, format string, args ...any) error {
	return &invalidError{violations: []*errdetails.BadRequest_FieldViolation{{
		Field: field, Description: fmt.Sprintf(format, args...),
	}}}
}

// codedError is an error that already knows its code and reason: auth,
// rate limits, shutdown.
type codedError struct {
	code       codes.Code
	reason     string
	msg        string
	retryAfter time.Duration
	meta       map[string]string
}

func (e *codedError) Error() string { return e.msg }

// toStatus maps any handler error to the status the client sees. It is the
// only place that does: handlers return domain errors, the interceptor calls
// this.
func toStatus(err error) *status.Status {
	var inv *invalidError
	var coded *codedError
	switch {
	case errors.As(err, &inv):
		reason := inv.reason
		if reason == "" {
			reason = reasonInvalid
		}
		return withDetails(codes.InvalidArgument, reason, inv.Error(), nil,
			&errdetails.BadRequest{FieldViolations: inv.violations})
	case errors.As(err, &coded):
		var extra []protoDetail
		if coded.retryAfter > 0 {
			extra = append(extra, &errdetails.RetryInfo{RetryDelay: durationpb.New(coded.retryAfter)})
		}
		return withDetails(coded.code, coded.reason, coded.msg, coded.meta, extra...)
	case errors.Is(err, store.ErrSessionNotFound):
		return withDetails(codes.NotFound, reasonSessionNotFound, "session not found", nil)
	case errors.Is(err, store.ErrSessionExpired):
		return withDetails(codes.FailedPrecondition, reasonSessionExpired, "the session has expired", nil)
	case errors.Is(err, store.ErrSessionClosed):
		return withDetails(codes.FailedPrecondition, reasonSessionClosed, "the session is closed", nil)
	case errors.Is(err, store.ErrSessionExists):
		return withDetails(codes.AlreadyExists, reasonSessionExists,
			"an active session already exists for this platform, channel and user", nil)
	case errors.Is(err, store.ErrListenerNotFound):
		return withDetails(codes.NotFound, reasonListenerNotFound, "no listener with this conversation_id", nil)
	case errors.Is(err, store.ErrIdempotencyKeyReused):
		inv := invalid("idempotency_key", "was already used with a different request in the last 24 h").(*invalidError)
		inv.reason = reasonIdempotencyReused
		return toStatus(inv)
	case errors.Is(err, store.ErrTooMuchMetadata):
		return toStatus(invalid("metadata", "with what the session or contact holds already, it would hold more entries than limits.metadata_entries: send fewer new keys, or remove a session's first (UpdateSession's remove_metadata_keys)"))
	case errors.Is(err, store.ErrSessionMismatch):
		return toStatus(invalid("session_id", "%v", store.ErrSessionMismatch))
	case errors.Is(err, store.ErrTooManyListeners):
		return withDetails(codes.ResourceExhausted, reasonTooManyListeners,
			"the tenant has as many ChatReceive listeners pending as it may (limits.pending_listeners): ListListeners shows them, and CancelListener ends those no longer wanted", nil)
	case errors.Is(err, store.ErrUnavailable):
		return withDetails(codes.Unavailable, reasonBackend, "the backend is unavailable; retry (with the same idempotency key)", nil)
	case errors.Is(err, context.Canceled):
		return withDetails(codes.Canceled, reasonCanceled, "the call was cancelled", nil)
	case errors.Is(err, context.DeadlineExceeded):
		return withDetails(codes.DeadlineExceeded, reasonDeadlineExceeded, "the call's deadline passed", nil)
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st // already a status, e.g. from the gRPC runtime
	}
	return withDetails(codes.Internal, reasonInternal, "internal error", nil)
}

type protoDetail = protoadapt.MessageV1

func withDetails(code codes.Code, reason, msg string, meta map[string]string, extra ...protoDetail) *status.Status {
	st := status.New(code, msg)
	details := append([]protoDetail{&errdetails.ErrorInfo{Domain: errorDomain, Reason: reason, Metadata: meta}}, extra...)
	if withD, err := st.WithDetails(details...); err == nil {
		return withD
	}
	return st
}

// logError records err as the interceptor saw it. Internal errors are logged
// in full (the client only sees "internal error"); expected outcomes are
// debug noise.
func logError(log *slog.Logger, method string, err error, st *status.Status) {
	switch st.Code() {
	case codes.Internal, codes.Unknown:
		log.Error("rpc failed", "method", method, "err", err)
	case codes.Unavailable:
		log.Warn("rpc unavailable", "method", method, "err", err)
	default:
		log.Debug("rpc error", "method", method, "code", st.Code().String(), "err", err)
	}
}

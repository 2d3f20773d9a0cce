package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// postRoute is PostMessage's REST route.
const postRoute = "/v1/sessions/{session_id}/messages"

// fastPost serves POST /v1/sessions/{session_id}/messages, the call every
// integration's post makes, without grpc-gateway's generic machinery:
// building incoming metadata from every header, routing through its
// pattern table, and forwarding response metadata took a sixth of the
// REST path's CPU (BENCHMARKS.md). It decodes and encodes with the same
// codec, calls the same interceptors, and answers errors through the
// gateway's own error handler, so it behaves as the gateway does
// (TestFastPostAnswersAsTheGateway compares the two). What it does not
// handle (an escaped path, a Grpc-Timeout header), it leaves to the
// gateway.
type fastPost struct {
	mux     *runtime.ServeMux // the gateway's, for its error handler
	codec   runtime.Marshaler
	service *inProcess
}

// sessionOf is the session id in a PostMessage path, when the fast path
// can serve it.
func (f *fastPost) sessionOf(r *http.Request) (string, bool) {
	if r.Method != http.MethodPost || r.Header.Get("Grpc-Timeout") != "" {
		return "", false
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v1/sessions/")
	if !ok {
		return "", false
	}
	id, ok := strings.CutSuffix(rest, "/messages")
	if !ok || id == "" || strings.ContainsAny(id, "/%:") || r.URL.RawPath != "" {
		return "", false
	}
	return id, true
}

func (f *fastPost) serve(w http.ResponseWriter, r *http.Request, sessionID string) {
	ctx := r.Context()
	if info := infoFrom(ctx); info != nil {
		info.route = postRoute
	}
	req := &pb.PostMessageRequest{}
	if err := f.codec.NewDecoder(r.Body).Decode(req); err != nil && !errors.Is(err, io.EOF) {
		f.fail(w, r, status.Errorf(codes.InvalidArgument, "%v", err))
		return
	}
	req.SessionId = sessionID
	_, _ = io.Copy(io.Discard, r.Body)
	resp, err := f.service.PostMessage(metadata.NewIncomingContext(ctx, incomingMD(r)), req)
	if err != nil {
		f.fail(w, r, err)
		return
	}
	body, err := f.codec.Marshal(resp)
	if err != nil {
		f.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", f.codec.ContentType(resp))
	_, _ = w.Write(body)
}

// fail answers err as the gateway's route would: through its error
// handler, with the call annotated as the gateway annotates it.
func (f *fastPost) fail(w http.ResponseWriter, r *http.Request, err error) {
	ctx, aerr := runtime.AnnotateIncomingContext(r.Context(), f.mux, r, pb.ChatService_PostMessage_FullMethodName,
		runtime.WithHTTPPathPattern(postRoute))
	if aerr != nil {
		ctx = context.WithoutCancel(r.Context())
	}
	runtime.HTTPError(ctx, f.mux, f.codec, w, r, err)
}

// incomingMD is the metadata of a REST call that the services read: the
// API key, and the client's address for authentication's budget, as the
// gateway forwards them (the address appended to X-Forwarded-For).
func incomingMD(r *http.Request) metadata.MD {
	md := make(metadata.MD, 2)
	if auth := r.Header.Get("Authorization"); auth != "" {
		md["authorization"] = []string{auth}
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		// Every line, in order: a proxy may add a line of its own rather
		// than append to the client's, and only the last entries count.
		md["x-forwarded-for"] = []string{strings.Join(append(r.Header.Values("X-Forwarded-For"), ip), ", ")}
	}
	return md
}

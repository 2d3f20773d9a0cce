package server

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// The REST gateway's errors behave as HTTP clients expect (docs/design.md
// §11): a wrong method is 405 with Allow, a 401 says how to authenticate,
// a 429 says when to come back, and a body the request type cannot hold
// names the field it could not place.

// restRoute is one REST route, from a method's HTTP rule in the protos.
type restRoute struct {
	method   string
	template string // as the rule writes it: /v1/sessions/{session_id}:watch
	rpc      protoreflect.MethodDescriptor
	path     *regexp.Regexp // matches the paths the template does
}

// restRoutes are the REST API's routes, read once from the protos.
var restRoutes = sync.OnceValue(func() []restRoute {
	// A variable matches one path segment, and stops at a custom verb.
	vars := regexp.MustCompile(`\{[^}]*\}`)
	var out []restRoute
	for _, fd := range []protoreflect.FileDescriptor{pb.File_chatrelay_v1_chat_service_proto, pb.File_chatrelay_v1_session_service_proto} {
		for i := range fd.Services().Len() {
			methods := fd.Services().Get(i).Methods()
			for j := range methods.Len() {
				md := methods.Get(j)
				rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
				if rule == nil {
					continue
				}
				for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
					verb, tmpl := httpRule(r)
					var re strings.Builder
					re.WriteString("^")
					last := 0
					for _, loc := range vars.FindAllStringIndex(tmpl, -1) {
						re.WriteString(regexp.QuoteMeta(tmpl[last:loc[0]]))
						re.WriteString(`[^/:]+`)
						last = loc[1]
					}
					re.WriteString(regexp.QuoteMeta(tmpl[last:]) + "$")
					out = append(out, restRoute{method: verb, template: tmpl, rpc: md, path: regexp.MustCompile(re.String())})
				}
			}
		}
	}
	return out
})

// httpRule is a rule's method and path template.
func httpRule(r *annotations.HttpRule) (verb, path string) {
	switch p := r.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return http.MethodGet, p.Get
	case *annotations.HttpRule_Post:
		return http.MethodPost, p.Post
	case *annotations.HttpRule_Patch:
		return http.MethodPatch, p.Patch
	case *annotations.HttpRule_Put:
		return http.MethodPut, p.Put
	case *annotations.HttpRule_Delete:
		return http.MethodDelete, p.Delete
	case *annotations.HttpRule_Custom:
		return p.Custom.GetKind(), p.Custom.GetPath()
	}
	return "", ""
}

// allowedMethods are the methods the REST API serves at path, sorted.
func allowedMethods(path string) []string {
	var out []string
	for _, r := range restRoutes() {
		if r.path.MatchString(path) && !slices.Contains(out, r.method) {
			out = append(out, r.method)
		}
	}
	slices.Sort(out)
	return out
}

// routeTemplate is the template of the first route serving path, for
// metrics and logs.
func routeTemplate(path string) string {
	for _, r := range restRoutes() {
		if r.path.MatchString(path) {
			return r.template
		}
	}
	return ""
}

// routingError answers a request no route serves: 404, or 405 with Allow
// when the path is served for other methods.
func routingError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
	allowed := allowedMethods(r.URL.Path)
	if code != http.StatusMethodNotAllowed || len(allowed) == 0 {
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, code)
		return
	}
	allow := strings.Join(allowed, ", ")
	st := withDetails(codes.Unimplemented, "METHOD_NOT_ALLOWED",
		fmt.Sprintf("%s is not served at %s; it allows %s", r.Method, r.URL.Path, allow), map[string]string{"allow": allow})
	if info := infoFrom(ctx); info != nil {
		info.route = routeTemplate(r.URL.Path)
		// Like every other error body, it names the request.
		if with, err := st.WithDetails(&errdetails.RequestInfo{RequestId: info.id}); err == nil {
			st = with
		}
	}
	buf, err := m.Marshal(st.Proto())
	if err != nil {
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, code)
		return
	}
	w.Header().Set("Allow", allow)
	w.Header().Set("Content-Type", m.ContentType(nil))
	w.WriteHeader(http.StatusMethodNotAllowed)
	_, _ = w.Write(buf)
}

// restStatus is the status a REST error answers with: the gateway's own
// errors (a body it could not decode, an unknown route) get the details
// every other error has. It tells the HTTP layer, which sets the headers
// the status calls for as the response's code is written (errorHeaders):
// the gateway writes the code itself for a stream's error.
func restStatus(ctx context.Context, err error) *status.Status {
	noteRoute(ctx)
	st := withErrorInfo(bodyViolation(ctx, status.Convert(err)))
	if info := infoFrom(ctx); info != nil {
		info.failed = st
	}
	return st
}

// errorHeaders sets the headers an error response calls for: how to
// authenticate (RFC 6750) on a 401, and when to retry on a 429.
func errorHeaders(h http.Header, st *status.Status) {
	switch st.Code() {
	case codes.Unauthenticated:
		if st.Message() == errBadKey.msg {
			h.Set("WWW-Authenticate", `Bearer realm="chatrelay", error="invalid_token"`)
		} else {
			h.Set("WWW-Authenticate", `Bearer realm="chatrelay"`)
		}
	case codes.ResourceExhausted:
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
				secs := math.Ceil(ri.GetRetryDelay().AsDuration().Seconds())
				h.Set("Retry-After", strconv.Itoa(max(1, int(secs))))
			}
		}
	}
}

// protojson's decoding errors name the field they stopped at.
var (
	unknownField = regexp.MustCompile(`unknown field "([^"]+)"`)
	invalidValue = regexp.MustCompile(`invalid value for [a-z0-9 ]*field ([A-Za-z0-9_]+):`)
	jsonPosition = regexp.MustCompile(`^proto:\s*(\(line \d+:\d+\):\s*)?`)
)

// bodyViolation turns the gateway's error for a request body that does not
// decode (InvalidArgument, its message protojson's) into a BadRequest with
// the field it names, and the fields the request has.
func bodyViolation(ctx context.Context, st *status.Status) *status.Status {
	if st.Code() != codes.InvalidArgument || len(st.Details()) > 0 {
		return st
	}
	msg := jsonPosition.ReplaceAllString(st.Message(), "")
	var field, desc string
	if m := unknownField.FindStringSubmatch(msg); m != nil {
		field, desc = m[1], "is not a field of this request"
		if fields := requestFields(ctx); fields != "" {
			desc += "; its fields are " + fields
		}
	} else if m := invalidValue.FindStringSubmatch(msg); m != nil {
		field, desc = m[1], strings.TrimSpace(msg)
	} else {
		return st
	}
	return withDetails(codes.InvalidArgument, reasonInvalid, "request body: "+field+": "+desc, nil,
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: desc}}})
}

// requestFields lists the fields of the request type of the call in ctx.
func requestFields(ctx context.Context) string {
	method, ok := runtime.RPCMethod(ctx)
	if !ok {
		return ""
	}
	svc, name, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return ""
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok || sd.Methods().ByName(protoreflect.Name(name)) == nil {
		return ""
	}
	fields := sd.Methods().ByName(protoreflect.Name(name)).Input().Fields()
	names := make([]string, fields.Len())
	for i := range fields.Len() {
		names[i] = string(fields.Get(i).Name())
	}
	return strings.Join(names, ", ")
}

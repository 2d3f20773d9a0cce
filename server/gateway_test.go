package server

import (
	"net/http/httptest"
	"regexp"
	"slices"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// isStream lists the server-streaming routes by hand, because the gateway
// serves unary calls in process and streams over a connection. Every
// route in the protos' HTTP annotations must land on the right side: a
// new streaming RPC missing from isStream would answer 501 over REST.
func TestIsStreamKnowsEveryStreamingRoute(t *testing.T) {
	vars := regexp.MustCompile(`\{[^}]*\}`)
	routes := restRoutes()
	for _, r := range routes {
		path := vars.ReplaceAllString(r.template, "ses_x")
		req := httptest.NewRequest(r.method, path, nil)
		if got := isStream(req); got != r.rpc.IsStreamingServer() {
			t.Errorf("%s (%s %s): isStream = %v, want %v", r.rpc.FullName(), r.method, r.template, got, r.rpc.IsStreamingServer())
		}
		if !r.path.MatchString(path) {
			t.Errorf("route %s %s does not match its own path %s", r.method, r.template, path)
		}
	}
	if len(routes) < 11 {
		t.Fatalf("checked only %d routes", len(routes))
	}
	// Every RPC has a route.
	for _, fd := range []protoreflect.FileDescriptor{pb.File_chatrelay_v1_chat_service_proto, pb.File_chatrelay_v1_session_service_proto} {
		for i := range fd.Services().Len() {
			methods := fd.Services().Get(i).Methods()
			for j := range methods.Len() {
				if !slices.ContainsFunc(routes, func(r restRoute) bool { return r.rpc == methods.Get(j) }) {
					t.Errorf("%s has no HTTP route", methods.Get(j).FullName())
				}
			}
		}
	}
}

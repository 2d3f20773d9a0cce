package server

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// isStream lists the server-streaming routes by hand, because the gateway
// serves unary calls in process and streams over a connection. Every
// route in the protos' HTTP annotations must land on the right side: a
// new streaming RPC missing from isStream would answer 501 over REST.
func TestIsStreamKnowsEveryStreamingRoute(t *testing.T) {
	vars := regexp.MustCompile(`\{[^}]*\}`)
	routes := 0
	for _, fd := range []protoreflect.FileDescriptor{pb.File_chatrelay_v1_chat_service_proto, pb.File_chatrelay_v1_session_service_proto} {
		for i := range fd.Services().Len() {
			methods := fd.Services().Get(i).Methods()
			for j := range methods.Len() {
				md := methods.Get(j)
				rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
				if rule == nil {
					t.Fatalf("%s has no HTTP route", md.FullName())
				}
				for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
					verb, path := httpRoute(r)
					req := httptest.NewRequest(verb, vars.ReplaceAllString(path, "ses_x"), nil)
					if got := isStream(req); got != md.IsStreamingServer() {
						t.Errorf("%s (%s %s): isStream = %v, want %v", md.FullName(), verb, path, got, md.IsStreamingServer())
					}
					routes++
				}
			}
		}
	}
	if routes < 10 {
		t.Fatalf("checked only %d routes", routes)
	}
}

func httpRoute(r *annotations.HttpRule) (verb, path string) {
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

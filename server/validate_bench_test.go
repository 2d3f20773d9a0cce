package server

import (
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// BenchmarkValidate measures checking the fields of typical requests, the
// work every call does before touching the store.
func BenchmarkValidate(b *testing.B) {
	lim := DefaultLimits()
	post := &pb.PostMessageRequest{
		SessionId: "ses_01a1ffa0-9cea-747e-97e9-82dff5da0a9e", Message: "Your order #4521 has shipped and arrives Thursday.",
		IdempotencyKey: "run-17:step-2", Metadata: map[string]string{"order": "4521", "carrier": "ups"},
	}
	b.Run("PostMessage", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c := checker{lim: lim}
			c.id("session_id", post.SessionId, true)
			c.text("message", post.Message, lim.MessageBytes, true)
			c.id("idempotency_key", post.IdempotencyKey, false)
			c.metadata("metadata", post.Metadata)
			if c.err() != nil {
				b.Fatal("valid request rejected")
			}
		}
	})
	dir, err := newDirectory(&Config{Limits: lim})
	if err != nil {
		b.Fatal(err)
	}
	srv := &chatService{Server: &Server{cfg: Config{Limits: lim}, dir: dir}}
	recv := &pb.ChatReceiveRequest{FromUser: "+15551234567", KeywordFilter: `^(yes|no)$`, Match: pb.MatchMode_MATCH_MODE_REGEX, Timeout: durationpb.New(3600e9)}
	b.Run("ChatReceive with a regex", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := srv.receiveFilter(defaultTenant, recv); err != nil {
				b.Fatal(err)
			}
		}
	})
}

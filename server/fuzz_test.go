package server

import (
	"bytes"
	"context"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/memory"
)

// The fuzz targets' seed corpora live in testdata/fuzz, so plain `go test`
// runs every seed; CI also fuzzes each target for a short while.

// FuzzReceiveFilter: whatever a ChatReceive request holds, validation
// answers (never panics), and what it accepts is within every limit.
func FuzzReceiveFilter(f *testing.F) {
	f.Add("support", "+15551234567", "", "yes", int32(1), int32(30), int64(0), int32(0), "")
	f.Add("", "", "ses_x", "(.*){1000}Z", int32(3), int32(0), int64(60), int32(5), "cr_x")
	f.Add("a b", "\xff", "", "", int32(-1), int32(2147483647), int64(-1), int32(-1), "")
	lim := DefaultLimits()
	dir, err := newDirectory(&Config{Limits: lim, Channels: []Channel{{Name: "support", Platform: platformWhatsApp, ID: "15550001111"}}})
	if err != nil {
		f.Fatal(err)
	}
	srv := &chatService{Server: &Server{cfg: Config{Limits: lim}, dir: dir}}
	f.Fuzz(func(t *testing.T, channel, user, session, keyword string, match, minutes int32, secs int64, nanos int32, conv string) {
		req := &pb.ChatReceiveRequest{Channel: channel, FromUser: user, SessionId: session, KeywordFilter: keyword,
			Match: pb.MatchMode(match), TimeoutMinutes: minutes, ConversationId: conv}
		if secs != 0 || nanos != 0 {
			req.Timeout = &durationpb.Duration{Seconds: secs, Nanos: nanos}
		}
		filter, timeout, err := srv.receiveFilter(defaultTenant, req)
		if err != nil {
			return
		}
		if timeout < 0 || timeout > lim.MaxTimeout {
			t.Fatalf("accepted timeout %s", timeout)
		}
		if len(filter.Keyword) > lim.KeywordBytes || !utf8.ValidString(filter.Keyword) {
			t.Fatalf("accepted keyword %q", filter.Keyword)
		}
		if filter.Match == store.MatchRegex {
			if n, err := store.RegexInstructions(filter.Keyword); err != nil || n > lim.RegexInstructions {
				t.Fatalf("accepted regex %q: %d instructions, %v", filter.Keyword, n, err)
			}
		}
		if _, err := filter.Compile(); err != nil {
			t.Fatalf("accepted a filter that does not compile: %v", err)
		}
	})
}

// FuzzIngestRaw: a raw payload either is refused, or is stored and reads
// back whole. Nothing accepted may become unreadable.
func FuzzIngestRaw(f *testing.F) {
	f.Add([]byte(`{"wamid":"wamid.HBgL","from":"15551234567"}`))
	f.Add([]byte(`{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`))
	f.Add([]byte(`{"n":1e308,"s":"\u2028","l":[],"o":{},"z":null}`))
	ms, err := memory.New(memory.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = ms.Close() })
	dir, err := newDirectory(&Config{Limits: DefaultLimits()})
	if err != nil {
		f.Fatal(err)
	}
	srv := &Server{cfg: Config{Store: ms, Limits: DefaultLimits()}, dir: dir}
	chat, sessions := &chatService{Server: srv}, &sessionService{Server: srv}
	ctx := context.WithValue(context.Background(), tenantKey{}, "t")
	f.Fuzz(func(t *testing.T, raw []byte) {
		s := &structpb.Struct{}
		if protojson.Unmarshal(raw, s) != nil {
			return
		}
		r, err := chat.IngestMessage(ctx, &pb.IngestMessageRequest{FromUser: "u", Text: "hi", Raw: s})
		if err != nil {
			return
		}
		list, err := sessions.ListMessages(ctx, &pb.ListMessagesRequest{SessionId: r.Session.SessionId, PageSize: 1000})
		if err != nil {
			t.Fatalf("history after an accepted raw: %v", err)
		}
		got := list.Messages[len(list.Messages)-1]
		if got.MessageId != r.Message.MessageId || !proto.Equal(got.Raw, s) {
			t.Fatalf("raw stored as %v, read back as %v", s, got.Raw)
		}
	})
}

// FuzzRESTBody: the REST codec decodes any body into a request or refuses
// it; what it decodes is a whole, valid message.
func FuzzRESTBody(f *testing.F) {
	f.Add([]byte(`{"message":"hi","idempotency_key":"k","metadata":{"a":"b"}}`))
	f.Add([]byte(`{"from_user":"u","text":"x","raw":{"a":{"b":[1,2,{"c":null}]}}}`))
	f.Add([]byte(`{"keyword_filter":"yes","timeout":"90s","match":"MATCH_MODE_REGEX"} {}`))
	f.Add([]byte("{\"message\":\"\xff\"}"))
	f.Add([]byte(`  `))
	codec := newJSONCodec()
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, m := range []proto.Message{&pb.PostMessageRequest{}, &pb.IngestMessageRequest{}, &pb.ChatReceiveRequest{}} {
			err := codec.NewDecoder(bytes.NewReader(body)).Decode(m)
			if err != nil { // refused, or empty (io.EOF)
				continue
			}
			if _, err := proto.Marshal(m); err != nil {
				t.Fatalf("decoded %T does not encode: %v", m, err)
			}
			if _, err := protojson.Marshal(m); err != nil {
				t.Fatalf("decoded %T does not encode as JSON: %v", m, err)
			}
		}
	})
}

package server

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

var gatewayJSON = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// protojsonCompact is protojson's output without the whitespace it adds
// at random (it varies from build to build on purpose).
func protojsonCompact(t testing.TB, m *pb.PostMessageResponse) ([]byte, error) {
	t.Helper()
	b, err := gatewayJSON.Marshal(m)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		t.Fatalf("protojson wrote invalid JSON %q: %v", b, err)
	}
	return out.Bytes(), nil
}

// checkPostMessageResponseJSON holds the direct encoder to protojson: when
// it writes m, the bytes are protojson's; when it declines, m is off the
// common path or protojson refuses it too.
func checkPostMessageResponseJSON(t *testing.T, m *pb.PostMessageResponse) (direct bool) {
	t.Helper()
	want, wantErr := protojsonCompact(t, m)
	got, ok := appendPostMessageResponse(nil, m)
	switch {
	case ok && wantErr != nil:
		t.Fatalf("wrote %q for a message protojson refuses (%v)", got, wantErr)
	case ok && !bytes.Equal(got, want):
		t.Fatalf("wrote\n  %s\nprotojson writes\n  %s", got, want)
	case !ok && wantErr == nil && m.GetError() == nil && m.GetTemplate() == nil && pb.MessageStatus_name[int32(m.GetStatus())] != "" &&
		pb.SentAs_name[int32(m.GetSentAs())] != "":
		t.Fatalf("declined a message protojson writes: %s", want)
	}
	return ok
}

func TestPostMessageResponseJSONMatchesProtojson(t *testing.T) {
	ts := func(s int64, n int32) *timestamppb.Timestamp { return &timestamppb.Timestamp{Seconds: s, Nanos: n} }
	delivered := func(f func(m *pb.PostMessageResponse)) *pb.PostMessageResponse {
		m := &pb.PostMessageResponse{
			Status: pb.MessageStatus_MESSAGE_STATUS_DELIVERED, MessageId: "msg_01JD3", SessionId: "ses_01JD3",
			DeliveredAt: ts(1795297498, 123456789), Platform: "whatsapp", Channel: "support",
		}
		if f != nil {
			f(m)
		}
		return m
	}
	cases := []struct {
		name   string
		m      *pb.PostMessageResponse
		direct bool
	}{
		{"delivered", delivered(nil), true},
		{"empty message", &pb.PostMessageResponse{}, true},
		{"nil message", nil, true},
		{"whole seconds", delivered(func(m *pb.PostMessageResponse) { m.DeliveredAt = ts(1795297498, 0) }), true},
		{"milliseconds", delivered(func(m *pb.PostMessageResponse) { m.DeliveredAt = ts(1795297498, 120_000_000) }), true},
		{"microseconds", delivered(func(m *pb.PostMessageResponse) { m.DeliveredAt = ts(1795297498, 1_000) }), true},
		{"nanoseconds", delivered(func(m *pb.PostMessageResponse) { m.DeliveredAt = ts(1795297498, 1) }), true},
		{"earliest timestamp", delivered(func(m *pb.PostMessageResponse) { m.DeliveredAt = ts(minTimestampSeconds, 0) }), true},
		{"latest timestamp", delivered(func(m *pb.PostMessageResponse) { m.DeliveredAt = ts(maxTimestampSeconds, 999_999_999) }), true},
		{"before year 1", delivered(func(m *pb.PostMessageResponse) { m.DeliveredAt = ts(minTimestampSeconds-1, 0) }), false},
		{"after year 9999", delivered(func(m *pb.PostMessageResponse) { m.DeliveredAt = ts(maxTimestampSeconds+1, 0) }), false},
		{"negative nanos", delivered(func(m *pb.PostMessageResponse) { m.DeliveredAt = ts(1, -1) }), false},
		{"nanos overflow", delivered(func(m *pb.PostMessageResponse) { m.DeliveredAt = ts(1, 1e9) }), false},
		{"escapes", delivered(func(m *pb.PostMessageResponse) {
			m.Channel = "a\"b\\c\b\f\n\r\t\x00\x01\x1f\x7f </script> & \u2028\u2029 é 日本 🙂"
		}), true},
		{"invalid UTF-8", delivered(func(m *pb.PostMessageResponse) { m.Platform = "ab\xffcd" }), false},
		{"unnamed status", delivered(func(m *pb.PostMessageResponse) { m.Status = 42 }), false},
		{"sent as text", delivered(func(m *pb.PostMessageResponse) { m.SentAs = pb.SentAs_SENT_AS_TEXT }), true},
		{"unnamed sent_as", delivered(func(m *pb.PostMessageResponse) { m.SentAs = 42 }), false},
		{"sent as a template", delivered(func(m *pb.PostMessageResponse) {
			m.SentAs, m.Template = pb.SentAs_SENT_AS_TEMPLATE, &pb.Template{Name: "order_update", Language: "en", Parameters: []string{"A-1"}}
		}), false},
		{"failed with an error", delivered(func(m *pb.PostMessageResponse) {
			m.Status, m.DeliveredAt = pb.MessageStatus_MESSAGE_STATUS_FAILED, nil
			m.Error = &pb.PlatformError{Code: "rate_limited", Message: "slow down"}
		}), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkPostMessageResponseJSON(t, tc.m); got != tc.direct {
				t.Fatalf("written directly = %v, want %v", got, tc.direct)
			}
		})
	}
}

// A field added to PostMessageResponse must be added to the direct
// encoder too, or REST clients would silently miss it.
func TestPostMessageResponseJSONWritesEveryField(t *testing.T) {
	b, ok := appendPostMessageResponse(nil, &pb.PostMessageResponse{})
	if !ok {
		t.Fatal("declined an empty response")
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("invalid JSON %q: %v", b, err)
	}
	var want []string
	fields := (&pb.PostMessageResponse{}).ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		want = append(want, string(fields.Get(i).Name()))
	}
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, slices.Sorted(slices.Values(want))) {
		t.Fatalf("direct encoder writes %v; the message has %v", keys, want)
	}
}

// The codec falls back to protojson for what the direct encoder declines.
func TestJSONCodecMarshalsFailedPostsWithProtojson(t *testing.T) {
	m := &pb.PostMessageResponse{
		Status: pb.MessageStatus_MESSAGE_STATUS_FAILED, MessageId: "msg_1", SessionId: "ses_1",
		Error: &pb.PlatformError{Code: "rate_limited", Message: "slow down"},
	}
	got, err := newJSONCodec().Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back pb.PostMessageResponse
	if err := protojson.Unmarshal(got, &back); err != nil {
		t.Fatalf("%s: %v", got, err)
	}
	if back.GetError().GetCode() != "rate_limited" || back.Status != m.Status {
		t.Fatalf("round trip lost the error: %s", got)
	}
	if _, err := newJSONCodec().Marshal(&pb.PostMessageResponse{Platform: "\xff"}); err == nil {
		t.Fatal("invalid UTF-8 marshalled without an error")
	}
}

func FuzzPostMessageResponseJSON(f *testing.F) {
	f.Add(int32(1), "msg_1", "ses_1", int64(1795297498), int32(5), "whatsapp", "support\n\"x\"")
	f.Add(int32(2), "", "\xff", int64(-62135596801), int32(0), "", "")
	f.Add(int32(7), "\u2028", "é", int64(253402300799), int32(999_999_999), "\x00", "\\")
	f.Fuzz(func(t *testing.T, status int32, id, session string, secs int64, nanos int32, platform, channel string) {
		checkPostMessageResponseJSON(t, &pb.PostMessageResponse{
			Status: pb.MessageStatus(status), MessageId: id, SessionId: session,
			DeliveredAt: &timestamppb.Timestamp{Seconds: secs, Nanos: nanos}, Platform: platform, Channel: channel,
		})
	})
}

func BenchmarkPostMessageResponseJSON(b *testing.B) {
	m := &pb.PostMessageResponse{
		Status: pb.MessageStatus_MESSAGE_STATUS_DELIVERED, MessageId: "msg_01JD3ZK8W4Q9", SessionId: "ses_01JD3ZK8W4Q9",
		DeliveredAt: timestamppb.Now(), Platform: "whatsapp", Channel: "support",
	}
	codec := newJSONCodec()
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := codec.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := gatewayJSON.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

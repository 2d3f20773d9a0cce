package server

import (
	"bytes"
	"encoding/json"
	"io"
	"sync"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/jsonw"
)

// jsonCodec is the gateway's JSON marshaler, made cheaper on the hot path.
//
// Decoding: runtime.JSONPb first scans a body with encoding/json into a
// RawMessage and then parses it again with protojson; reading the
// (size-limited) body once into a pooled buffer and handing it to protojson
// halves that work, and rejects trailing garbage after the object instead
// of ignoring it.
//
// Encoding: PostMessage's response, the one every REST post waits for, is
// written directly (appendPostMessageResponse); everything else goes
// through protojson.
type jsonCodec struct {
	*runtime.JSONPb
}

// bodyBuffers holds request-body buffers between calls. protojson copies
// what it keeps out of its input, so a buffer is free again once decoded.
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody keeps one large body from pinning its buffer in the pool.
const maxPooledBody = 64 << 10

func (c jsonCodec) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		buf := bodyBuffers.Get().(*bytes.Buffer)
		defer func() {
			if buf.Cap() <= maxPooledBody {
				buf.Reset()
				bodyBuffers.Put(buf)
			}
		}()
		if _, err := buf.ReadFrom(r); err != nil {
			return err
		}
		body := buf.Bytes()
		if len(bytes.TrimSpace(body)) == 0 {
			return io.EOF // the gateway treats an empty body as no fields
		}
		if m, ok := v.(proto.Message); ok {
			return c.UnmarshalOptions.Unmarshal(body, m)
		}
		// Not a message (a body bound to one field): the stock decoder.
		return runtime.DecoderWrapper{Decoder: json.NewDecoder(bytes.NewReader(body)), UnmarshalOptions: c.UnmarshalOptions}.Decode(v)
	})
}

func (c jsonCodec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(*pb.PostMessageResponse); ok {
		if b, ok := appendPostMessageResponse(make([]byte, 0, 256), m); ok {
			return b, nil
		}
	}
	return c.JSONPb.Marshal(v)
}

// streamContentType is a stream's: one JSON object per line.
const streamContentType = "application/x-ndjson"

// StreamContentType is runtime.StreamContentType: streams are served as
// newline-delimited JSON, each line a whole object.
func (jsonCodec) StreamContentType(any) string { return streamContentType }

func newJSONCodec() runtime.Marshaler {
	return jsonCodec{&runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}
}

// appendPostMessageResponse writes m as the codec's protojson options
// would (proto field names, unpopulated fields included), without
// reflection. It reports false, and the caller falls back to protojson,
// for anything off the common path: a platform error, a template, an enum
// value without a name, a timestamp protojson would refuse, or invalid UTF-8.
// TestPostMessageResponseJSONMatchesProtojson and its fuzz target hold it
// to protojson's output; TestPostMessageResponseJSONWritesEveryField
// fails when the message gains a field this does not write.
func appendPostMessageResponse(b []byte, m *pb.PostMessageResponse) ([]byte, bool) {
	// The getters read a nil m as an empty one, as protojson does.
	status, named := pb.MessageStatus_name[int32(m.GetStatus())]
	sentAs, sentNamed := pb.SentAs_name[int32(m.GetSentAs())]
	if m.GetError() != nil || m.GetTemplate() != nil || !named || !sentNamed {
		return nil, false
	}
	ok := true
	b = append(b, `{"status":"`...)
	b = append(b, status...)
	b = append(b, `","message_id":`...)
	b, ok = appendJSONString(b, m.GetMessageId(), ok)
	b = append(b, `,"session_id":`...)
	b, ok = appendJSONString(b, m.GetSessionId(), ok)
	b = append(b, `,"delivered_at":`...)
	b, ok = appendTimestamp(b, m.GetDeliveredAt(), ok)
	b = append(b, `,"platform":`...)
	b, ok = appendJSONString(b, m.GetPlatform(), ok)
	b = append(b, `,"channel":`...)
	b, ok = appendJSONString(b, m.GetChannel(), ok)
	b = append(b, `,"error":null,"platform_message_id":`...)
	b, ok = appendJSONString(b, m.GetPlatformMessageId(), ok)
	b = append(b, `,"sent_as":"`...)
	b = append(b, sentAs...)
	b = append(b, `","template":null}`...)
	return b, ok
}

// appendJSONString quotes s as protojson does; invalid UTF-8, which
// protojson refuses, clears ok.
func appendJSONString(b []byte, s string, ok bool) ([]byte, bool) {
	b, valid := jsonw.AppendString(b, s, jsonw.Protojson)
	return b, ok && valid
}

// Timestamps protojson accepts: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

// appendTimestamp writes ts in protojson's form: RFC 3339 in UTC with 0, 3,
// 6 or 9 fractional digits, or null when unset.
func appendTimestamp(b []byte, ts *timestamppb.Timestamp, ok bool) ([]byte, bool) {
	if ts == nil {
		return append(b, "null"...), ok
	}
	secs, nanos := ts.Seconds, ts.Nanos
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos >= 1e9 {
		return b, false
	}
	b = append(b, '"')
	b = time.Unix(secs, int64(nanos)).UTC().AppendFormat(b, "2006-01-02T15:04:05")
	switch {
	case nanos == 0:
	case nanos%1e6 == 0:
		b = appendFraction(b, int64(nanos/1e6), 3)
	case nanos%1e3 == 0:
		b = appendFraction(b, int64(nanos/1e3), 6)
	default:
		b = appendFraction(b, int64(nanos), 9)
	}
	return append(b, 'Z', '"'), ok
}

func appendFraction(b []byte, v int64, digits int) []byte {
	var d [9]byte
	for i := digits - 1; i >= 0; i-- {
		d[i] = byte('0' + v%10)
		v /= 10
	}
	return append(append(b, '.'), d[:digits]...)
}

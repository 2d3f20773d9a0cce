package server

import (
	"bytes"
	"encoding/json"
	"io"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// jsonCodec is the gateway's JSON marshaler with a single-pass decoder.
// runtime.JSONPb first scans a body with encoding/json into a RawMessage
// and then parses it again with protojson; reading the (size-limited) body
// once and handing it to protojson halves that work, and rejects trailing
// garbage after the object instead of ignoring it.
type jsonCodec struct {
	*runtime.JSONPb
}

func (c jsonCodec) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		body, err := io.ReadAll(r)
		if err != nil {
			return err
		}
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

func newJSONCodec() runtime.Marshaler {
	return &runtime.HTTPBodyMarshaler{Marshaler: jsonCodec{&runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}}
}

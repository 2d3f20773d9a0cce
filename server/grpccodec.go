package server

import (
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// requestCodec is grpc-go's proto codec with one difference: a request
// whose bytes do not decode (garbage, a truncated varint, invalid UTF-8 in
// a string) is not an error to grpc-go, which would answer INTERNAL before
// any interceptor runs. The failure is kept for the request, and the
// interceptors refuse it as INVALID_ARGUMENT through the one error mapping
// (interceptors.decoded), like any other bad input.
type requestCodec struct {
	encoding.CodecV2
	failed sync.Map // the request message → its decoding error
}

func newRequestCodec() *requestCodec {
	return &requestCodec{CodecV2: encoding.GetCodecV2(proto.Name)}
}

func (c *requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if err := c.CodecV2.Unmarshal(data, v); err != nil {
		c.failed.Store(v, err)
	}
	return nil
}

// take returns, and forgets, the decoding error of request v, if any.
func (c *requestCodec) take(v any) error {
	if err, ok := c.failed.LoadAndDelete(v); ok {
		return err.(error)
	}
	return nil
}

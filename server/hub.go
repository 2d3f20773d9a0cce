package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	"github.com/chatrelay/chatrelay/adapters"
	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/store"
)

// hub is the server as adapters see it (adapters.Hub): what a platform's
// callback carries goes the way of IngestMessage.
type hub struct{ *Server }

var _ adapters.Hub = hub{}

// Ingest stores a platform's inbound message. A platform cannot be told
// no, so what is past a limit is cut to fit rather than refused, and said
// so in the message's metadata: a text past limits.message_bytes is cut
// (at a character), a raw payload past limits.raw_bytes or raw_depth is
// left out, and a thread id the hub cannot hold (a Slack thread_ts past
// limits.id_bytes) is left out, replies then going to the channel. An id
// the hub cannot hold (a user or channel id) is refused and logged. The
// platform's id for the delivery is the idempotency key: a redelivery is
// taken once.
func (h hub) Ingest(ctx context.Context, in *adapters.Inbound) error {
	chk := h.checker()
	chk.id("channel", in.Channel, true)
	chk.id("user", in.User, true)
	if err := chk.err(); err != nil {
		h.cfg.Logger.Warn("inbound message refused", "platform", in.Platform, "tenant", in.Tenant, "err", err)
		h.metrics.inboundEvent(in.Platform, "error")
		return nil
	}
	var md map[string]string
	text := in.Text
	if len(text) > h.cfg.Limits.MessageBytes || !utf8.ValidString(text) {
		text = cut(text, h.cfg.Limits.MessageBytes)
		md = map[string]string{"truncated": fmt.Sprintf("the text was %d bytes; the limit is %d", len(in.Text), h.cfg.Limits.MessageBytes)}
	}
	raw := in.Raw
	if why := h.rawTooBig(raw); why != "" {
		raw = nil
		if md == nil {
			md = map[string]string{}
		}
		md["raw_omitted"] = why
	}
	thread := in.Thread
	if thread != "" && !chk.isID(thread) {
		// Replies then go to the channel, not to a thread the hub cannot
		// hold.
		thread = ""
		if md == nil {
			md = map[string]string{}
		}
		md["thread_omitted"] = fmt.Sprintf("the thread id was not an id of at most %d bytes of [A-Za-z0-9_.:@+-]", h.cfg.Limits.IDBytes)
	}
	r, err := h.cfg.Store.Ingest(ctx, store.InboundMessage{
		Tenant: in.Tenant, Platform: in.Platform, Channel: in.Channel, User: in.User, Text: text, Metadata: md, Raw: raw,
		Idempotency: store.Idempotency{Key: deliveryKey(&chk, in.Key), Fingerprint: in.Key}, Thread: thread, SentAt: in.SentAt,
		Bots: h.botIDs,
	})
	switch {
	case errors.Is(err, store.ErrUnavailable):
		h.metrics.inboundEvent(in.Platform, "error")
		return fmt.Errorf("%w: %v", adapters.ErrRetry, err)
	case err != nil:
		h.cfg.Logger.Warn("inbound message not stored", "platform", in.Platform, "tenant", in.Tenant, "err", err)
		h.metrics.inboundEvent(in.Platform, "error")
		return nil
	case r.Replayed:
		h.metrics.inboundEvent(in.Platform, "duplicate")
	default:
		h.metrics.inboundEvent(in.Platform, "accepted")
		h.metrics.message(&r.Message)
	}
	h.places.learn(&r.Session)
	h.botQueued(&r.Session)
	return nil
}

// Refused counts a callback an adapter refused.
func (h hub) Refused(platform, why string) { h.metrics.inboundEvent(platform, why) }

// Receipt applies a platform's report on a message.
func (h hub) Receipt(ctx context.Context, r store.Receipt) error {
	err := h.cfg.Store.ApplyReceipt(ctx, r)
	switch {
	case errors.Is(err, store.ErrUnavailable):
		h.metrics.inboundEvent(r.Platform, "error")
		return fmt.Errorf("%w: %v", adapters.ErrRetry, err)
	case err != nil:
		h.metrics.inboundEvent(r.Platform, "error")
		h.cfg.Logger.Warn("receipt not applied", "platform", r.Platform, "tenant", r.Tenant, "err", err)
	default:
		h.metrics.inboundEvent(r.Platform, "accepted")
	}
	return nil
}

// deliveryKey is the idempotency key for a platform's id of a delivery:
// the id itself, or its digest when it is not one the hub can hold (a
// WhatsApp wamid is base64, with '=' and '/'), so that a redelivery is
// still taken once.
func deliveryKey(chk *checker, id string) string {
	if id == "" || chk.isID(id) {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256." + base64.RawURLEncoding.EncodeToString(sum[:24])
}

// rawTooBig says why a platform's raw payload cannot be kept, or "".
func (h hub) rawTooBig(raw json.RawMessage) string {
	switch {
	case len(raw) == 0:
		return ""
	case len(raw) > h.cfg.Limits.RawBytes:
		return fmt.Sprintf("the payload was %d bytes; the limit is %d", len(raw), h.cfg.Limits.RawBytes)
	case jsonDepth(raw, h.cfg.Limits.RawDepth) > h.cfg.Limits.RawDepth:
		return fmt.Sprintf("the payload nests more than %d levels", h.cfg.Limits.RawDepth)
	case !json.Valid(raw) || bytes.TrimSpace(raw)[0] != '{':
		return "the payload is not a JSON object"
	}
	return ""
}

// cut shortens s to at most n bytes of valid UTF-8, at a character.
func cut(s string, n int) string {
	s = toValidUTF8(s)
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func toValidUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return string([]rune(s)) // each invalid byte becomes U+FFFD
}

// jsonDepth is how deeply a JSON text nests objects and arrays, counted
// up to limit+1.
func jsonDepth(b []byte, limit int) int {
	depth, deepest, inString, escaped := 0, 0, false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			if depth++; depth > deepest {
				if deepest = depth; deepest > limit {
					return deepest
				}
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return deepest
}

// IngestRequest runs IngestMessage for an account whose callback carries
// IngestMessage's REST body (the webhook platform): on the account's
// platform and channel, for its tenant, with the platform's id for the
// delivery as the idempotency key. Those three belong to the account, so
// a body that sets them is refused. The answer is the REST API's: the
// response, or the error with its HTTP status.
func (h hub) IngestRequest(ctx context.Context, r *adapters.Request) (int, []byte) {
	codec := newJSONCodec()
	req := &pb.IngestMessageRequest{}
	err := codec.Unmarshal(r.Body, req)
	if err != nil {
		err = invalid("body", "is not IngestMessage's JSON {\"from_user\",\"text\",\"session_id\",\"metadata\",\"raw\"}: %v", err)
	} else if req.Platform != "" || req.Channel != "" || req.IdempotencyKey != "" {
		err = invalid("body", "platform, channel and idempotency_key are the integration's and its webhook-id")
	}
	var resp *pb.IngestMessageResponse
	var replayed bool
	if err == nil {
		req.Platform, req.Channel, req.IdempotencyKey = r.Platform, r.Channel, r.Key
		resp, replayed, err = h.chat.ingest(context.WithValue(ctx, tenantKey{}, r.Tenant), req)
	}
	if err != nil {
		st := toStatus(err)
		logError(h.cfg.Logger, "/hooks/"+r.Platform, err, st)
		h.metrics.inboundEvent(r.Platform, "error")
		body, _ := codec.Marshal(st.Proto())
		return runtime.HTTPStatusFromCode(st.Code()), body
	}
	if replayed {
		h.metrics.inboundEvent(r.Platform, "duplicate")
	} else {
		h.metrics.inboundEvent(r.Platform, "accepted")
	}
	body, _ := codec.Marshal(resp)
	return http.StatusOK, body
}

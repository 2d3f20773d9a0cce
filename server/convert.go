package server

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/store"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

var stateToPB = map[store.SessionState]pb.SessionState{
	store.StateOpen:       pb.SessionState_SESSION_STATE_OPEN,
	store.StateBot:        pb.SessionState_SESSION_STATE_BOT,
	store.StateInProgress: pb.SessionState_SESSION_STATE_IN_PROGRESS,
	store.StateClosed:     pb.SessionState_SESSION_STATE_CLOSED,
	store.StateExpired:    pb.SessionState_SESSION_STATE_EXPIRED,
}

var stateFromPB = map[pb.SessionState]store.SessionState{
	pb.SessionState_SESSION_STATE_OPEN:        store.StateOpen,
	pb.SessionState_SESSION_STATE_BOT:         store.StateBot,
	pb.SessionState_SESSION_STATE_IN_PROGRESS: store.StateInProgress,
	pb.SessionState_SESSION_STATE_CLOSED:      store.StateClosed,
	pb.SessionState_SESSION_STATE_EXPIRED:     store.StateExpired,
}

var statusToPB = map[store.MessageStatus]pb.MessageStatus{
	store.StatusReceived:  pb.MessageStatus_MESSAGE_STATUS_RECEIVED,
	store.StatusDelivered: pb.MessageStatus_MESSAGE_STATUS_DELIVERED,
	store.StatusFailed:    pb.MessageStatus_MESSAGE_STATUS_FAILED,
	store.StatusPending:   pb.MessageStatus_MESSAGE_STATUS_PENDING,
	store.StatusSent:      pb.MessageStatus_MESSAGE_STATUS_SENT,
	store.StatusRead:      pb.MessageStatus_MESSAGE_STATUS_READ,
}

var directionToPB = map[store.Direction]pb.Direction{
	store.Inbound:  pb.Direction_DIRECTION_INBOUND,
	store.Outbound: pb.Direction_DIRECTION_OUTBOUND,
}

var matchToPB = map[store.MatchMode]pb.MatchMode{
	store.MatchKeyword: pb.MatchMode_MATCH_MODE_KEYWORD,
	store.MatchExact:   pb.MatchMode_MATCH_MODE_EXACT,
	store.MatchRegex:   pb.MatchMode_MATCH_MODE_REGEX,
}

func sessionPB(s *store.Session) *pb.Session {
	return &pb.Session{
		SessionId:      s.ID,
		Platform:       s.Platform,
		Channel:        s.Channel,
		User:           s.User,
		State:          stateToPB[s.State],
		ChatbotId:      s.ChatbotID,
		Metadata:       s.Metadata,
		CreatedAt:      ts(s.CreatedAt),
		UpdatedAt:      ts(s.UpdatedAt),
		LastActivityAt: ts(s.LastActivityAt),
		ExpiresAt:      ts(s.ExpiresAt),

		ReplyWindowClosesAt: ts(windowCloses(s)),
		Thread:              s.Thread,
	}
}

func contactPB(c *store.Contact) *pb.Contact {
	if c.User == "" {
		return nil
	}
	return &pb.Contact{
		Platform:  c.Platform,
		User:      c.User,
		Metadata:  c.Metadata,
		CreatedAt: ts(c.CreatedAt),
		UpdatedAt: ts(c.UpdatedAt),
	}
}

func platformErrorPB(e *store.PlatformError) *pb.PlatformError {
	if e == nil {
		return nil
	}
	return &pb.PlatformError{Code: e.Code, Message: e.Message, Reason: reasons[e.Code]}
}

func messagePB(m *store.Message) *pb.Message {
	return &pb.Message{
		MessageId: m.ID,
		SessionId: m.SessionID,
		Direction: directionToPB[m.Direction],
		Text:      m.Text,
		FromUser:  m.FromUser,
		Platform:  m.Platform,
		Channel:   m.Channel,
		CreatedAt: ts(m.CreatedAt),
		Status:    statusToPB[m.Status],
		Metadata:  m.Metadata,
		Raw:       rawPB(m.Raw),
		Error:     platformErrorPB(m.Error),

		PlatformMessageId: m.PlatformID,
		StatusUpdatedAt:   ts(m.StatusAt),
		Template:          templatePB(m.Template),
		Thread:            m.Thread,
	}
}

func statusChangePB(c *store.StatusChange) *pb.MessageStatusChange {
	return &pb.MessageStatusChange{
		MessageId:         c.MessageID,
		Status:            statusToPB[c.Status],
		PlatformMessageId: c.PlatformID,
		StatusUpdatedAt:   ts(c.At),
		Error:             platformErrorPB(c.Error),
	}
}

// rawPB turns a stored raw payload back into a Struct. The store only ever
// holds what checker.raw accepted, so a failure here is a bug; the payload
// is then left out rather than failing the call.
func rawPB(raw []byte) *structpb.Struct {
	if len(raw) == 0 {
		return nil
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(raw, s); err != nil {
		return nil
	}
	return s
}

// fingerprint digests a request (minus its idempotency key) so a key reused
// with a different request is caught.
func fingerprint(req proto.Message, clearKey func(proto.Message)) string {
	c := proto.Clone(req)
	clearKey(c)
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

type sessionService struct {
	pb.UnimplementedSessionServiceServer
	*Server
}

func (s *sessionService) CreateSession(ctx context.Context, req *pb.CreateSessionRequest) (*pb.CreateSessionResponse, error) {
	chk := s.checker()
	platform, channel := s.dir.channel(&chk, tenantFrom(ctx), "platform", req.Platform, "channel", req.Channel)
	chk.user("user", platform, req.User, true)
	chk.metadata("metadata", req.Metadata)
	if err := chk.err(); err != nil {
		return nil, err
	}
	ses, err := s.cfg.Store.CreateSession(ctx, store.NewSession{
		Tenant: tenantFrom(ctx), Platform: platform, Channel: channel, User: req.User, Metadata: req.Metadata,
	})
	if errors.Is(err, store.ErrSessionExists) && ses.ID != "" {
		return nil, &codedError{code: codes.AlreadyExists, reason: reasonSessionExists,
			msg:  "session " + ses.ID + " is active for this platform, channel and user; use it, or close it first",
			meta: map[string]string{"session_id": ses.ID}}
	}
	if err != nil {
		return nil, err
	}
	s.places.learn(&ses)
	return &pb.CreateSessionResponse{Session: sessionPB(&ses)}, nil
}

func (s *sessionService) GetSession(ctx context.Context, req *pb.GetSessionRequest) (*pb.GetSessionResponse, error) {
	chk := s.checker()
	chk.id("session_id", req.SessionId, true)
	if err := chk.err(); err != nil {
		return nil, err
	}
	ses, err := s.cfg.Store.GetSession(ctx, tenantFrom(ctx), req.SessionId)
	if err != nil {
		return nil, err
	}
	s.places.learn(&ses)
	return &pb.GetSessionResponse{Session: sessionPB(&ses)}, nil
}

func (s *sessionService) UpdateSession(ctx context.Context, req *pb.UpdateSessionRequest) (*pb.UpdateSessionResponse, error) {
	chk := s.checker()
	chk.id("session_id", req.SessionId, true)
	chk.metadata("metadata", req.Metadata)
	chk.metadataKeys("remove_metadata_keys", req.RemoveMetadataKeys)
	u := store.SessionUpdate{Metadata: req.Metadata, RemoveMetadata: req.RemoveMetadataKeys, EndBot: req.EndBot,
		MaxMetadata: s.cfg.Limits.MetadataEntries}
	switch req.State {
	case pb.SessionState_SESSION_STATE_UNSPECIFIED:
	case pb.SessionState_SESSION_STATE_OPEN:
		u.State = store.StateOpen
	case pb.SessionState_SESSION_STATE_IN_PROGRESS:
		u.State = store.StateInProgress
	default:
		chk.add("state", "can only be set to OPEN or IN_PROGRESS; use CloseSession to end a session and SendChatbotMessage to start a bot")
	}
	if err := chk.err(); err != nil {
		return nil, err
	}
	ses, err := s.cfg.Store.UpdateSession(ctx, tenantFrom(ctx), req.SessionId, u)
	if err != nil {
		return nil, err
	}
	s.places.learn(&ses)
	return &pb.UpdateSessionResponse{Session: sessionPB(&ses)}, nil
}

func (s *sessionService) CloseSession(ctx context.Context, req *pb.CloseSessionRequest) (*pb.CloseSessionResponse, error) {
	chk := s.checker()
	chk.id("session_id", req.SessionId, true)
	if err := chk.err(); err != nil {
		return nil, err
	}
	ses, err := s.cfg.Store.CloseSession(ctx, tenantFrom(ctx), req.SessionId)
	if err != nil {
		return nil, err
	}
	return &pb.CloseSessionResponse{Session: sessionPB(&ses)}, nil
}

const (
	defaultPageSize = 50
	maxPageSize     = 1000
)

// pageSize checks a request's page size: default 50, at most 1000 (a
// larger one is coerced, as AIP-158 says).
func pageSize(chk *checker, size int32) int {
	switch {
	case size < 0:
		chk.add("page_size", "must not be negative")
	case size == 0:
		return defaultPageSize
	case size > maxPageSize:
		return maxPageSize
	}
	return int(size)
}

// ListSessions pages through the tenant's sessions, newest activity
// first. The page token is the store's cursor: the last session's
// activity and id.
func (s *sessionService) ListSessions(ctx context.Context, req *pb.ListSessionsRequest) (*pb.ListSessionsResponse, error) {
	chk := s.checker()
	tenant := tenantFrom(ctx)
	f := store.SessionFilter{User: req.User}
	if req.Platform != "" || req.Channel != "" {
		if req.Channel == "" {
			if !platforms[req.Platform] {
				chk.add("platform", "must be one of web, api, slack, whatsapp, webhook")
			}
			f.Platform = req.Platform
		} else {
			f.Platform, f.Channel = s.dir.channel(&chk, tenant, "platform", req.Platform, "channel", req.Channel)
		}
	}
	chk.id("user", req.User, false)
	if req.State != pb.SessionState_SESSION_STATE_UNSPECIFIED {
		if f.State = stateFromPB[req.State]; f.State == 0 {
			chk.add("state", "is not a session state")
		}
	}
	size := pageSize(&chk, req.PageSize)
	var after store.SessionCursor
	if req.PageToken != "" {
		var ok bool
		if after, ok = decodeSessionToken(req.PageToken); !ok {
			chk.add("page_token", "is not a token this server issued")
		}
	}
	if err := chk.err(); err != nil {
		return nil, err
	}
	page, next, err := s.cfg.Store.ListSessions(ctx, tenant, f, after, size)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListSessionsResponse{}
	used := 0
	for i := range page {
		ses := sessionPB(&page[i])
		if used += proto.Size(ses) + 8; i > 0 && used > s.cfg.Limits.PageBytes {
			next = store.CursorAt(&page[i-1])
			break
		}
		resp.Sessions = append(resp.Sessions, ses)
	}
	resp.NextPageToken = encodeSessionToken(next)
	return resp, nil
}

// A session page token is "<ms> <session id>", base64url: opaque to
// clients.
func encodeSessionToken(c store.SessionCursor) string {
	if c.ID == "" {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.At.UnixMilli(), 10) + " " + c.ID))
}

func decodeSessionToken(tok string) (store.SessionCursor, bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return store.SessionCursor{}, false
	}
	at, id, ok := strings.Cut(string(b), " ")
	ms, err := strconv.ParseInt(at, 10, 64)
	if !ok || err != nil || id == "" || len(id) > 128 {
		return store.SessionCursor{}, false
	}
	return store.SessionCursor{At: time.UnixMilli(ms), ID: id}, true
}

func (s *sessionService) ListMessages(ctx context.Context, req *pb.ListMessagesRequest) (*pb.ListMessagesResponse, error) {
	chk := s.checker()
	chk.id("session_id", req.SessionId, true)
	size := pageSize(&chk, req.PageSize)
	var after string
	if req.PageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(req.PageToken)
		after = string(b)
		if err != nil || !chk.isID(after) {
			chk.add("page_token", "is not a token this server issued")
		}
	}
	if err := chk.err(); err != nil {
		return nil, err
	}
	// One more than a page tells whether another page exists.
	msgs, err := s.cfg.Store.ListMessages(ctx, tenantFrom(ctx), req.SessionId, after, size+1)
	if errors.Is(err, store.ErrMessageNotFound) {
		return nil, invalid("page_token", "is not a token of this session")
	}
	if err != nil {
		return nil, err
	}
	if after != "" && len(msgs) > 0 {
		if seq, _ := ids.MessageSeq(after); msgs[0].Seq != seq+1 {
			return nil, historyTrimmed(after, msgs[0].Seq-seq-1)
		}
	}
	resp := &pb.ListMessagesResponse{}
	used := 0
	for i := range msgs {
		m := messagePB(&msgs[i])
		// Each item costs its size and a few bytes of framing.
		if used += proto.Size(m) + 8; i == size || i > 0 && used > s.cfg.Limits.PageBytes {
			resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(msgs[i-1].ID))
			break
		}
		resp.Messages = append(resp.Messages, m)
	}
	return resp, nil
}

// streamHeader is sent as soon as a stream is set up, so the gateway can
// flush HTTP headers of a stream that may stay quiet for a while (see
// flushStreamHeaders).
const streamHeader = "x-chatrelay-stream"

// replayPage is how many history messages a watcher reads per store call.
const replayPage = 256

// WatchSession is a watcher's life: begin (checks, the subscription, the
// history), then live until the session ends. A watch is idle nearly all its
// life, and an idle goroutine costs the stack it blocks on, so begin's large
// frame is gone by the time live waits (docs/design.md §12).
func (s *sessionService) WatchSession(req *pb.WatchSessionRequest, stream grpc.ServerStreamingServer[pb.WatchSessionResponse]) error {
	w, expires, err := s.beginWatch(req, stream)
	if w == nil {
		return err
	}
	defer w.sub.Close()
	return w.live(expires, newAlarm(s.cfg.Clock), s.stopping)
}

// beginWatch checks the request, subscribes and sends the history after
// the cursor. It answers a watcher ready to go live with the session's
// expiry, or no watcher once the stream is over (err, or the end sent).
func (s *sessionService) beginWatch(req *pb.WatchSessionRequest, stream grpc.ServerStreamingServer[pb.WatchSessionResponse]) (_ *watcher, expires time.Time, err error) {
	ctx := stream.Context()
	chk := s.checker()
	chk.id("session_id", req.SessionId, true)
	chk.id("after_message_id", req.AfterMessageId, false)
	if req.LiveOnly && req.AfterMessageId != "" {
		chk.add("live_only", "cannot be combined with after_message_id")
	}
	if err := chk.err(); err != nil {
		return nil, expires, err
	}
	tenant, st := tenantFrom(ctx), s.cfg.Store
	if !ids.Issued(ids.SessionPrefix, req.SessionId) {
		// Not one we issued: not found, without a subscription to it.
		return nil, expires, store.ErrSessionNotFound
	}

	// Subscribe first, then read: anything appended after this point is
	// either in what we read or in the subscription, and the cursor below
	// drops what is in both.
	sub, err := st.Subscribe(ctx, store.SessionTopic(tenant, req.SessionId))
	if err != nil {
		return nil, expires, err
	}
	live := false
	defer func() {
		if !live {
			sub.Close()
		}
	}()
	ses, err := st.GetSession(ctx, tenant, req.SessionId)
	if err != nil {
		return nil, expires, err
	}
	w := &watcher{ctx: ctx, st: st, sub: sub, tenant: tenant, id: req.SessionId, stream: stream}
	switch {
	case req.LiveOnly:
		w.at(ses.LastMessageID, ses.LastSeq)
	case req.AfterMessageId != "":
		seq, err := ids.MessageSeq(req.AfterMessageId)
		if err != nil {
			return nil, expires, invalid("after_message_id", "is not a message of this session")
		}
		w.at(req.AfterMessageId, seq)
	}
	// The first page of history is read before the stream is accepted, so
	// a cursor that is not in it (unknown, or trimmed) is refused with its
	// own status: over REST, the HTTP code.
	var first []store.Message
	if !req.LiveOnly {
		if first, err = w.read(); errors.Is(err, store.ErrMessageNotFound) {
			return nil, expires, invalid("after_message_id", "is not a message of this session")
		} else if err != nil {
			return nil, expires, err
		}
	}
	if err := stream.SendHeader(metadata.Pairs(streamHeader, "watch")); err != nil {
		return nil, expires, err
	}
	if !req.LiveOnly {
		if err := w.sendAll(first); err != nil {
			return nil, expires, err
		}
		if len(first) == replayPage {
			if err := w.catchUp(); err != nil {
				return nil, expires, err
			}
		}
	}
	if !ses.State.Active() {
		return nil, expires, w.ended(&ses)
	}
	live = true
	return w, ses.ExpiresAt, nil
}

// live follows the session from the cursor on until it ends: events from
// the subscription while they join the cursor exactly, history whenever
// they do not (a gap, a resync, the end), and the session's expiry on its
// alarm. It is where an idle watch waits, so it keeps a small frame.
func (w *watcher) live(expires time.Time, expiry *alarm, stopping <-chan struct{}) error {
	expiry.set(expires, 0)
	defer expiry.stop()
	for {
		var resync, expired bool
		select {
		case <-w.sub.Ready():
			var err error
			if resync, err = w.apply(w.sub.Next()); err != nil {
				return err
			}
		case <-expiry.C:
			expired = true
		case <-w.ctx.Done():
			return w.ctx.Err()
		case <-stopping:
			return w.shuttingDown()
		}
		if resync || expired {
			if over, err := w.recheck(resync, expiry); over {
				return err
			}
		}
	}
}

// recheck asks the store whether the session goes on, after a resync
// (having read what the events left out) or when the expiry alarm rings.
// over is whether the stream is done, with err the last send's.
func (w *watcher) recheck(resync bool, expiry *alarm) (over bool, err error) {
	// The session first: once it has ended its history is final, so the
	// one catch-up after it holds every message appended before the end
	// (by another replica, just before it). An end after this read comes
	// on the subscription, which is live again by now.
	ses, err := w.st.GetSession(w.ctx, w.tenant, w.id)
	if err != nil {
		return true, err
	}
	active := ses.State.Active()
	if resync || !active {
		if err := w.catchUp(); err != nil {
			return true, err
		}
	}
	if active {
		if !resync {
			// A message moved the expiry, or the store's clock lags.
			expiry.set(ses.ExpiresAt, rearmFloor)
		}
		return false, nil
	}
	return true, w.ended(&ses)
}

func (w *watcher) shuttingDown() error {
	return &codedError{code: codes.Unavailable, reason: reasonShuttingDown,
		msg:  "the server is shutting down; watch again with after_message_id set to the last message received",
		meta: map[string]string{"last_message_id": w.lastID}}
}

// apply sends the live events that continue the cursor, and reports
// whether the stream must catch up from history instead: the events were
// a resync, left a gap, or ended the session.
func (w *watcher) apply(evs []store.Event, resync bool) (bool, error) {
	for _, ev := range evs {
		switch {
		case resync:
		case ev.Kind == store.EventMessageStatus:
			// Only for a message the stream has sent; a later one comes
			// from history with its status.
			if ev.Status.Seq <= w.lastSeq {
				if err := w.status(ev.Status); err != nil {
					return false, err
				}
			}
		case ev.Kind == store.EventMessage && ev.Message.Seq <= w.lastSeq:
			// Already sent, from history.
		case ev.Kind == store.EventMessage && ev.Message.Seq == w.lastSeq+1:
			if err := w.send(ev.Message); err != nil {
				return false, err
			}
		case ev.Kind == store.EventMessage:
			resync = true // a gap: read it from history
		case ev.Kind == store.EventSessionEnded:
			resync = true // flush what is in flight, then read the end
		}
	}
	return resync, nil
}

// watcher tracks what one WatchSession stream has sent. Message IDs increase
// in append order and Seq has no gaps, so (lastID, lastSeq) is an exact
// cursor: history after lastID fills any gap, and a live event with
// Seq == lastSeq+1 is the very next message.
type watcher struct {
	ctx     context.Context
	st      store.Store
	sub     *store.Subscription
	tenant  string
	id      string
	stream  grpc.ServerStreamingServer[pb.WatchSessionResponse]
	lastID  string
	lastSeq uint64
	// exact is set once the cursor names a message the client has (or
	// asked to start after): from then on a gap is a loss to report.
	// Before it, with no after_message_id, "all retained history" starts
	// wherever the history does.
	exact bool
}

func (w *watcher) at(id string, seq uint64) {
	w.lastID, w.lastSeq, w.exact = id, seq, true
}

func (w *watcher) send(m *store.Message) error {
	if err := w.stream.Send(&pb.WatchSessionResponse{Event: &pb.WatchSessionResponse_Message{Message: messagePB(m)}}); err != nil {
		return err
	}
	w.at(m.ID, m.Seq)
	return nil
}

// catchUp sends every retained message after the cursor. If the history
// no longer holds the message right after it (a watcher that fell too far
// behind, or started after a trimmed message), the stream ends with
// HISTORY_TRIMMED rather than skip what was lost.
func (w *watcher) catchUp() error {
	for {
		msgs, err := w.read()
		if err != nil {
			return err
		}
		if err := w.sendAll(msgs); err != nil {
			return err
		}
		if len(msgs) < replayPage {
			return nil
		}
	}
}

// read is the next page of history after the cursor, or HISTORY_TRIMMED.
func (w *watcher) read() ([]store.Message, error) {
	msgs, err := w.st.ListMessages(w.ctx, w.tenant, w.id, w.lastID, replayPage)
	if err != nil {
		return nil, err
	}
	if len(msgs) > 0 && w.exact && msgs[0].Seq != w.lastSeq+1 {
		return nil, historyTrimmed(w.lastID, msgs[0].Seq-w.lastSeq-1)
	}
	return msgs, nil
}

func (w *watcher) sendAll(msgs []store.Message) error {
	for i := range msgs {
		if err := w.send(&msgs[i]); err != nil {
			return err
		}
	}
	return nil
}

// historyTrimmed is the error of a reader whose cursor fell off the
// retained history: lost messages were trimmed after afterID.
func historyTrimmed(afterID string, lost uint64) error {
	return &codedError{code: codes.OutOfRange, reason: reasonHistoryTrimmed,
		msg: fmt.Sprintf("%d messages after %s were trimmed from the retained history before they could be read; "+
			"read on from the oldest retained message (watch or list with no cursor) knowing they are lost", lost, afterID),
		meta: map[string]string{"last_message_id": afterID}}
}

func (w *watcher) status(c *store.StatusChange) error {
	return w.stream.Send(&pb.WatchSessionResponse{Event: &pb.WatchSessionResponse_MessageStatus{MessageStatus: statusChangePB(c)}})
}

func (w *watcher) ended(ses *store.Session) error {
	return w.stream.Send(&pb.WatchSessionResponse{Event: &pb.WatchSessionResponse_Ended{Ended: &pb.SessionEnded{
		State:   stateToPB[ses.State],
		EndedAt: ts(ses.ExpiresAt),
	}}})
}

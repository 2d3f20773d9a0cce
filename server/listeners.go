package server

import (
	"context"
	"encoding/base64"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/store"
)

// Inspecting and cancelling waits (docs/design.md §4): GetListener and
// ListListeners read listeners without attaching to them; CancelListener
// decides one, by the store's compare-and-set.

func (c *chatService) GetListener(ctx context.Context, req *pb.GetListenerRequest) (*pb.GetListenerResponse, error) {
	l, err := c.listener(ctx, req.ConversationId, c.cfg.Store.GetListener)
	if err != nil {
		return nil, err
	}
	return &pb.GetListenerResponse{Listener: l}, nil
}

func (c *chatService) CancelListener(ctx context.Context, req *pb.CancelListenerRequest) (*pb.CancelListenerResponse, error) {
	l, err := c.listener(ctx, req.ConversationId, c.cfg.Store.CancelListener)
	if err != nil {
		return nil, err
	}
	return &pb.CancelListenerResponse{Listener: l}, nil
}

// listener checks a conversation id and answers what op (the store's
// GetListener or CancelListener) makes of the tenant's listener by it.
func (c *chatService) listener(ctx context.Context, id string, op func(ctx context.Context, tenant, id string) (store.Listener, error)) (*pb.Listener, error) {
	chk := c.checker()
	chk.id("conversation_id", id, true)
	if err := chk.err(); err != nil {
		return nil, err
	}
	l, err := op(ctx, tenantFrom(ctx), id)
	if err != nil {
		return nil, err
	}
	return listenerPB(&l), nil
}

// ListListeners pages through the tenant's listeners in id order. The page
// token is the last listener id read, base64url: opaque to clients.
func (c *chatService) ListListeners(ctx context.Context, req *pb.ListListenersRequest) (*pb.ListListenersResponse, error) {
	chk := c.checker()
	tenant := tenantFrom(ctx)
	f := store.ListenerFilter{SessionID: req.SessionId, User: req.User}
	chk.id("session_id", req.SessionId, false)
	chk.id("user", req.User, false)
	if req.Channel != "" {
		if ch, ok := c.dir.named(tenant, req.Channel); ok {
			f.Channel = ch.ID
		} else {
			chk.id("channel", req.Channel, false)
			f.Channel = req.Channel
		}
	}
	if req.State != pb.ListenerState_LISTENER_STATE_UNSPECIFIED {
		kind, ok := outcomeFromPB[req.State]
		if !ok {
			chk.add("state", "is not a listener state")
		}
		f.Outcome, f.ByOutcome = kind, true
	}
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
	page, next, err := c.cfg.Store.ListListeners(ctx, tenant, f, after, size)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListListenersResponse{}
	for i := range page {
		resp.Listeners = append(resp.Listeners, listenerPB(&page[i]))
	}
	if next != "" {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(next))
	}
	return resp, nil
}

var outcomeToPB = map[store.OutcomeKind]pb.ListenerState{
	store.Pending:        pb.ListenerState_LISTENER_STATE_PENDING,
	store.Matched:        pb.ListenerState_LISTENER_STATE_MATCHED,
	store.TimedOut:       pb.ListenerState_LISTENER_STATE_TIMED_OUT,
	store.FilterMismatch: pb.ListenerState_LISTENER_STATE_FILTER_MISMATCH,
	store.Cancelled:      pb.ListenerState_LISTENER_STATE_CANCELLED,
}

var outcomeFromPB = func() map[pb.ListenerState]store.OutcomeKind {
	m := make(map[pb.ListenerState]store.OutcomeKind, len(outcomeToPB))
	for k, v := range outcomeToPB {
		m[v] = k
	}
	return m
}()

func listenerPB(l *store.Listener) *pb.Listener {
	out := &pb.Listener{
		ConversationId: l.ID,
		State:          outcomeToPB[l.Outcome],
		Channel:        l.Filter.Channel,
		FromUsers:      l.Filter.Users,
		SessionId:      l.Filter.SessionID,
		KeywordFilter:  l.Filter.Keyword,
		Match:          matchToPB[l.Filter.Match],
		AfterMessageId: l.Filter.AfterMessageID,
		CreatedAt:      ts(l.CreatedAt),
		TimeoutAt:      ts(l.Deadline),
		DecidedAt:      ts(l.DecidedAt),
	}
	if l.Message != nil {
		out.Message = messagePB(l.Message)
	}
	return out
}

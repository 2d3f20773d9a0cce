package server_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/store"
)

type receiveStream = grpc.ServerStreamingClient[pb.ChatReceiveResponse]

// receive opens a ChatReceive stream and returns it with its waiting frame.
func (ts *testServer) receive(ctx context.Context, req *pb.ChatReceiveRequest) (receiveStream, *pb.ChatReceiveWaiting) {
	ts.t.Helper()
	st, err := ts.chat.ChatReceive(ctx, req)
	if err != nil {
		ts.t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil {
		ts.t.Fatalf("first frame: %v", err)
	}
	w := first.GetWaiting()
	if w == nil {
		ts.t.Fatalf("first frame is %v, want waiting", first)
	}
	return st, w
}

func (ts *testServer) ingest(user, text string) *pb.IngestMessageResponse {
	ts.t.Helper()
	r, err := ts.chat.IngestMessage(ts.ctx(), &pb.IngestMessageRequest{FromUser: user, Text: text})
	if err != nil {
		ts.t.Fatalf("IngestMessage: %v", err)
	}
	return r
}

func TestChatReceiveWaitingThenSuccessOverGRPC(t *testing.T) {
	ts := start(t, nil, nil)
	st, w := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u1", KeywordFilter: "yes", TimeoutMinutes: 30})
	if w.ListeningForUser != "u1" || w.KeywordFilter != "yes" || w.ConversationId[:3] != "cr_" ||
		!w.TimeoutAt.AsTime().Equal(epoch.Add(30*time.Minute)) || w.Resumed {
		t.Fatalf("waiting = %v", w)
	}
	ts.ingest("u2", "yes") // another user
	ts.ingest("u1", "yesterday")
	in, err := ts.chat.IngestMessage(ts.ctx(), &pb.IngestMessageRequest{FromUser: "u1", Text: "Yes please!", Raw: mustStruct(t, map[string]any{"wamid": "abc"})})
	if err != nil || in.ListenersMatched != 1 {
		t.Fatalf("ingest = %v, %v", in, err)
	}
	s := recvOrFail(t, st.Recv).GetSuccess()
	if s == nil || s.MessageText != "Yes please!" || s.FromUser != "u1" || s.FromChannel != "api" || s.ConversationId != w.ConversationId ||
		s.MessageId != in.Message.MessageId || s.SessionId != in.Session.SessionId || s.RawMessage.Fields["wamid"].GetStringValue() != "abc" ||
		!s.ReceivedAt.AsTime().Equal(epoch) {
		t.Fatalf("success = %v", s)
	}
	wantEOF(t, st.Recv)
}

func TestChatReceiveOverRESTStreamsNDJSONFrames(t *testing.T) {
	ts := start(t, nil, nil)
	s := ts.restStream("POST", "/v1/chat:receive", map[string]any{"channel": "api", "from_user": "u1", "timeout_minutes": 5})
	if s.resp.StatusCode != 200 {
		t.Fatalf("HTTP %d", s.resp.StatusCode)
	}
	waiting := s.next()
	id := str(waiting, "result", "waiting", "conversation_id")
	if id == "" || str(waiting, "result", "waiting", "listening_on_channel") != "api" ||
		str(waiting, "result", "waiting", "listening_for_user") != "u1" || str(waiting, "result", "waiting", "timeout_at") == "" {
		t.Fatalf("waiting line = %v", waiting)
	}
	ts.rest("POST", "/v1/inbound-messages", map[string]any{"from_user": "u1", "text": "hello"})
	success := s.next()
	if str(success, "result", "success", "message_text") != "hello" || str(success, "result", "success", "conversation_id") != id {
		t.Fatalf("success line = %v", success)
	}
	s.end()
}

func TestChatReceiveTimeoutAndFilterMismatch(t *testing.T) {
	ts := start(t, nil, nil)
	quiet, qw := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u1", TimeoutMinutes: 5})
	picky, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u2", KeywordFilter: "confirm", Timeout: durationpb.New(90 * time.Second)})
	ts.ingest("u2", "no thanks")
	rest := ts.restStream("POST", "/v1/chat:receive", map[string]any{"from_user": "u3", "timeout": "120s"})
	rest.next()

	ts.clk.Advance(90 * time.Second)
	e := recvOrFail(t, picky.Recv).GetError()
	if e == nil || e.ErrorCode != "filter_mismatch" || e.WaitedMinutes != 1 || e.Waited.AsDuration() != 90*time.Second || e.Message == "" {
		t.Fatalf("picky outcome = %v", e)
	}
	wantEOF(t, picky.Recv)

	ts.clk.Advance(210 * time.Second)
	e = recvOrFail(t, quiet.Recv).GetError()
	if e == nil || e.ErrorCode != "timeout" || e.WaitedMinutes != 5 || e.ConversationId != qw.ConversationId {
		t.Fatalf("quiet outcome = %v", e)
	}
	wantEOF(t, quiet.Recv)

	line := rest.next()
	if str(line, "result", "error", "error_code") != "timeout" || path(line, "result", "error", "waited_minutes") != float64(2) {
		t.Fatalf("REST timeout line = %v", line)
	}
	rest.end()
}

func TestChatReceiveMatchModes(t *testing.T) {
	ts := start(t, nil, nil)
	cases := []struct {
		match   pb.MatchMode
		keyword string
		texts   []string // the last one is the first that matches
	}{
		{pb.MatchMode_MATCH_MODE_UNSPECIFIED, "stop", []string{"nonstop", "STOP."}},
		{pb.MatchMode_MATCH_MODE_EXACT, "1", []string{"1 more", " 1 "}},
		{pb.MatchMode_MATCH_MODE_REGEX, `^\d{6}$`, []string{"code 123456", "123456"}},
	}
	for i, c := range cases {
		user := fmt.Sprint("mode", i)
		st, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: user, KeywordFilter: c.keyword, Match: c.match})
		for _, text := range c.texts {
			ts.ingest(user, text)
		}
		if got := recvOrFail(t, st.Recv).GetSuccess().GetMessageText(); got != c.texts[len(c.texts)-1] {
			t.Errorf("%v %q matched %q, want %q", c.match, c.keyword, got, c.texts[len(c.texts)-1])
		}
	}
}

func TestChatReceiveResumeAfterDrop(t *testing.T) {
	ts := start(t, nil, nil)
	ctx, cancel := context.WithCancel(ts.ctx())
	_, w := ts.receive(ctx, &pb.ChatReceiveRequest{FromUser: "u1", KeywordFilter: "ok"})
	cancel() // the workflow engine goes away

	// The match happens while nobody is attached.
	if r := ts.ingest("u1", "ok"); r.ListenersMatched != 1 {
		t.Fatalf("detached listener did not match: %v", r)
	}
	// Resume by id only, over REST.
	s := ts.restStream("POST", "/v1/chat:receive", map[string]any{"conversation_id": w.ConversationId})
	again := s.next()
	if path(again, "result", "waiting", "resumed") != true || str(again, "result", "waiting", "listening_for_user") != "u1" {
		t.Fatalf("resumed waiting = %v", again)
	}
	if got := str(s.next(), "result", "success", "message_text"); got != "ok" {
		t.Fatalf("resumed outcome = %q, want the match made while detached", got)
	}
	s.end()

	// Resuming again replays the same outcome: it is kept for 24 h.
	st, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{ConversationId: w.ConversationId, FromUser: "u1", KeywordFilter: "ok"})
	if got := recvOrFail(t, st.Recv).GetSuccess(); got.GetMessageText() != "ok" {
		t.Fatalf("second resume = %v", got)
	}
	ts.clk.Advance(24 * time.Hour)
	err := resumeErr(ts, w.ConversationId)
	wantStatus(t, err, codes.NotFound, "LISTENER_NOT_FOUND", "")
}

// resumeErr resumes conversation id and returns how the stream fails, if
// it does.
func resumeErr(ts *testServer, id string) error {
	return firstErr(ts.chat.ChatReceive(ts.ctx(), &pb.ChatReceiveRequest{ConversationId: id}))
}

func TestChatReceiveResumeErrors(t *testing.T) {
	ts := start(t, nil, nil)
	ctx, cancel := context.WithCancel(ts.ctx())
	_, w := ts.receive(ctx, &pb.ChatReceiveRequest{FromUser: "u1", KeywordFilter: "ok"})
	cancel()

	err := firstErr(ts.chat.ChatReceive(ts.ctx(), &pb.ChatReceiveRequest{ConversationId: w.ConversationId, FromUser: "u2"}))
	wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", "conversation_id")

	err = resumeErr(ts, "cr_00000000-0000-0000-0000-000000000000")
	wantStatus(t, err, codes.NotFound, "LISTENER_NOT_FOUND", "")
	r := ts.rest("POST", "/v1/chat:receive", map[string]any{"conversation_id": "cr_unknown"})
	if r.code != 404 {
		t.Fatalf("REST resume of unknown id: HTTP %d %s", r.code, r.body)
	}

	// Another tenant's id is unknown too.
	ts2 := start(t, ts.store, ts.clk, withKeys(testKey{"k-tenant-b-0123456789", "tenant-b"}))
	ts2.key = "k-tenant-b-0123456789"
	err = resumeErr(ts2, w.ConversationId)
	wantStatus(t, err, codes.NotFound, "LISTENER_NOT_FOUND", "")
}

func TestChatReceiveResumeAfterDeadlineResolvesAtOnce(t *testing.T) {
	ts := start(t, nil, nil)
	ctx, cancel := context.WithCancel(ts.ctx())
	_, w := ts.receive(ctx, &pb.ChatReceiveRequest{FromUser: "u1", KeywordFilter: "yes", TimeoutMinutes: 10})
	cancel()
	ts.ingest("u1", "maybe")
	ts.clk.Advance(time.Hour)
	st, again := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{ConversationId: w.ConversationId})
	if !again.Resumed {
		t.Fatalf("waiting = %v", again)
	}
	e := recvOrFail(t, st.Recv).GetError()
	if e.GetErrorCode() != "filter_mismatch" || e.WaitedMinutes != 10 {
		t.Fatalf("outcome = %v, want filter_mismatch after 10 minutes", e)
	}
}

func TestChatReceiveIdleListenerIsDroppedAfterResumeWindow(t *testing.T) {
	ts := start(t, nil, nil, func(c *serverConfig) { c.ResumeWindow = time.Hour })
	ctx, cancel := context.WithCancel(ts.ctx())
	st, w := ts.receive(ctx, &pb.ChatReceiveRequest{FromUser: "u1"})
	cancel()
	// The server records the detach when it notices the cancellation; wait
	// for the stream to be gone on the client side, then move past the
	// window measured from the detach.
	_, _ = st.Recv()
	ts.clk.Advance(59 * time.Minute)
	ctx2, cancel2 := context.WithCancel(ts.ctx())
	st2, _ := ts.receive(ctx2, &pb.ChatReceiveRequest{ConversationId: w.ConversationId})
	cancel2() // attached and detached again at 59 min: the window restarts
	_, _ = st2.Recv()
	ts.clk.Advance(59 * time.Minute)
	if err := resumeErr(ts, w.ConversationId); err != nil {
		t.Fatalf("listener dropped inside its renewed resume window: %v", err)
	}
	ts.clk.Advance(2 * time.Hour)
	err := resumeErr(ts, w.ConversationId)
	wantStatus(t, err, codes.NotFound, "LISTENER_NOT_FOUND", "")
}

func TestChatReceiveBroadcastsToEveryMatchingListener(t *testing.T) {
	ts := start(t, nil, nil)
	var streams []receiveStream
	for _, req := range []*pb.ChatReceiveRequest{
		{FromUser: "u1"}, {FromUser: "u1", KeywordFilter: "go"}, {Channel: "api"}, {},
	} {
		st, _ := ts.receive(ts.ctx(), req)
		streams = append(streams, st)
	}
	other, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u2"})
	if r := ts.ingest("u1", "go"); r.ListenersMatched != 4 {
		t.Fatalf("matched %d, want 4", r.ListenersMatched)
	}
	for i, st := range streams {
		if got := recvOrFail(t, st.Recv).GetSuccess(); got.GetMessageText() != "go" {
			t.Fatalf("stream %d got %v", i, got)
		}
	}
	// The non-matching one still waits for its own message; the resolved
	// ones do not fire again.
	if r := ts.ingest("u2", "me"); r.ListenersMatched != 1 {
		t.Fatalf("matched %d, want 1", r.ListenersMatched)
	}
	if got := recvOrFail(t, other.Recv).GetSuccess(); got.GetFromUser() != "u2" {
		t.Fatalf("other got %v", got)
	}
}

func TestChatReceiveNeverMissesAMessageIngestedAfterWaiting(t *testing.T) {
	ts := start(t, nil, nil)
	for i := range 50 {
		user := fmt.Sprint("u", i)
		st, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: user})
		// Immediately after waiting, from another connection (REST).
		ts.rest("POST", "/v1/inbound-messages", map[string]any{"from_user": user, "text": "now"})
		if got := recvOrFail(t, st.Recv).GetSuccess(); got.GetMessageText() != "now" {
			t.Fatalf("round %d: %v", i, got)
		}
	}
}

func TestChatReceiveExactlyOneOutcomeWhenMatchRacesDeadline(t *testing.T) {
	ts := start(t, nil, nil)
	raceMatchAndDeadline(t, ts, func(user string) (receiveStream, receiveStream) {
		a, w := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: user, TimeoutMinutes: 1})
		b, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{ConversationId: w.ConversationId})
		return a, b
	})
}

func TestChatReceiveEndsUndecidedOnShutdownAndResumesElsewhere(t *testing.T) {
	a := start(t, nil, nil)
	b := start(t, a.store, a.clk) // a second server on the same state
	st, w := a.receive(a.ctx(), &pb.ChatReceiveRequest{FromUser: "u1", TimeoutMinutes: 60})
	a.stop()
	_, err := st.Recv()
	wantStatus(t, err, codes.Unavailable, "SERVER_SHUTTING_DOWN", "")

	b.ingest("u1", "still there?")
	st2, again := b.receive(b.ctx(), &pb.ChatReceiveRequest{ConversationId: w.ConversationId})
	if !again.Resumed || !again.TimeoutAt.AsTime().Equal(w.TimeoutAt.AsTime()) {
		t.Fatalf("resumed waiting = %v", again)
	}
	if got := recvOrFail(t, st2.Recv).GetSuccess(); got.GetMessageText() != "still there?" {
		t.Fatalf("resumed outcome = %v", got)
	}
}

// laggingStore behaves, once, like a store (a Redis replica) whose clock
// lags a little: asked about a listener whose deadline has just passed, it
// still sees it pending, so it decides nothing and tells nobody.
type laggingStore struct {
	store.Store
	clk        *clock.Fake
	registered atomic.Pointer[store.Listener]
	lied       atomic.Bool
}

func (s *laggingStore) RegisterListener(ctx context.Context, nl store.NewListener) (store.Listener, error) {
	l, err := s.Store.RegisterListener(ctx, nl)
	s.registered.Store(&l)
	return l, err
}

func (s *laggingStore) GetListener(ctx context.Context, tenant, id string) (store.Listener, error) {
	if l := s.registered.Load(); l != nil && l.ID == id && !s.clk.Now().Before(l.Deadline) && !s.lied.Swap(true) {
		return *l, nil
	}
	return s.Store.GetListener(ctx, tenant, id)
}

func TestChatReceiveTimesOutEvenWhenTheStoreSeesTheDeadlineLate(t *testing.T) {
	clk := clock.NewFake(epoch)
	lag := &laggingStore{Store: memoryStore(t, store.Options{Clock: clk}), clk: clk}
	ts := start(t, lag, clk)
	st, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u1", TimeoutMinutes: 1})
	clk.Advance(time.Minute)
	// The store said pending once; the stream must ask again rather than
	// wait forever.
	waitFor(t, "the lie and a re-armed timer", func() bool { return lag.lied.Load() && clk.Timers() > 0 })
	clk.Advance(time.Second)
	if e := recvOrFail(t, st.Recv).GetError(); e.GetErrorCode() != "timeout" {
		t.Fatalf("outcome = %v, want timeout", e)
	}
}

func TestChatReceiveAttachedListenerOutlivesItsResumeWindow(t *testing.T) {
	ts := start(t, nil, nil, func(c *serverConfig) { c.ResumeWindow = time.Hour })
	st, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u1"})
	// Three hours attached, in steps: each step the stream renews the
	// listener's idle limit (its renewal alarm is armed again afterwards).
	for range 9 {
		waitFor(t, "the renewal alarm", func() bool { return ts.clk.Timers() == 1 })
		ts.clk.Advance(20 * time.Minute)
	}
	waitFor(t, "the last renewal", func() bool { return ts.clk.Timers() == 1 })
	if r := ts.ingest("u1", "still waiting?"); r.ListenersMatched != 1 {
		t.Fatalf("the attached listener was dropped after 3 h with a 1 h resume window")
	}
	if got := recvOrFail(t, st.Recv).GetSuccess().GetMessageText(); got != "still waiting?" {
		t.Fatalf("got %q", got)
	}
}

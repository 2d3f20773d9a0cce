package server_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/store"
)

func TestSessionLifecycleOverREST(t *testing.T) {
	ts := start(t, nil, nil)
	r := ts.rest("POST", "/v1/sessions", map[string]any{"platform": "web", "user": "visitor-1", "metadata": map[string]string{"page": "/pricing"}})
	if r.code != 200 {
		t.Fatalf("create: HTTP %d %s", r.code, r.body)
	}
	ses := r.json(t) // the Session itself, not wrapped
	id := str(ses, "session_id")
	if id[:4] != "ses_" || str(ses, "state") != "SESSION_STATE_OPEN" || str(ses, "platform") != "web" || str(ses, "channel") != "web" ||
		str(ses, "metadata", "page") != "/pricing" || str(ses, "expires_at") != "2026-05-02T09:00:00Z" {
		t.Fatalf("created = %s", r.body)
	}
	wantREST(t, ts.rest("POST", "/v1/sessions", map[string]any{"platform": "web", "user": "visitor-1"}), 409, "SESSION_ALREADY_ACTIVE")

	got := ts.rest("GET", "/v1/sessions/"+id, nil).json(t)
	if str(got, "session_id") != id {
		t.Fatalf("get = %v", got)
	}
	upd := ts.rest("PATCH", "/v1/sessions/"+id, map[string]any{
		"state": "SESSION_STATE_IN_PROGRESS", "metadata": map[string]string{"agent": "bo"}, "remove_metadata_keys": []string{"page"},
	})
	if u := upd.json(t); str(u, "state") != "SESSION_STATE_IN_PROGRESS" || str(u, "metadata", "agent") != "bo" || path(u, "metadata", "page") != nil {
		t.Fatalf("update = %s", upd.body)
	}
	wantREST(t, ts.rest("PATCH", "/v1/sessions/"+id, map[string]any{"state": "SESSION_STATE_CLOSED"}), 400, "INVALID_ARGUMENT")

	closed := ts.rest("POST", "/v1/sessions/"+id+":close", map[string]any{}).json(t)
	if str(closed, "state") != "SESSION_STATE_CLOSED" {
		t.Fatalf("close = %v", closed)
	}
	if again := ts.rest("POST", "/v1/sessions/"+id+":close", nil); again.code != 200 || str(again.json(t), "state") != "SESSION_STATE_CLOSED" {
		t.Fatalf("closing twice: %d %s", again.code, again.body)
	}
	wantREST(t, ts.rest("PATCH", "/v1/sessions/"+id, map[string]any{"end_bot": true}), 400, "SESSION_CLOSED")
	wantREST(t, ts.rest("GET", "/v1/sessions/ses_nope", nil), 404, "SESSION_NOT_FOUND")
}

func TestSessionExpiresAfterItsTTL(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	ts.clk.Advance(23 * time.Hour)
	if _, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "still here"}); err != nil {
		t.Fatal(err)
	}
	ts.clk.Advance(23 * time.Hour)
	got, _ := ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: ses.SessionId})
	if got.Session.State != pb.SessionState_SESSION_STATE_OPEN {
		t.Fatalf("a message did not refresh the TTL: %v", got.Session.State)
	}
	ts.clk.Advance(time.Hour)
	got, _ = ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: ses.SessionId})
	if got.Session.State != pb.SessionState_SESSION_STATE_EXPIRED {
		t.Fatalf("state = %v, want EXPIRED", got.Session.State)
	}
	// A new session can start for the same user.
	if again := ts.createSession("u1"); again.SessionId == ses.SessionId {
		t.Fatal("expired session reused")
	}
}

func TestListMessagesPaginates(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	var want []string
	for i := range 7 {
		want = append(want, ts.post(ses.SessionId, fmt.Sprint(i)))
	}
	var got []string
	token := ""
	pages := 0
	for {
		r := ts.rest("GET", "/v1/sessions/"+ses.SessionId+"/messages?page_size=3&page_token="+token, nil).json(t)
		for _, m := range r["messages"].([]any) {
			got = append(got, str(m, "message_id"))
		}
		pages++
		if token = str(r, "next_page_token"); token == "" {
			break
		}
	}
	if pages != 3 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%d pages: %v, want %v", pages, got, want)
	}
	_, err := ts.sessions.ListMessages(ts.ctx(), &pb.ListMessagesRequest{SessionId: ses.SessionId, PageToken: "%%%"})
	wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", "page_token")
}

type watchStream interface {
	Recv() (*pb.WatchSessionResponse, error)
}

func TestWatchSessionReplaysThenGoesLiveWithoutGapOrDuplicate(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	const writers, each = 4, 50
	var wg sync.WaitGroup
	begin := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-begin
			for i := range each {
				if w%2 == 0 {
					_, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: fmt.Sprint(w, "-", i)})
					if err != nil {
						t.Error(err)
						return
					}
				} else if _, err := ts.chat.IngestMessage(ts.ctx(), &pb.IngestMessageRequest{SessionId: ses.SessionId, Text: fmt.Sprint(w, "-", i)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	close(begin)
	// Watchers join while messages are being written, from both sides of
	// the replay/live switch.
	var watchers []watchStream
	for range 3 {
		waitFor(t, "some messages", func() bool { return len(ts.history(ses.SessionId)) > 0 })
		st, err := ts.sessions.WatchSession(ts.ctx(), &pb.WatchSessionRequest{SessionId: ses.SessionId})
		if err != nil {
			t.Fatal(err)
		}
		watchers = append(watchers, st)
	}
	wg.Wait()
	want := ts.history(ses.SessionId)
	if len(want) != writers*each {
		t.Fatalf("history has %d messages, want %d", len(want), writers*each)
	}
	for i, st := range watchers {
		for j, m := range want {
			got := recvOrFail(t, st.Recv).GetMessage()
			if got.GetMessageId() != m.MessageId {
				t.Fatalf("watcher %d, message %d: got %s (%q), want %s (%q)", i, j, got.GetMessageId(), got.GetText(), m.MessageId, m.Text)
			}
		}
	}
}

func TestWatchSessionAfterMessageIDAndLiveOnly(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	var ids []string
	for i := range 3 {
		ids = append(ids, ts.post(ses.SessionId, fmt.Sprint(i)))
	}
	after, err := ts.sessions.WatchSession(ts.ctx(), &pb.WatchSessionRequest{SessionId: ses.SessionId, AfterMessageId: ids[0]})
	if err != nil {
		t.Fatal(err)
	}
	live := ts.liveWatch(ses.SessionId)
	next := ts.post(ses.SessionId, "live")
	wantMessages(t, after, []string{ids[1], ids[2], next}) // after_message_id: history, then live
	wantMessages(t, live, []string{next})                  // live_only: only the new one
	err = firstErr(ts.sessions.WatchSession(ts.ctx(), &pb.WatchSessionRequest{SessionId: ses.SessionId, AfterMessageId: "msg_ffffffff-ffff-7fff-bfff-ffffffffffff"}))
	wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", "after_message_id")
}

func TestWatchSessionEndsWhenTheSessionClosesOrExpires(t *testing.T) {
	ts := start(t, nil, nil)
	closing := ts.createSession("u1")
	expiring := ts.createSession("u2")
	c, _ := ts.sessions.WatchSession(ts.ctx(), &pb.WatchSessionRequest{SessionId: closing.SessionId})
	e, _ := ts.sessions.WatchSession(ts.ctx(), &pb.WatchSessionRequest{SessionId: expiring.SessionId})
	if _, err := c.Header(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Header(); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.sessions.CloseSession(ts.ctx(), &pb.CloseSessionRequest{SessionId: closing.SessionId}); err != nil {
		t.Fatal(err)
	}
	if got := recvOrFail(t, c.Recv).GetEnded(); got.GetState() != pb.SessionState_SESSION_STATE_CLOSED {
		t.Fatalf("closing watcher got %v", got)
	}
	wantEOF(t, c.Recv)

	ts.clk.Advance(24 * time.Hour)
	if got := recvOrFail(t, e.Recv).GetEnded(); got.GetState() != pb.SessionState_SESSION_STATE_EXPIRED ||
		!got.EndedAt.AsTime().Equal(epoch.Add(24*time.Hour)) {
		t.Fatalf("expiring watcher got %v", got)
	}
	wantEOF(t, e.Recv)

	// Watching an ended session replays its history, then says it ended.
	st, _ := ts.sessions.WatchSession(ts.ctx(), &pb.WatchSessionRequest{SessionId: closing.SessionId})
	if got := recvOrFail(t, st.Recv).GetEnded(); got.GetState() != pb.SessionState_SESSION_STATE_CLOSED {
		t.Fatalf("watching a closed session: %v", got)
	}
}

func TestWatchSessionOverRESTFlushesHeadersThenStreams(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	// restStream returns once the response headers arrived: on a quiet
	// session that only happens if the server flushes them early.
	s := ts.restStream("GET", "/v1/sessions/"+ses.SessionId+":watch?live_only=true", nil)
	if s.resp.StatusCode != 200 || s.resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("HTTP %d %v", s.resp.StatusCode, s.resp.Header)
	}
	id := ts.post(ses.SessionId, "hi")
	if got := str(s.next(), "result", "message", "message_id"); got != id {
		t.Fatalf("line message_id = %q, want %s", got, id)
	}
	ts.sessions.CloseSession(ts.ctx(), &pb.CloseSessionRequest{SessionId: ses.SessionId})
	if got := str(s.next(), "result", "ended", "state"); got != "SESSION_STATE_CLOSED" {
		t.Fatalf("ended line state = %q", got)
	}
	s.end()

	// An unknown session is a plain 404, not a 200 with an error line.
	wantREST(t, ts.rest("GET", "/v1/sessions/ses_nope:watch", nil), 404, "SESSION_NOT_FOUND")
}

func TestWatchSessionEndsCleanlyOnShutdown(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	st, err := ts.sessions.WatchSession(context.Background(), &pb.WatchSessionRequest{SessionId: ses.SessionId})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Header(); err != nil {
		t.Fatal(err)
	}
	ts.stop() // returns only once the server has stopped
	_, err = st.Recv()
	if errors.Is(err, io.EOF) {
		t.Fatal("stream ended OK on shutdown; want UNAVAILABLE so the client reconnects")
	}
	wantStatus(t, err, codes.Unavailable, "SERVER_SHUTTING_DOWN", "")
}

func TestWatchSessionThatFallsBehindCatchesUpFromHistory(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	st := ts.liveWatch(ses.SessionId)
	// The client reads nothing while far more is posted than flow control
	// and the server's per-stream queue hold, so the server must drop
	// events and resync from history. It must still deliver every message
	// exactly once, in order.
	text := strings.Repeat("x", 4<<10)
	var want []string
	for i := range 900 {
		want = append(want, ts.post(ses.SessionId, fmt.Sprint(i, text)))
	}
	wantMessages(t, st, want)
}

// lateExpiryStore sees sessions expire one second late, as a Redis replica
// whose clock lags would.
type lateExpiryStore struct {
	store.Store
	clk   *clock.Fake
	reads atomic.Int64
}

func (s *lateExpiryStore) GetSession(ctx context.Context, tenant, id string) (store.Session, error) {
	s.reads.Add(1)
	ses, err := s.Store.GetSession(ctx, tenant, id)
	if err == nil && ses.State == store.StateExpired && s.clk.Now().Before(ses.ExpiresAt.Add(time.Second)) {
		ses.State = store.StateOpen
	}
	return ses, err
}

func TestWatchSessionWaitsForAStoreThatSeesExpiryLate(t *testing.T) {
	clk := clock.NewFake(epoch)
	late := &lateExpiryStore{Store: memoryStore(t, store.Options{Clock: clk}), clk: clk}
	ts := start(t, late, clk)
	ses := ts.createSession("u1")
	st := ts.liveWatch(ses.SessionId)
	before := late.reads.Load()
	clk.Advance(24 * time.Hour)
	// The store still says open: the watcher must wait a little (an armed
	// timer), not ask it again and again.
	waitFor(t, "the watcher to re-arm its expiry", func() bool { return late.reads.Load() > before && clk.Timers() > 0 })
	if n := late.reads.Load() - before; n > 3 {
		t.Fatalf("the watcher read the session %d times while the store lagged; it spins", n)
	}
	clk.Advance(time.Second)
	if got := recvOrFail(t, st.Recv).GetEnded(); got.GetState() != pb.SessionState_SESSION_STATE_EXPIRED {
		t.Fatalf("watcher got %v, want the expiry", got)
	}
}

// startWithHistory starts a server whose sessions keep only limit messages.
func startWithHistory(t *testing.T, limit int) *testServer {
	t.Helper()
	clk := clock.NewFake(epoch)
	return start(t, memoryStore(t, store.Options{Clock: clk, HistoryLimit: limit}), clk)
}

// A watcher that reads slowly while more is posted than the history keeps
// falls off it. It must be told — HISTORY_TRIMMED, naming the last message
// it got — never skip what was trimmed and end as if nothing happened.
// (Before, a REST watcher reading slowly through 1,500 posts with a history
// of 1,000 got 1,095 messages and a normal end.)
func TestWatchSessionThatFallsOffTheHistoryIsToldSo(t *testing.T) {
	ts := startWithHistory(t, 50)
	ses := ts.createSession("u1")
	// Posting 45 MB takes long under the race detector on a busy machine:
	// the gRPC watch gets more than ts.ctx's 10 s (REST's has no deadline).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	grpcWatch, err := ts.sessions.WatchSession(ctx, &pb.WatchSessionRequest{SessionId: ses.SessionId, LiveOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := grpcWatch.Header(); err != nil {
		t.Fatal(err)
	}
	restWatch := ts.restStream("GET", "/v1/sessions/"+ses.SessionId+":watch?live_only=true", nil)
	// Neither reads while far more is posted than flow control, socket
	// buffers, the server's per-stream queue and the history hold.
	text := strings.Repeat("x", 30<<10)
	var posted []string
	for i := range 1500 {
		posted = append(posted, ts.post(ses.SessionId, fmt.Sprint(i, " ", text)))
	}
	if _, err := ts.sessions.CloseSession(ts.ctx(), &pb.CloseSessionRequest{SessionId: ses.SessionId}); err != nil {
		t.Fatal(err)
	}
	// checkPrefix asserts got is posted[:len(got)]: in order, no gap.
	checkPrefix := func(transport string, got []string) {
		t.Helper()
		if len(got) == len(posted) || !slices.Equal(got, posted[:len(got)]) {
			t.Fatalf("%s watcher got %d messages; want an unbroken prefix of the %d posted, cut short", transport, len(got), len(posted))
		}
	}

	var got []string
	for {
		f, err := grpcWatch.Recv()
		if err != nil {
			wantStatus(t, err, codes.OutOfRange, "HISTORY_TRIMMED", "")
			if last := errorInfo(err).Metadata["last_message_id"]; len(got) == 0 || last != got[len(got)-1] {
				t.Fatalf("gRPC: last_message_id %q, want the last message received", last)
			}
			break
		}
		if f.GetEnded() != nil {
			t.Fatalf("gRPC watcher ended normally after %d of %d messages: the rest was skipped silently", len(got), len(posted))
		}
		got = append(got, f.GetMessage().GetMessageId())
	}
	checkPrefix("gRPC", got)

	got = nil
	for {
		line := restWatch.next()
		if e := path(line, "error"); e != nil {
			if code := path(e, "code"); code != float64(codes.OutOfRange) || !strings.Contains(fmt.Sprint(e), "HISTORY_TRIMMED") {
				t.Fatalf("REST: the last line %v, want OUT_OF_RANGE HISTORY_TRIMMED", e)
			}
			break
		}
		if path(line, "result", "ended") != nil {
			t.Fatalf("REST watcher ended normally after %d of %d messages", len(got), len(posted))
		}
		got = append(got, str(line, "result", "message", "message_id"))
	}
	checkPrefix("REST", got)
}

// Starting after a message that has been trimmed, and paging past one, is
// the same loss, and said the same way.
func TestCursorsOnTrimmedHistoryAreRefused(t *testing.T) {
	ts := startWithHistory(t, 3)
	ses := ts.createSession("u1")
	first := ts.post(ses.SessionId, "m1")
	for i := range 4 {
		ts.post(ses.SessionId, fmt.Sprint("m", i+2))
	}
	err := firstErr(ts.sessions.WatchSession(ts.ctx(), &pb.WatchSessionRequest{SessionId: ses.SessionId, AfterMessageId: first}))
	wantStatus(t, err, codes.OutOfRange, "HISTORY_TRIMMED", "")
	if !strings.Contains(status.Convert(err).Message(), "1 messages after "+first) {
		t.Fatalf("message %q does not say what was lost", status.Convert(err).Message())
	}
	token := base64.RawURLEncoding.EncodeToString([]byte(first))
	_, err = ts.sessions.ListMessages(ts.ctx(), &pb.ListMessagesRequest{SessionId: ses.SessionId, PageToken: token})
	wantStatus(t, err, codes.OutOfRange, "HISTORY_TRIMMED", "")
	wantREST(t, ts.rest("GET", "/v1/sessions/"+ses.SessionId+"/messages?page_token="+token, nil), 400, "HISTORY_TRIMMED")
	// With no cursor, what is retained reads as it is.
	if h := ts.history(ses.SessionId); len(h) != 3 {
		t.Fatalf("history %d messages, want the 3 retained", len(h))
	}
}

// keptSubs is a store that keeps the subscriptions it hands out, so that
// a test can make a watcher re-read what it watches.
type keptSubs struct {
	store.Store
	mu   sync.Mutex
	subs map[store.Topic]*store.Subscription
}

func (s *keptSubs) Subscribe(ctx context.Context, topic store.Topic) (*store.Subscription, error) {
	sub, err := s.Store.Subscribe(ctx, topic)
	if err == nil {
		s.mu.Lock()
		if s.subs == nil {
			s.subs = map[store.Topic]*store.Subscription{}
		}
		s.subs[topic] = sub
		s.mu.Unlock()
	}
	return sub, err
}

// resync makes the watcher of tenant's session re-read it.
func (s *keptSubs) resync(tenant, session string) {
	s.mu.Lock()
	sub := s.subs[store.SessionTopic(tenant, session)]
	s.mu.Unlock()
	sub.Resync()
}

// racingStore runs hook once, inside the next GetSession: what another
// replica may do between two of a watcher's reads.
type racingStore struct {
	keptSubs
	hook func()
}

func (s *racingStore) GetSession(ctx context.Context, tenant, id string) (store.Session, error) {
	s.mu.Lock()
	hook := s.hook
	s.hook = nil
	s.mu.Unlock()
	if hook != nil {
		hook()
	}
	return s.Store.GetSession(ctx, tenant, id)
}

// A watcher that resyncs (a pub/sub reconnect) reads the history, then
// whether the session goes on. A message appended and the session ended
// between those two reads must still reach it, before the end.
func TestWatchSessionMissesNothingAppendedJustBeforeTheEnd(t *testing.T) {
	clk := clock.NewFake(epoch)
	ms := memoryStore(t, store.Options{Clock: clk})
	rs := &racingStore{keptSubs: keptSubs{Store: ms}}
	ts := start(t, rs, clk)
	ses := ts.createSession("u1")
	st := ts.liveWatch(ses.SessionId)

	last := make(chan string, 1)
	rs.mu.Lock()
	rs.hook = func() {
		r, err := ts.chat.PostMessage(context.Background(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "last words"})
		if err != nil {
			t.Errorf("PostMessage: %v", err)
			last <- ""
			return
		}
		last <- r.MessageId
		if _, err := ms.CloseSession(context.Background(), "default", ses.SessionId); err != nil {
			t.Errorf("CloseSession: %v", err)
		}
	}
	rs.mu.Unlock()
	rs.resync("default", ses.SessionId)

	if got := recvOrFail(t, st.Recv); got.GetMessage().GetMessageId() != <-last {
		t.Fatalf("the watcher got %v, want the message appended just before the end", got)
	}
	if got := recvOrFail(t, st.Recv).GetEnded(); got.GetState() != pb.SessionState_SESSION_STATE_CLOSED {
		t.Fatalf("then %v, want the end", got)
	}
}

// An id the hub could not have issued names nothing: WatchSession and a
// ChatReceive resume answer NOT_FOUND without subscribing to it, so that
// made-up ids cost the backend no pub/sub channels.
func TestMadeUpIDsAreNotFoundWithoutASubscription(t *testing.T) {
	clk := clock.NewFake(epoch)
	st := &keptSubs{Store: memoryStore(t, store.Options{Clock: clk})}
	ts := start(t, st, clk)
	for _, id := range []string{"ses_x", "ses_" + strings.Repeat("z", 36), "cr_0123abcd-0000-4000-8000-000000000000"} {
		w, err := ts.sessions.WatchSession(ts.ctx(), &pb.WatchSessionRequest{SessionId: id})
		wantStatus(t, firstErr(w, err), codes.NotFound, "SESSION_NOT_FOUND", "")
	}
	for _, id := range []string{"cr_x", "ses_0123abcd-0000-4000-8000-000000000000"} {
		r, err := ts.chat.ChatReceive(ts.ctx(), &pb.ChatReceiveRequest{ConversationId: id})
		wantStatus(t, firstErr(r, err), codes.NotFound, "LISTENER_NOT_FOUND", "")
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.subs) != 0 {
		t.Fatalf("subscribed to %d made-up ids", len(st.subs))
	}
}

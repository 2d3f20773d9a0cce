// Package storetest is the conformance suite of the store contract. Every
// backend's tests call Run; a behaviour the server relies on is tested here,
// once, for all backends.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// Factory returns a fresh, empty store for one test, configured with o (the
// suite's fake clock and short limits), and arranges its cleanup with
// t.Cleanup.
type Factory func(t testing.TB, o store.Options) store.Store

const (
	ttl       = 24 * time.Hour
	histLimit = 5
)

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type env struct {
	t   *testing.T
	s   store.Store
	clk *clock.Fake
	ctx context.Context
}

func setup(t *testing.T, f Factory) *env {
	t.Helper()
	clk := clock.NewFake(epoch)
	s := f(t, store.Options{
		Clock:            clk,
		SessionTTL:       ttl,
		HistoryLimit:     histLimit,
		IdempotencyTTL:   24 * time.Hour,
		OutcomeRetention: 24 * time.Hour,
	})
	return &env{t: t, s: s, clk: clk, ctx: context.Background()}
}

// Run runs the whole suite against the backend f makes.
func Run(t *testing.T, f Factory) {
	tests := []struct {
		name string
		fn   func(*env)
	}{
		{"CreateAndGetSession", testCreateAndGet},
		{"OneActiveSessionPerTuple", testOneActive},
		{"TenantsAreIsolated", testTenantIsolation},
		{"SessionExpiresAfterTTLAndMessagesRefreshIt", testExpiry},
		{"UpdateSession", testUpdate},
		{"CloseSessionPublishesEndAndIsIdempotent", testClose},
		{"AppendOutboundRequiresActiveSession", testAppendEnded},
		{"AppendOutboundIsIdempotent", testAppendIdempotent},
		{"IdempotencyKeyExpires", testIdempotencyExpiry},
		{"MessageIDsIncreaseAndSeqHasNoGaps", testMessageOrder},
		{"ListMessagesPagesAndCursors", testListMessages},
		{"HistoryIsCapped", testHistoryCap},
		{"IngestOpensAndReusesSessions", testIngestSessions},
		{"IngestIntoNamedSession", testIngestNamedSession},
		{"IngestIntoNamedSessionFindsItsChannelsListeners", testIngestNamedSessionChannel},
		{"IngestIsIdempotent", testIngestIdempotent},
		{"ListenerMatchesFilters", testListenerFilters},
		{"KeywordMatchModes", testMatchModes},
		{"EveryMatchingListenerFires", testBroadcast},
		{"AnExpensiveIngestStallsNoOtherTenant", testExpensiveIngest},
		{"MessagesBeforeRegistrationNeverMatch", testBeforeRegistration},
		{"ListenerTimesOutOrMismatches", testTimeout},
		{"MessageAtDeadlineDoesNotMatch", testDeadlineBoundary},
		{"ExactlyOneOutcomeUnderRace", testOutcomeRace},
		{"OutcomeIsRetainedThenForgotten", testOutcomeRetention},
		{"IdleListenerIsDroppedUnlessTouched", testIdleWindow},
		{"PendingListenersAreCappedPerTenant", testPendingCap},
		{"ApproverSetsTakeAnyOfTheirUsers", testApproverSets},
		{"CancelDecidesOnce", testCancel},
		{"ExactlyOneOutcomeWithCancel", testCancelRace},
		{"AfterMessagePicksUpEarlierReplies", testAfterMessage},
		{"InspectionChangesNothing", testInspection},
		{"SubscribersSeeMessagesAndOutcomes", testEvents},
		{"ChatbotStartsAndReuses", testChatbotStart},
		{"ChatbotSkipRules", testChatbotSkip},
		{"ChatbotForceStart", testChatbotForce},
		{"ChatbotNamedSession", testChatbotNamedSession},
		{"ChatbotIsIdempotent", testChatbotIdempotent},
		{"MetadataHasATotalBound", testMetadataBound},
		{"RateBudgetsArePerKey", testRateBudgets},
		{"DeliveryIsLeasedThenClaimed", testDeliveryLifecycle},
		{"DeliveryRetriesAtItsTime", testDeliveryRetry},
		{"DeliveryIsRecordedOnce", testDeliveryIdempotent},
		{"ReceiptsMoveStatusForwardOnly", testReceipts},
		{"ChatbotGreetingIsDelivered", testChatbotGreetingDelivery},
		{"IngestRecordsWhenTheUserLastWrote", testLastInbound},
		{"ARefusedGreetingIsFailedWithoutADelivery", testChatbotGreetingRefused},
		{"TemplatesAreKept", testTemplatesAreKept},
		{"ChatbotTemplateAndContact", testChatbotTemplateAndContact},
		{"OutboundMessagesFollowTheUsersThread", testThreads},
		{"BotQueueDeliversInOrder", testBotQueueInOrder},
		{"BotQueueOnlyForItsChatbot", testBotQueueScope},
		{"UpdateIfChatbot", testUpdateIfChatbot},
		{"ListSessionsByActivity", testListSessions},
		{"ReturnedValuesAreCopies", testReturnedValuesAreCopies},
		{"CloseIsSafeConcurrently", testCloseConcurrently},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(setup(t, f))
		})
	}
}

// ---- helpers ----

func (e *env) create(tenant, user string) store.Session {
	e.t.Helper()
	s, err := e.s.CreateSession(e.ctx, store.NewSession{Tenant: tenant, Platform: "api", Channel: "api", User: user})
	if err != nil {
		e.t.Fatalf("CreateSession: %v", err)
	}
	return s
}

func (e *env) post(tenant, sessionID, text string) store.Message {
	e.t.Helper()
	m, _, err := e.s.AppendOutbound(e.ctx, store.OutboundMessage{
		Tenant: tenant, SessionID: sessionID, Text: text, Status: store.StatusDelivered,
	})
	if err != nil {
		e.t.Fatalf("AppendOutbound(%q): %v", text, err)
	}
	if seq, err := ids.MessageSeq(m.ID); err != nil || seq != m.Seq {
		e.t.Fatalf("message id %s does not carry its seq %d: %d, %v", m.ID, m.Seq, seq, err)
	}
	return m
}

func (e *env) ingest(in store.InboundMessage) store.IngestResult {
	e.t.Helper()
	if in.Tenant == "" {
		in.Tenant = "t1"
	}
	if in.Platform == "" {
		in.Platform, in.Channel = "api", "api"
	}
	r, err := e.s.Ingest(e.ctx, in)
	if err != nil {
		e.t.Fatalf("Ingest(%q): %v", in.Text, err)
	}
	return r
}

func (e *env) listen(f store.Filter, timeout time.Duration) store.Listener {
	e.t.Helper()
	l, err := e.s.RegisterListener(e.ctx, store.NewListener{
		ID: ids.Listener(), Tenant: "t1", Filter: f, Timeout: timeout, ResumeWindow: time.Hour,
	})
	if err != nil {
		e.t.Fatalf("RegisterListener: %v", err)
	}
	if !l.CreatedAt.Equal(e.clk.Now()) || l.IdleUntil != l.CreatedAt.Add(time.Hour) ||
		(timeout > 0 && l.Deadline != l.CreatedAt.Add(timeout)) || (timeout == 0 && !l.Deadline.IsZero()) {
		e.t.Fatalf("registered listener times = %+v", l)
	}
	return l
}

func (e *env) getListener(id string) store.Listener {
	e.t.Helper()
	l, err := e.s.GetListener(e.ctx, "t1", id)
	if err != nil {
		e.t.Fatalf("GetListener: %v", err)
	}
	return l
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
}

// next waits up to 5 s for the subscription's next event. Publishing is
// asynchronous on some backends, so this waits on the event, never on time.
func next(t *testing.T, sub *store.Subscription, pending *[]store.Event) store.Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for len(*pending) == 0 {
		select {
		case <-sub.Ready():
			evs, resync := sub.Next()
			if resync {
				t.Fatalf("unexpected resync")
			}
			*pending = append(*pending, evs...)
		case <-deadline:
			t.Fatalf("no event within 5s")
		}
	}
	ev := (*pending)[0]
	*pending = (*pending)[1:]
	return ev
}

// ---- sessions ----

func testCreateAndGet(e *env) {
	s, err := e.s.CreateSession(e.ctx, store.NewSession{
		Tenant: "t1", Platform: "web", Channel: "web", User: "u1", Metadata: map[string]string{"k": "v"},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	if len(s.ID) < 5 || s.ID[:4] != ids.SessionPrefix || s.State != store.StateOpen || s.Metadata["k"] != "v" {
		e.t.Fatalf("created session = %+v", s)
	}
	if !s.CreatedAt.Equal(epoch) || !s.ExpiresAt.Equal(epoch.Add(ttl)) {
		e.t.Fatalf("times: created %v expires %v", s.CreatedAt, s.ExpiresAt)
	}
	got, err := e.s.GetSession(e.ctx, "t1", s.ID)
	if err != nil || got.ID != s.ID || got.User != "u1" || got.Platform != "web" || got.Metadata["k"] != "v" {
		e.t.Fatalf("GetSession = %+v, %v", got, err)
	}
	_, err = e.s.GetSession(e.ctx, "t1", "ses_missing")
	wantErr(e.t, err, store.ErrSessionNotFound)
}

func testOneActive(e *env) {
	s := e.create("t1", "u1")
	active, err := e.s.CreateSession(e.ctx, store.NewSession{Tenant: "t1", Platform: "api", Channel: "api", User: "u1"})
	wantErr(e.t, err, store.ErrSessionExists)
	if active.ID != s.ID {
		e.t.Fatalf("refused CreateSession names session %q as active, want %q", active.ID, s.ID)
	}
	// Another user, channel or tenant is another tuple.
	e.create("t1", "u2")
	e.create("t2", "u1")
	if _, err := e.s.CloseSession(e.ctx, "t1", s.ID); err != nil {
		e.t.Fatal(err)
	}
	if again := e.create("t1", "u1"); again.ID == s.ID {
		e.t.Fatal("a closed session's id was reused")
	}
}

func testTenantIsolation(e *env) {
	s := e.create("t1", "u1")
	m := e.post("t1", s.ID, "hi")
	_, err := e.s.GetSession(e.ctx, "t2", s.ID)
	wantErr(e.t, err, store.ErrSessionNotFound)
	_, _, err = e.s.AppendOutbound(e.ctx, store.OutboundMessage{Tenant: "t2", SessionID: s.ID, Text: "x", Status: store.StatusDelivered})
	wantErr(e.t, err, store.ErrSessionNotFound)
	_, err = e.s.ListMessages(e.ctx, "t2", s.ID, "", 10)
	wantErr(e.t, err, store.ErrSessionNotFound)
	_, err = e.s.CloseSession(e.ctx, "t2", s.ID)
	wantErr(e.t, err, store.ErrSessionNotFound)
	_, err = e.s.UpdateSession(e.ctx, "t2", s.ID, store.SessionUpdate{EndBot: true})
	wantErr(e.t, err, store.ErrSessionNotFound)
	_, err = e.s.Ingest(e.ctx, store.InboundMessage{Tenant: "t2", SessionID: s.ID, Text: "x"})
	wantErr(e.t, err, store.ErrSessionNotFound)

	l := e.listen(store.Filter{}, 0)
	_, err = e.s.GetListener(e.ctx, "t2", l.ID)
	wantErr(e.t, err, store.ErrListenerNotFound)
	// A tenant-2 message never resolves a tenant-1 listener.
	r, err := e.s.Ingest(e.ctx, store.InboundMessage{Tenant: "t2", Platform: "api", Channel: "api", User: "u1", Text: "hello"})
	if err != nil || len(r.Matched) != 0 {
		e.t.Fatalf("cross-tenant ingest matched %v (err %v)", r.Matched, err)
	}
	if got := e.getListener(l.ID); got.Outcome != store.Pending {
		e.t.Fatalf("listener resolved by another tenant's message: %v", got.Outcome)
	}
	msgs, err := e.s.ListMessages(e.ctx, "t1", s.ID, "", 10)
	if err != nil || len(msgs) != 1 || msgs[0].ID != m.ID {
		e.t.Fatalf("tenant 1 history = %v, %v", msgs, err)
	}
}

func testExpiry(e *env) {
	s := e.create("t1", "u1")
	e.clk.Advance(ttl - time.Minute)
	e.post("t1", s.ID, "keeps it alive")
	e.clk.Advance(ttl - time.Minute)
	got, err := e.s.GetSession(e.ctx, "t1", s.ID)
	if err != nil || got.State != store.StateOpen {
		e.t.Fatalf("session refreshed by a message should be OPEN, got %v (%v)", got.State, err)
	}
	e.clk.Advance(time.Minute)
	got, err = e.s.GetSession(e.ctx, "t1", s.ID)
	if err != nil || got.State != store.StateExpired {
		e.t.Fatalf("session past its TTL should be EXPIRED, got %v (%v)", got.State, err)
	}
	_, _, err = e.s.AppendOutbound(e.ctx, store.OutboundMessage{Tenant: "t1", SessionID: s.ID, Text: "late", Status: store.StatusDelivered})
	wantErr(e.t, err, store.ErrSessionExpired)
	// The tuple is free again, and history stays readable.
	if again := e.create("t1", "u1"); again.ID == s.ID {
		e.t.Fatal("expired session reused")
	}
	msgs, err := e.s.ListMessages(e.ctx, "t1", s.ID, "", 10)
	if err != nil || len(msgs) != 1 {
		e.t.Fatalf("expired session's history = %v, %v", msgs, err)
	}
}

func testUpdate(e *env) {
	s, err := e.s.CreateSession(e.ctx, store.NewSession{Tenant: "t1", Platform: "api", Channel: "api", User: "u1",
		Metadata: map[string]string{"a": "1", "b": "2"}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.clk.Advance(time.Second)
	got, err := e.s.UpdateSession(e.ctx, "t1", s.ID, store.SessionUpdate{
		State: store.StateInProgress, RemoveMetadata: []string{"a"}, Metadata: map[string]string{"c": "3"},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	if got.State != store.StateInProgress || got.Metadata["a"] != "" || got.Metadata["b"] != "2" || got.Metadata["c"] != "3" {
		e.t.Fatalf("updated = %+v", got)
	}
	if !got.UpdatedAt.Equal(epoch.Add(time.Second)) {
		e.t.Fatalf("UpdatedAt = %v", got.UpdatedAt)
	}
	got, err = e.s.UpdateSession(e.ctx, "t1", s.ID, store.SessionUpdate{EndBot: true})
	if err != nil || got.State != store.StateOpen || got.ChatbotID != "" {
		e.t.Fatalf("end bot = %+v, %v", got, err)
	}
	if _, err := e.s.CloseSession(e.ctx, "t1", s.ID); err != nil {
		e.t.Fatal(err)
	}
	_, err = e.s.UpdateSession(e.ctx, "t1", s.ID, store.SessionUpdate{State: store.StateOpen})
	wantErr(e.t, err, store.ErrSessionClosed)
}

func testClose(e *env) {
	s := e.create("t1", "u1")
	sub, err := e.s.Subscribe(e.ctx, store.SessionTopic("t1", s.ID))
	if err != nil {
		e.t.Fatal(err)
	}
	defer sub.Close()
	e.clk.Advance(time.Minute)
	closed, err := e.s.CloseSession(e.ctx, "t1", s.ID)
	if err != nil || closed.State != store.StateClosed || !closed.ExpiresAt.Equal(epoch.Add(time.Minute)) {
		e.t.Fatalf("CloseSession = %+v, %v", closed, err)
	}
	var pending []store.Event
	ev := next(e.t, sub, &pending)
	if ev.Kind != store.EventSessionEnded || ev.SessionID != s.ID || (ev.Session != nil && ev.Session.State != store.StateClosed) {
		e.t.Fatalf("event = %+v", ev)
	}
	e.clk.Advance(time.Minute)
	again, err := e.s.CloseSession(e.ctx, "t1", s.ID)
	if err != nil || again.State != store.StateClosed || !again.ExpiresAt.Equal(closed.ExpiresAt) {
		e.t.Fatalf("second CloseSession = %+v, %v", again, err)
	}
}

// ---- messages ----

func testAppendEnded(e *env) {
	_, _, err := e.s.AppendOutbound(e.ctx, store.OutboundMessage{Tenant: "t1", SessionID: "ses_nope", Text: "x", Status: store.StatusDelivered})
	wantErr(e.t, err, store.ErrSessionNotFound)
	s := e.create("t1", "u1")
	if _, err := e.s.CloseSession(e.ctx, "t1", s.ID); err != nil {
		e.t.Fatal(err)
	}
	_, _, err = e.s.AppendOutbound(e.ctx, store.OutboundMessage{Tenant: "t1", SessionID: s.ID, Text: "x", Status: store.StatusDelivered})
	wantErr(e.t, err, store.ErrSessionClosed)
}

func testAppendIdempotent(e *env) {
	s := e.create("t1", "u1")
	out := store.OutboundMessage{
		Tenant: "t1", SessionID: s.ID, Text: "once", Status: store.StatusDelivered,
		Idempotency: store.Idempotency{Key: "k1", Fingerprint: "f1"},
	}
	first, replayed, err := e.s.AppendOutbound(e.ctx, out)
	if err != nil || replayed {
		e.t.Fatalf("first = %v, replayed %v", err, replayed)
	}
	e.clk.Advance(time.Hour)
	second, replayed, err := e.s.AppendOutbound(e.ctx, out)
	if err != nil || !replayed || second.ID != first.ID || !second.CreatedAt.Equal(first.CreatedAt) || second.SessionID != s.ID {
		e.t.Fatalf("retry = %+v replayed=%v err=%v; want the first message %s", second, replayed, err, first.ID)
	}
	out.Text, out.Idempotency.Fingerprint = "different", "f2"
	_, _, err = e.s.AppendOutbound(e.ctx, out)
	wantErr(e.t, err, store.ErrIdempotencyKeyReused)
	// Keys are per tenant.
	s2 := e.create("t2", "u1")
	if _, replayed, err := e.s.AppendOutbound(e.ctx, store.OutboundMessage{Tenant: "t2", SessionID: s2.ID, Text: "once",
		Status: store.StatusDelivered, Idempotency: store.Idempotency{Key: "k1", Fingerprint: "f1"}}); err != nil || replayed {
		e.t.Fatalf("another tenant's key replayed=%v err=%v", replayed, err)
	}
	// Keys are scoped to the session they address.
	other := e.create("t1", "u9")
	if _, replayed, err := e.s.AppendOutbound(e.ctx, store.OutboundMessage{Tenant: "t1", SessionID: other.ID, Text: "once",
		Status: store.StatusDelivered, Idempotency: store.Idempotency{Key: "k1", Fingerprint: "f-other"}}); err != nil || replayed {
		e.t.Fatalf("the key of another session replayed=%v err=%v", replayed, err)
	}
	msgs, _ := e.s.ListMessages(e.ctx, "t1", s.ID, "", 10)
	if len(msgs) != 1 {
		e.t.Fatalf("history has %d messages, want 1", len(msgs))
	}
}

func testIdempotencyExpiry(e *env) {
	s := e.create("t1", "u1")
	out := store.OutboundMessage{Tenant: "t1", SessionID: s.ID, Text: "x", Status: store.StatusDelivered,
		Idempotency: store.Idempotency{Key: "k", Fingerprint: "f"}}
	first, _, err := e.s.AppendOutbound(e.ctx, out)
	if err != nil {
		e.t.Fatal(err)
	}
	e.clk.Advance(23 * time.Hour)
	if m, replayed, _ := e.s.AppendOutbound(e.ctx, out); !replayed || m.ID != first.ID {
		e.t.Fatal("key forgotten before 24 h")
	}
	e.post("t1", s.ID, "keeps the session alive")
	e.clk.Advance(time.Hour)
	if m, replayed, err := e.s.AppendOutbound(e.ctx, out); err != nil || replayed || m.ID == first.ID {
		e.t.Fatalf("key still remembered after 24 h: replayed=%v err=%v", replayed, err)
	}
}

func testMessageOrder(e *env) {
	s := e.create("t1", "u1")
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				e.post("t1", s.ID, fmt.Sprint(i))
			} else {
				e.ingest(store.InboundMessage{SessionID: s.ID, User: "u1", Text: fmt.Sprint(i)})
			}
		}()
	}
	wg.Wait()
	got, err := e.s.GetSession(e.ctx, "t1", s.ID)
	if err != nil || got.LastSeq != 20 {
		e.t.Fatalf("LastSeq = %d (%v), want 20", got.LastSeq, err)
	}
	// HistoryLimit keeps the last 5; they must be consecutive and ordered.
	msgs, err := e.s.ListMessages(e.ctx, "t1", s.ID, "", 100)
	if err != nil || len(msgs) != histLimit {
		e.t.Fatalf("ListMessages = %d, %v", len(msgs), err)
	}
	for i, m := range msgs {
		if m.Seq != uint64(16+i) {
			e.t.Fatalf("msgs[%d].Seq = %d, want %d", i, m.Seq, 16+i)
		}
		if i > 0 && m.ID <= msgs[i-1].ID {
			e.t.Fatalf("IDs out of order: %s after %s", m.ID, msgs[i-1].ID)
		}
	}
	if got.LastMessageID != msgs[len(msgs)-1].ID {
		e.t.Fatalf("LastMessageID %s != last message %s", got.LastMessageID, msgs[len(msgs)-1].ID)
	}
}

func testListMessages(e *env) {
	s := e.create("t1", "u1")
	var all []store.Message
	for i := range 4 {
		all = append(all, e.post("t1", s.ID, fmt.Sprint("m", i)))
		e.clk.Advance(time.Second)
	}
	page, err := e.s.ListMessages(e.ctx, "t1", s.ID, "", 3)
	if err != nil || len(page) != 3 || page[0].ID != all[0].ID || page[0].Text != "m0" {
		e.t.Fatalf("first page = %v, %v", page, err)
	}
	page, err = e.s.ListMessages(e.ctx, "t1", s.ID, page[2].ID, 3)
	if err != nil || len(page) != 1 || page[0].ID != all[3].ID {
		e.t.Fatalf("second page = %v, %v", page, err)
	}
	page, err = e.s.ListMessages(e.ctx, "t1", s.ID, all[3].ID, 3)
	if err != nil || len(page) != 0 {
		e.t.Fatalf("after the last = %v, %v", page, err)
	}
	// A cursor that cannot be this session's is refused, not silently
	// misread: one newer than its last message, or one inside its retained
	// range that it does not hold.
	other := e.create("t1", "u2")
	later := e.post("t1", other.ID, "x")
	_, err = e.s.ListMessages(e.ctx, "t1", s.ID, later.ID, 3)
	wantErr(e.t, err, store.ErrMessageNotFound)
	impostor := ids.Message(all[1].CreatedAt.UnixMilli(), all[1].Seq) // same slot, another id
	_, err = e.s.ListMessages(e.ctx, "t1", s.ID, impostor, 3)
	wantErr(e.t, err, store.ErrMessageNotFound)
	_, err = e.s.ListMessages(e.ctx, "t1", s.ID, "msg_garbage", 3)
	wantErr(e.t, err, store.ErrMessageNotFound)
}

func testHistoryCap(e *env) {
	s := e.create("t1", "u1")
	var all []store.Message
	for i := range histLimit + 3 {
		all = append(all, e.post("t1", s.ID, fmt.Sprint(i)))
	}
	idsOf := func(ms []store.Message) (out []string) {
		for _, m := range ms {
			out = append(out, m.ID)
		}
		return out
	}
	msgs, err := e.s.ListMessages(e.ctx, "t1", s.ID, "", 100)
	if err != nil || !slices.Equal(idsOf(msgs), idsOf(all[3:])) {
		e.t.Fatalf("retained %v (%v), want the last %d: %v", idsOf(msgs), err, histLimit, idsOf(all[3:]))
	}
	// A cursor at a trimmed message still works: it is before everything.
	msgs, err = e.s.ListMessages(e.ctx, "t1", s.ID, all[1].ID, 100)
	if err != nil || !slices.Equal(idsOf(msgs), idsOf(all[3:])) {
		e.t.Fatalf("after a trimmed id: %v, %v", idsOf(msgs), err)
	}
	// And one at a retained message that replaced a trimmed one.
	msgs, err = e.s.ListMessages(e.ctx, "t1", s.ID, all[histLimit].ID, 100)
	if err != nil || !slices.Equal(idsOf(msgs), idsOf(all[histLimit+1:])) {
		e.t.Fatalf("after message %d: %v, %v", histLimit, idsOf(msgs), err)
	}
}

func testIngestSessions(e *env) {
	raw := json.RawMessage(`{"platform_id":"x1"}`)
	r := e.ingest(store.InboundMessage{User: "u1", Text: "hello", Raw: raw, Metadata: map[string]string{"m": "1"}})
	if !r.SessionStarted || r.Session.State != store.StateOpen || r.Message.Direction != store.Inbound ||
		r.Message.Status != store.StatusReceived || r.Message.FromUser != "u1" || r.Message.SessionID != r.Session.ID {
		e.t.Fatalf("first ingest = %+v", r)
	}
	var rawGot map[string]any
	if err := json.Unmarshal(r.Message.Raw, &rawGot); err != nil || rawGot["platform_id"] != "x1" || r.Message.Metadata["m"] != "1" {
		e.t.Fatalf("raw = %s metadata = %v", r.Message.Raw, r.Message.Metadata)
	}
	r2 := e.ingest(store.InboundMessage{User: "u1", Text: "again"})
	if r2.SessionStarted || r2.Session.ID != r.Session.ID {
		e.t.Fatalf("second ingest started=%v session=%s, want reuse of %s", r2.SessionStarted, r2.Session.ID, r.Session.ID)
	}
	msgs, _ := e.s.ListMessages(e.ctx, "t1", r.Session.ID, "", 10)
	if len(msgs) != 2 || string(msgs[0].Raw) == "" {
		e.t.Fatalf("history = %+v", msgs)
	}
}

func testIngestNamedSession(e *env) {
	s := e.create("t1", "u1")
	r := e.ingest(store.InboundMessage{SessionID: s.ID, Text: "hi"})
	if r.Session.ID != s.ID || r.SessionStarted || r.Message.FromUser != "u1" {
		e.t.Fatalf("ingest into named session = %+v", r)
	}
	_, err := e.s.Ingest(e.ctx, store.InboundMessage{Tenant: "t1", SessionID: s.ID, User: "u2", Text: "impostor"})
	wantErr(e.t, err, store.ErrSessionMismatch)
	if r := e.ingest(store.InboundMessage{SessionID: s.ID, User: "u1", Text: "me"}); r.Message.FromUser != "u1" {
		e.t.Fatalf("from = %q", r.Message.FromUser)
	}
	if _, err := e.s.CloseSession(e.ctx, "t1", s.ID); err != nil {
		e.t.Fatal(err)
	}
	_, err = e.s.Ingest(e.ctx, store.InboundMessage{Tenant: "t1", SessionID: s.ID, Text: "late"})
	wantErr(e.t, err, store.ErrSessionClosed)
}

// For a named session, Platform and Channel are only a hint: without one,
// or with a wrong one, the session's own channel's listeners still match,
// and the hinted channel's do not.
func testIngestNamedSessionChannel(e *env) {
	s := e.create("t1", "u1") // on api/api
	for _, hint := range []struct{ platform, channel string }{{"", ""}, {"slack", "elsewhere"}, {"api", "api"}} {
		mine := e.listen(store.Filter{Channel: "api"}, 0)
		hinted := e.listen(store.Filter{Channel: hint.channel}, 0)
		r, err := e.s.Ingest(e.ctx, store.InboundMessage{Tenant: "t1", SessionID: s.ID, Platform: hint.platform, Channel: hint.channel, Text: "hi"})
		if err != nil {
			e.t.Fatal(err)
		}
		want := []string{mine.ID}
		if hint.channel == "api" || hint.channel == "" { // hinted is mine, or unfiltered
			want = []string{mine.ID, hinted.ID}
			slices.Sort(want)
		}
		if !slices.Equal(r.Matched, want) || r.Message.Channel != "api" {
			e.t.Fatalf("hint %v: matched %v on channel %q, want %v on api", hint, r.Matched, r.Message.Channel, want)
		}
	}
}

func testIngestIdempotent(e *env) {
	in := store.InboundMessage{User: "u1", Text: "hi", Idempotency: store.Idempotency{Key: "wh-1", Fingerprint: "f"}}
	l := e.listen(store.Filter{}, 0)
	r1 := e.ingest(in)
	r2 := e.ingest(in)
	if !r2.Replayed || r2.Message.ID != r1.Message.ID || !slices.Equal(r2.Matched, []string{l.ID}) {
		e.t.Fatalf("retry = %+v, want replay of %s", r2, r1.Message.ID)
	}
	msgs, _ := e.s.ListMessages(e.ctx, "t1", r1.Session.ID, "", 10)
	if len(msgs) != 1 {
		e.t.Fatalf("history has %d messages, want 1", len(msgs))
	}
}

// ---- listeners ----

func testListenerFilters(e *env) {
	s := e.create("t1", "u1")
	bySession := e.listen(store.Filter{SessionID: s.ID}, 0)
	byUser := e.listen(store.Filter{Users: []string{"u2"}}, 0)
	byChannel := e.listen(store.Filter{Channel: "support"}, 0)
	byPlatformChannel := e.listen(store.Filter{Platform: "whatsapp", Channel: "support"}, 0)
	userAndChannel := e.listen(store.Filter{Users: []string{"u2"}, Channel: "other"}, 0)

	r := e.ingest(store.InboundMessage{SessionID: s.ID, Text: "a"})
	if !slices.Equal(r.Matched, []string{bySession.ID}) {
		e.t.Fatalf("session message matched %v, want only %s", r.Matched, bySession.ID)
	}
	r = e.ingest(store.InboundMessage{User: "u2", Text: "b"})
	if !slices.Equal(r.Matched, []string{byUser.ID}) {
		e.t.Fatalf("u2 message matched %v, want only %s", r.Matched, byUser.ID)
	}
	r = e.ingest(store.InboundMessage{Platform: "slack", Channel: "support", User: "u3", Text: "c"})
	if !slices.Equal(r.Matched, []string{byChannel.ID}) {
		e.t.Fatalf("slack support message matched %v, want only %s", r.Matched, byChannel.ID)
	}
	r = e.ingest(store.InboundMessage{Platform: "whatsapp", Channel: "support", User: "u3", Text: "d"})
	if !slices.Equal(r.Matched, []string{byPlatformChannel.ID}) {
		e.t.Fatalf("whatsapp support message matched %v, want only %s", r.Matched, byPlatformChannel.ID)
	}
	r = e.ingest(store.InboundMessage{Platform: "api", Channel: "other", User: "u2", Text: "e"})
	if !slices.Equal(r.Matched, []string{userAndChannel.ID}) {
		e.t.Fatalf("u2 on other matched %v, want only %s", r.Matched, userAndChannel.ID)
	}
	got := e.getListener(bySession.ID)
	if got.Outcome != store.Matched || got.Message == nil || got.Message.Text != "a" || got.Message.SessionID != s.ID {
		e.t.Fatalf("resolved listener = %+v", got)
	}
}

func testMatchModes(e *env) {
	cases := []struct {
		mode    store.MatchMode
		keyword string
		text    string
		want    bool
	}{
		{store.MatchKeyword, "yes", "Yes, please", true},
		{store.MatchKeyword, "yes", "yesterday", false},
		{store.MatchKeyword, "yes", "say YES!", true},
		{store.MatchKeyword, "order 42", "my order 42 is late", true},
		{store.MatchKeyword, "order 42", "order 421", false},
		{store.MatchKeyword, "café", "un CAFÉ noir", true},
		{store.MatchKeyword, "?", "why?", true},
		{store.MatchKeyword, "", "anything", true},
		{store.MatchExact, "YES", " YES\n", true},
		{store.MatchExact, "YES", "yes", false},
		{store.MatchExact, "YES", "YES please", false},
		{store.MatchRegex, `^\d{4}$`, "1234", true},
		{store.MatchRegex, `^\d{4}$`, "12345", false},
		{store.MatchRegex, `(?i)stop`, "please STOP now", true},
	}
	for _, c := range cases {
		l := e.listen(store.Filter{Users: []string{"u-" + c.text}, Keyword: c.keyword, Match: c.mode}, time.Hour)
		r := e.ingest(store.InboundMessage{User: "u-" + c.text, Text: c.text})
		if got := slices.Contains(r.Matched, l.ID); got != c.want {
			e.t.Errorf("mode %d keyword %q text %q: matched=%v, want %v", c.mode, c.keyword, c.text, got, c.want)
		}
	}
	if _, err := (store.Filter{Keyword: "(", Match: store.MatchRegex}).Compile(); err == nil {
		e.t.Error("a bad regex compiled")
	}
}

func testBroadcast(e *env) {
	var want []string
	for range 5 {
		want = append(want, e.listen(store.Filter{Users: []string{"u1"}, Keyword: "go"}, 0).ID)
	}
	want = append(want, e.listen(store.Filter{}, 0).ID)
	other := e.listen(store.Filter{Users: []string{"u1"}, Keyword: "stop"}, 0)
	slices.Sort(want)
	r := e.ingest(store.InboundMessage{User: "u1", Text: "go"})
	if !slices.Equal(r.Matched, want) {
		e.t.Fatalf("matched %v, want all of %v", r.Matched, want)
	}
	if got := e.getListener(other.ID); got.Outcome != store.Pending || !got.SawMismatch {
		e.t.Fatalf("non-matching listener = %+v, want pending with SawMismatch", got)
	}
	// A resolved listener does not fire again.
	if r := e.ingest(store.InboundMessage{User: "u1", Text: "go"}); len(r.Matched) != 0 {
		e.t.Fatalf("second message matched %v", r.Matched)
	}
}

// One tenant's listeners with costly regular expressions make its own
// ingests slow, never another tenant's calls: while tenant t1's ingest is
// being matched, tenant t2 keeps being answered.
func testExpensiveIngest(e *env) {
	// Each near the server's default limit on a regex's size (100
	// instructions), each distinct, so none can share another's verdict.
	for c := 'A'; c <= 'J'; c++ {
		e.listen(store.Filter{Keyword: "(.*){24}" + string(c) + "!", Match: store.MatchRegex}, 0)
	}
	text := strings.Repeat("a", 32<<10)
	var began, ended time.Time
	done := make(chan struct{})
	go func() {
		defer close(done)
		began = time.Now()
		r, err := e.s.Ingest(e.ctx, store.InboundMessage{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", Text: text})
		ended = time.Now()
		if err != nil || len(r.Matched) != 0 {
			e.t.Errorf("ingest: matched %v, %v", r.Matched, err)
		}
	}()
	var answers []time.Time
	for i := 0; ; i++ {
		select {
		case <-done:
		default:
			if _, err := e.s.CreateSession(e.ctx, store.NewSession{Tenant: "t2", Platform: "api", Channel: "api", User: fmt.Sprint("v", i)}); err != nil {
				e.t.Fatal(err)
			}
			answers = append(answers, time.Now())
			continue
		}
		break
	}
	// Answers in the middle of the ingest, away from the moments it takes
	// and gives back any lock: a store that matched under a lock t2 needs
	// gives none.
	took := ended.Sub(began)
	from, to := began.Add(took/5), ended.Add(-took/5)
	during := 0
	for _, at := range answers {
		if at.After(from) && at.Before(to) {
			during++
		}
	}
	if during < 3 {
		e.t.Fatalf("tenant t2 got %d answers in the middle of tenant t1's %s ingest: it waited for it", during, took.Round(time.Millisecond))
	}
}

func testBeforeRegistration(e *env) {
	e.ingest(store.InboundMessage{User: "u1", Text: "early"})
	l := e.listen(store.Filter{Users: []string{"u1"}}, time.Minute)
	if got := e.getListener(l.ID); got.Outcome != store.Pending {
		e.t.Fatalf("listener matched a message from before it existed: %+v", got)
	}
	e.clk.Advance(time.Minute)
	if got := e.getListener(l.ID); got.Outcome != store.TimedOut {
		e.t.Fatalf("outcome = %v, want timeout", got.Outcome)
	}
}

func testTimeout(e *env) {
	quiet := e.listen(store.Filter{Users: []string{"u1"}}, 10*time.Minute)
	mismatched := e.listen(store.Filter{Users: []string{"u2"}, Keyword: "yes"}, 10*time.Minute)
	e.clk.Advance(time.Minute)
	e.ingest(store.InboundMessage{User: "u2", Text: "no"})
	e.ingest(store.InboundMessage{User: "u3", Text: "yes"}) // out of both scopes
	e.clk.Advance(9*time.Minute - time.Nanosecond)
	if got := e.getListener(quiet.ID); got.Outcome != store.Pending {
		e.t.Fatalf("timed out early: %v", got.Outcome)
	}
	e.clk.Advance(time.Nanosecond)
	got := e.getListener(quiet.ID)
	if got.Outcome != store.TimedOut || got.Waited() != 10*time.Minute {
		e.t.Fatalf("quiet listener = %v waited %v, want timeout after 10m", got.Outcome, got.Waited())
	}
	got = e.getListener(mismatched.ID)
	if got.Outcome != store.FilterMismatch || !got.SawMismatch {
		e.t.Fatalf("mismatched listener = %v, want filter_mismatch", got.Outcome)
	}
	// Decided once: a late match changes nothing.
	e.ingest(store.InboundMessage{User: "u2", Text: "yes"})
	if again := e.getListener(mismatched.ID); again.Outcome != store.FilterMismatch || !again.DecidedAt.Equal(got.DecidedAt) {
		e.t.Fatalf("outcome changed after it was decided: %+v", again)
	}
}

func testDeadlineBoundary(e *env) {
	l := e.listen(store.Filter{Users: []string{"u1"}}, time.Minute)
	e.clk.Advance(time.Minute)
	// The deadline has passed but nobody has looked yet: the message is too
	// late, whatever the order the replicas notice in.
	if r := e.ingest(store.InboundMessage{User: "u1", Text: "too late"}); len(r.Matched) != 0 {
		e.t.Fatalf("a message at the deadline matched %v", r.Matched)
	}
	if got := e.getListener(l.ID); got.Outcome != store.TimedOut {
		e.t.Fatalf("outcome = %v, want timeout", got.Outcome)
	}
}

// testOutcomeRace races an ingest against the deadline passing (with two
// readers deciding the timeout), round after round, until both outcomes
// have occurred often enough to show the race is really run. The two sides
// start together: the clock is moved by a goroutine already spinning (a
// timer or a wake-up is slower than a memory-store ingest), and one side
// waits out an offset first that adapts to the outcomes (the clock goes
// earlier after a match, later after a timeout), so it settles where the
// two collide; the assertions hold for any interleaving.
func testOutcomeRace(e *env) {
	begin := time.Now()
	e.ingest(store.InboundMessage{User: "warmup", Text: "x"})
	step := max(time.Since(begin)/4, 200*time.Nanosecond)
	var offset time.Duration // > 0: the clock waits; < 0: the ingest waits
	seen := map[store.OutcomeKind]int{}
	for round := 0; seen[store.Matched] < 3 || seen[store.TimedOut] < 3; round++ {
		if round == 2000 {
			e.t.Fatalf("after %d rounds the race never went both ways: %v", round, seen)
		}
		user := fmt.Sprint("race", round)
		l := e.listen(store.Filter{Users: []string{user}}, time.Minute)
		var readers sync.WaitGroup
		var read [2]store.OutcomeKind
		var started atomic.Bool
		advanced := make(chan struct{})
		wait := offset + time.Duration(rand.Int64N(int64(step)))
		go func() {
			for !started.Load() {
				runtime.Gosched()
			}
			spin(wait)
			e.clk.Advance(time.Minute)
			for i := range read {
				readers.Add(1)
				go func() {
					defer readers.Done()
					if got, err := e.s.GetListener(e.ctx, "t1", l.ID); err == nil {
						read[i] = got.Outcome
					}
				}()
			}
			close(advanced)
		}()
		started.Store(true)
		spin(-wait)
		matched := len(e.ingest(store.InboundMessage{User: user, Text: "now"}).Matched) == 1
		<-advanced
		readers.Wait()
		final := e.getListener(l.ID)
		if matched != (final.Outcome == store.Matched) || final.Outcome == store.Pending {
			e.t.Fatalf("round %d: ingest says matched=%v, final outcome %v", round, matched, final.Outcome)
		}
		for _, o := range read {
			if o != store.Pending && o != final.Outcome {
				e.t.Fatalf("round %d: a reader saw %v, final is %v", round, o, final.Outcome)
			}
		}
		seen[final.Outcome]++
		if matched {
			offset -= step
		} else {
			offset += step
		}
	}
}

// spin busy-waits for d (nothing when d <= 0): finer than a timer. It
// yields as it goes, so that on one CPU the other side runs meanwhile.
func spin(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
		runtime.Gosched()
	}
}

func testOutcomeRetention(e *env) {
	l := e.listen(store.Filter{Users: []string{"u1"}}, 0)
	e.ingest(store.InboundMessage{User: "u1", Text: "hi"})
	e.clk.Advance(24*time.Hour - time.Second)
	if got := e.getListener(l.ID); got.Outcome != store.Matched {
		e.t.Fatalf("outcome lost early: %v", got.Outcome)
	}
	e.clk.Advance(time.Second)
	_, err := e.s.GetListener(e.ctx, "t1", l.ID)
	wantErr(e.t, err, store.ErrListenerNotFound)
}

func testIdleWindow(e *env) {
	l := e.listen(store.Filter{Users: []string{"u1"}}, 0) // idle window: 1 h
	e.clk.Advance(50 * time.Minute)
	if err := e.s.TouchListener(e.ctx, "t1", l.ID, e.clk.Now().Add(time.Hour)); err != nil {
		e.t.Fatal(err)
	}
	// Touching never shortens.
	if err := e.s.TouchListener(e.ctx, "t1", l.ID, e.clk.Now()); err != nil {
		e.t.Fatal(err)
	}
	e.clk.Advance(59 * time.Minute)
	if got := e.getListener(l.ID); got.Outcome != store.Pending {
		e.t.Fatalf("touched listener = %v", got.Outcome)
	}
	e.clk.Advance(time.Minute)
	if r := e.ingest(store.InboundMessage{User: "u1", Text: "hi"}); len(r.Matched) != 0 {
		e.t.Fatalf("a dropped listener matched")
	}
	_, err := e.s.GetListener(e.ctx, "t1", l.ID)
	wantErr(e.t, err, store.ErrListenerNotFound)
	wantErr(e.t, e.s.TouchListener(e.ctx, "t1", l.ID, e.clk.Now().Add(time.Hour)), store.ErrListenerNotFound)
	// A listener with a deadline lives until the deadline, idle or not.
	timed := e.listen(store.Filter{Users: []string{"u1"}}, 3*time.Hour)
	e.clk.Advance(2 * time.Hour)
	if got := e.getListener(timed.ID); got.Outcome != store.Pending {
		e.t.Fatalf("timed listener dropped while idle: %v", got.Outcome)
	}
}

// A tenant may have MaxPending listeners pending; a listener stops
// counting once decided, timed out or dropped, whether or not anyone has
// read it since. Other tenants have their own count.
func testPendingCap(e *env) {
	register := func(tenant string, f store.Filter, timeout time.Duration) (store.Listener, error) {
		return e.s.RegisterListener(e.ctx, store.NewListener{ID: ids.Listener(), Tenant: tenant, Filter: f,
			Timeout: timeout, ResumeWindow: time.Hour, MaxPending: 3})
	}
	full := func(what string) {
		e.t.Helper()
		_, err := register("t1", store.Filter{Users: []string{"x"}}, 0)
		if !errors.Is(err, store.ErrTooManyListeners) {
			e.t.Fatalf("%s: a listener past the cap: %v, want ErrTooManyListeners", what, err)
		}
	}
	room := func(what string, f store.Filter, timeout time.Duration) store.Listener {
		e.t.Helper()
		l, err := register("t1", f, timeout)
		if err != nil {
			e.t.Fatalf("%s: %v", what, err)
		}
		return l
	}
	room("first", store.Filter{Users: []string{"u1"}}, 0)
	room("second", store.Filter{Users: []string{"u2"}}, time.Minute)
	room("third", store.Filter{Users: []string{"u3"}}, 0)
	full("at the cap")
	if _, err := register("t2", store.Filter{Users: []string{"u1"}}, 0); err != nil {
		e.t.Fatalf("another tenant, under its own cap: %v", err)
	}
	// A match makes room.
	e.ingest(store.InboundMessage{Tenant: "t1", User: "u1", Text: "hi"})
	room("after a match", store.Filter{Users: []string{"u4"}}, 0)
	full("at the cap again")
	// So does a deadline passing, read or not.
	e.clk.Advance(time.Minute)
	room("after a timeout", store.Filter{Users: []string{"u5"}}, 0)
	full("at the cap once more")
	// And an idle window running out.
	e.clk.Advance(time.Hour)
	for i := range 3 {
		room(fmt.Sprint("after the idle windows ", i), store.Filter{Users: []string{fmt.Sprint("w", i)}}, 0)
	}
	full("full of fresh listeners")
}

func testEvents(e *env) {
	s := e.create("t1", "u1")
	sub, err := e.s.Subscribe(e.ctx, store.SessionTopic("t1", s.ID))
	if err != nil {
		e.t.Fatal(err)
	}
	defer sub.Close()
	l := e.listen(store.Filter{SessionID: s.ID}, 0)
	lsub, err := e.s.Subscribe(e.ctx, store.ListenerTopic("t1", l.ID))
	if err != nil {
		e.t.Fatal(err)
	}
	defer lsub.Close()

	out := e.post("t1", s.ID, "out")
	in := e.ingest(store.InboundMessage{SessionID: s.ID, Text: "in"})
	var pending []store.Event
	for _, want := range []store.Message{out, in.Message} {
		ev := next(e.t, sub, &pending)
		if ev.Kind != store.EventMessage || ev.Message == nil || ev.Message.ID != want.ID || ev.Message.Seq != want.Seq {
			e.t.Fatalf("event = %+v, want message %s", ev, want.ID)
		}
	}
	var lpending []store.Event
	ev := next(e.t, lsub, &lpending)
	if ev.Kind != store.EventListenerResolved || ev.ListenerID != l.ID {
		e.t.Fatalf("listener event = %+v", ev)
	}
	// The event may carry the outcome or be a hint to read it.
	got := ev.Listener
	if got == nil {
		l := e.getListener(l.ID)
		got = &l
	}
	if got.Outcome != store.Matched || got.Message == nil || got.Message.ID != in.Message.ID {
		e.t.Fatalf("resolved listener = %+v", got)
	}
	// Another session's messages are not delivered.
	other := e.create("t1", "u2")
	e.post("t1", other.ID, "elsewhere")
	last := e.post("t1", s.ID, "last")
	if ev := next(e.t, sub, &pending); ev.Message == nil || ev.Message.ID != last.ID {
		e.t.Fatalf("event = %+v, want %s", ev, last.ID)
	}
}

// ---- chatbot ----

func greet(s store.Session, c store.Contact) store.Outgoing {
	return store.Outgoing{Text: fmt.Sprintf("hi %s from %s", c.Metadata["name"], s.Metadata["team"])}
}

func (e *env) chatbot(c store.ChatbotStart) store.ChatbotResult {
	e.t.Helper()
	if c.Tenant == "" {
		c.Tenant, c.Platform, c.Channel, c.User = "t1", "api", "api", "u1"
	}
	if c.ChatbotID == "" {
		c.ChatbotID = "bot1"
	}
	if c.Greeting == nil {
		c.Greeting = greet
	}
	if c.GreetingStatus == 0 {
		c.GreetingStatus = store.StatusDelivered
	}
	r, err := e.s.StartChatbot(e.ctx, c)
	if err != nil {
		e.t.Fatalf("StartChatbot: %v", err)
	}
	return r
}

func testChatbotStart(e *env) {
	r := e.chatbot(store.ChatbotStart{
		SessionMetadata: map[string]string{"team": "sales"},
		ContactMetadata: map[string]string{"name": "Ada"},
	})
	if !r.SessionStarted || r.Skip != store.NotSkipped || r.Session.State != store.StateBot || r.Session.ChatbotID != "bot1" {
		e.t.Fatalf("start = %+v", r)
	}
	if r.Greeting.Text != "hi Ada from sales" || r.Greeting.Direction != store.Outbound || r.Greeting.FromUser != "bot1" {
		e.t.Fatalf("greeting = %+v", r.Greeting)
	}
	if r.Contact.Metadata["name"] != "Ada" || r.Contact.User != "u1" {
		e.t.Fatalf("contact = %+v", r.Contact)
	}
	// Continuing merges metadata into the same session.
	r2 := e.chatbot(store.ChatbotStart{ChatbotID: "bot2", ContactMetadata: map[string]string{"name": "Grace"}})
	if r2.SessionStarted || r2.Session.ID != r.Session.ID || r2.Session.ChatbotID != "bot2" ||
		r2.Session.Metadata["team"] != "sales" || r2.Greeting.Text != "hi Grace from sales" {
		e.t.Fatalf("continue = %+v", r2)
	}
	msgs, _ := e.s.ListMessages(e.ctx, "t1", r.Session.ID, "", 10)
	if len(msgs) != 2 {
		e.t.Fatalf("history = %d messages, want 2 greetings", len(msgs))
	}
}

func testChatbotSkip(e *env) {
	r := e.chatbot(store.ChatbotStart{})
	skipped := e.chatbot(store.ChatbotStart{SkipIfBotInExecution: true, ContactMetadata: map[string]string{"x": "y"}})
	if skipped.Skip != store.SkipBotInExecution || skipped.Session.ID != r.Session.ID || skipped.Greeting.ID != "" {
		e.t.Fatalf("skip bot = %+v", skipped)
	}
	if skipped.Contact.Metadata["x"] != "" {
		e.t.Fatal("a skipped call changed the contact")
	}
	// skip_if_in_progress does not apply to BOT, and vice versa.
	if r := e.chatbot(store.ChatbotStart{SkipIfInProgress: true}); r.Skip != store.NotSkipped {
		e.t.Fatalf("skip_if_in_progress skipped a BOT session: %+v", r)
	}
	if _, err := e.s.UpdateSession(e.ctx, "t1", r.Session.ID, store.SessionUpdate{State: store.StateInProgress}); err != nil {
		e.t.Fatal(err)
	}
	skipped = e.chatbot(store.ChatbotStart{SkipIfInProgress: true, SkipIfBotInExecution: true})
	if skipped.Skip != store.SkipInProgress || skipped.Session.State != store.StateInProgress {
		e.t.Fatalf("skip in progress = %+v", skipped)
	}
	// Skip rules come before force-start.
	skipped = e.chatbot(store.ChatbotStart{SkipIfInProgress: true, ForceStart: true})
	if skipped.Skip != store.SkipInProgress || skipped.Closed != nil {
		e.t.Fatalf("force-start overrode a skip rule: %+v", skipped)
	}
	msgs, _ := e.s.ListMessages(e.ctx, "t1", r.Session.ID, "", 10)
	if len(msgs) != 2 {
		e.t.Fatalf("history = %d messages, want 2", len(msgs))
	}
}

func testChatbotForce(e *env) {
	first := e.chatbot(store.ChatbotStart{SessionMetadata: map[string]string{"team": "a"}})
	sub, err := e.s.Subscribe(e.ctx, store.SessionTopic("t1", first.Session.ID))
	if err != nil {
		e.t.Fatal(err)
	}
	defer sub.Close()
	forced := e.chatbot(store.ChatbotStart{ForceStart: true})
	if !forced.SessionStarted || forced.Session.ID == first.Session.ID || forced.Closed == nil || forced.Closed.ID != first.Session.ID {
		e.t.Fatalf("force = %+v", forced)
	}
	if forced.Session.Metadata["team"] != "" {
		e.t.Fatal("a forced new session inherited the old one's metadata")
	}
	old, _ := e.s.GetSession(e.ctx, "t1", first.Session.ID)
	if old.State != store.StateClosed {
		e.t.Fatalf("old session state = %v", old.State)
	}
	var pending []store.Event
	if ev := next(e.t, sub, &pending); ev.Kind != store.EventSessionEnded {
		e.t.Fatalf("old session's watchers got %+v, want its end", ev)
	}
	// With nothing active, force-start just starts.
	if r := e.chatbot(store.ChatbotStart{Tenant: "t1", Platform: "api", Channel: "api", User: "u9", ForceStart: true}); !r.SessionStarted || r.Closed != nil {
		e.t.Fatalf("force with none = %+v", r)
	}
}

func testChatbotNamedSession(e *env) {
	s := e.create("t1", "u1")
	r := e.chatbot(store.ChatbotStart{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", SessionID: s.ID})
	if r.SessionStarted || r.Session.ID != s.ID {
		e.t.Fatalf("named session = %+v", r)
	}
	_, err := e.s.StartChatbot(e.ctx, store.ChatbotStart{Tenant: "t1", Platform: "api", Channel: "api", User: "u2", SessionID: s.ID, ChatbotID: "b", Greeting: greet})
	wantErr(e.t, err, store.ErrSessionMismatch)
	_, err = e.s.StartChatbot(e.ctx, store.ChatbotStart{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", SessionID: "ses_nope", ChatbotID: "b", Greeting: greet})
	wantErr(e.t, err, store.ErrSessionNotFound)
	if _, err := e.s.CloseSession(e.ctx, "t1", s.ID); err != nil {
		e.t.Fatal(err)
	}
	_, err = e.s.StartChatbot(e.ctx, store.ChatbotStart{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", SessionID: s.ID, ChatbotID: "b", Greeting: greet})
	wantErr(e.t, err, store.ErrSessionClosed)
	// Force-start from a closed named session starts afresh, and ends the
	// tuple's other active session: never two active at once.
	other := e.create("t1", "u1")
	r = e.chatbot(store.ChatbotStart{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", SessionID: s.ID, ForceStart: true})
	if !r.SessionStarted || r.Session.ID == s.ID || r.Session.ID == other.ID || r.Closed == nil || r.Closed.ID != other.ID {
		e.t.Fatalf("force on a closed named session = %+v", r)
	}
	if got, _ := e.s.GetSession(e.ctx, "t1", other.ID); got.State != store.StateClosed {
		e.t.Fatalf("the other active session is %v, want CLOSED", got.State)
	}
}

func testChatbotIdempotent(e *env) {
	c := store.ChatbotStart{Idempotency: store.Idempotency{Key: "cb", Fingerprint: "f"}}
	r1 := e.chatbot(c)
	r2 := e.chatbot(c)
	if !r2.Replayed || r2.Session.ID != r1.Session.ID || r2.Greeting.ID != r1.Greeting.ID || !r2.SessionStarted {
		e.t.Fatalf("retry = %+v, want the first result", r2)
	}
	c.Idempotency.Fingerprint = "other"
	c.Tenant, c.Platform, c.Channel, c.User, c.ChatbotID, c.Greeting = "t1", "api", "api", "u1", "bot1", greet
	_, err := e.s.StartChatbot(e.ctx, c)
	wantErr(e.t, err, store.ErrIdempotencyKeyReused)
	msgs, _ := e.s.ListMessages(e.ctx, "t1", r1.Session.ID, "", 10)
	if len(msgs) != 1 {
		e.t.Fatalf("history = %d messages, want 1", len(msgs))
	}
}

// ---- the common contract ----

// Callers may keep and change what a store returns: a later read, and a
// replay of an idempotency key, still give what was stored.
func testReturnedValuesAreCopies(e *env) {
	md := func() map[string]string { return map[string]string{"k": "v"} }
	spoil := func(m map[string]string) {
		for k := range m {
			m[k] = "spoiled"
		}
		m["added"] = "spoiled"
	}
	intact := func(what string, m map[string]string) {
		e.t.Helper()
		if len(m) != 1 || m["k"] != "v" {
			e.t.Fatalf("%s: metadata %v, want the stored {k: v}", what, m)
		}
	}

	ses, err := e.s.CreateSession(e.ctx, store.NewSession{Tenant: "t1", Platform: "api", Channel: "api", User: "u1", Metadata: md()})
	if err != nil {
		e.t.Fatal(err)
	}
	spoil(ses.Metadata)
	got, _ := e.s.GetSession(e.ctx, "t1", ses.ID)
	intact("GetSession after the created session was changed", got.Metadata)
	spoil(got.Metadata)
	got, _ = e.s.GetSession(e.ctx, "t1", ses.ID)
	intact("GetSession after a read session was changed", got.Metadata)

	post := store.OutboundMessage{Tenant: "t1", SessionID: ses.ID, Text: "x", Status: store.StatusDelivered, Metadata: md(),
		Idempotency: store.Idempotency{Key: "post", Fingerprint: "f"}}
	m, _, err := e.s.AppendOutbound(e.ctx, post)
	if err != nil {
		e.t.Fatal(err)
	}
	spoil(m.Metadata)
	m, replayed, _ := e.s.AppendOutbound(e.ctx, post)
	if !replayed {
		e.t.Fatal("the post's key was not replayed")
	}
	intact("a replayed post", m.Metadata)
	spoil(m.Metadata)
	m, _, _ = e.s.AppendOutbound(e.ctx, post)
	intact("a post replayed after a replay was changed", m.Metadata)
	hist, _ := e.s.ListMessages(e.ctx, "t1", ses.ID, "", 10)
	intact("the history", hist[0].Metadata)
	spoil(hist[0].Metadata)
	hist, _ = e.s.ListMessages(e.ctx, "t1", ses.ID, "", 10)
	intact("the history after a listed message was changed", hist[0].Metadata)

	l := e.listen(store.Filter{Users: []string{"u2"}}, 0)
	in := store.InboundMessage{Tenant: "t1", Platform: "api", Channel: "api", User: "u2", Text: "hi", Metadata: md(),
		Raw: json.RawMessage(`{"k":"v"}`), Idempotency: store.Idempotency{Key: "in", Fingerprint: "f"}}
	r := e.ingest(in)
	spoil(r.Message.Metadata)
	r.Message.Raw[2] = 'X'
	r.Matched[0] = "spoiled"
	r = e.ingest(in)
	intact("a replayed ingest", r.Message.Metadata)
	if string(r.Message.Raw) != `{"k":"v"}` || !slices.Equal(r.Matched, []string{l.ID}) {
		e.t.Fatalf("a replayed ingest: raw %s, matched %v; want what was stored", r.Message.Raw, r.Matched)
	}
	lst := e.getListener(l.ID)
	spoil(lst.Message.Metadata)
	intact("a decided listener's message", e.getListener(l.ID).Message.Metadata)

	c := store.ChatbotStart{User: "u3", SessionMetadata: md(), ContactMetadata: md(), Idempotency: store.Idempotency{Key: "bot", Fingerprint: "f"}}
	b := e.chatbot(c)
	spoil(b.Session.Metadata)
	spoil(b.Contact.Metadata)
	b = e.chatbot(c)
	if !b.Replayed {
		e.t.Fatal("the chatbot's key was not replayed")
	}
	intact("a replayed chatbot start's session", b.Session.Metadata)
	intact("a replayed chatbot start's contact", b.Contact.Metadata)
}

// Close may be called more than once, and concurrently (a shutdown racing a
// test's cleanup, say).
func testCloseConcurrently(e *env) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 2 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			<-start
			if err := e.s.Close(); err != nil {
				e.t.Errorf("Close: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if err := e.s.Close(); err != nil {
		e.t.Fatalf("Close after Close: %v", err)
	}
}

// ---- rate limits ----

// A budget of Burst calls refills at PerSecond: a call past it is refused
// with the wait until the next, and taking nothing only looks. (Refilling
// itself is timed by the backend's own clock, which may be Redis's, so it
// is not tested here.)
func testRateBudgets(e *env) {
	r := store.Rate{PerSecond: 1.0 / 3600, Burst: 3} // one call an hour
	take := func(key string, n int) time.Duration {
		e.t.Helper()
		wait, err := e.s.Take(e.ctx, key, r, n)
		if err != nil {
			e.t.Fatal(err)
		}
		return wait
	}
	if w := take("k1", 0); w != 0 {
		e.t.Fatalf("looking at a fresh budget: wait %s, want 0", w)
	}
	for i := range 3 {
		if w := take("k1", 1); w != 0 {
			e.t.Fatalf("call %d of a burst of 3: wait %s", i+1, w)
		}
	}
	for _, n := range []int{1, 0, 1} {
		if w := take("k1", n); w < 59*time.Minute || w > time.Hour+time.Second {
			e.t.Fatalf("taking %d from an empty budget: wait %s, want about an hour", n, w)
		}
	}
	if w := take("k2", 1); w != 0 {
		e.t.Fatalf("another key's budget: wait %s", w)
	}
	if w := take("k3", 4); w == 0 {
		e.t.Fatal("4 calls at once from a burst of 3 were allowed")
	}
	if w := take("k3", 3); w != 0 {
		e.t.Fatalf("refusing 4 took something: 3 then waited %s", w)
	}
}

// What many updates add up to is bounded as one request is: an update or a
// chatbot start that would leave a session's or a contact's metadata with
// more than MaxMetadata entries is refused, and changes nothing; one that
// replaces or removes as much as it adds goes through.
func testMetadataBound(e *env) {
	s := e.create("t1", "u1")
	md := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	update := func(u store.SessionUpdate) (store.Session, error) {
		u.MaxMetadata = 3
		return e.s.UpdateSession(e.ctx, "t1", s.ID, u)
	}
	if _, err := update(store.SessionUpdate{Metadata: md("a", "1", "b", "2")}); err != nil {
		e.t.Fatal(err)
	}
	_, err := update(store.SessionUpdate{Metadata: md("c", "3", "d", "4"), State: store.StateInProgress})
	wantErr(e.t, err, store.ErrTooMuchMetadata)
	if got, _ := e.s.GetSession(e.ctx, "t1", s.ID); len(got.Metadata) != 2 || got.State != store.StateOpen {
		e.t.Fatalf("a refused update changed the session: %+v", got)
	}
	got, err := update(store.SessionUpdate{Metadata: md("a", "one", "c", "3", "d", "4"), RemoveMetadata: []string{"b"}})
	if err != nil || len(got.Metadata) != 3 || got.Metadata["a"] != "one" {
		e.t.Fatalf("an update that removes as it adds: %+v, %v", got.Metadata, err)
	}
	// Past the bound already (the hub's own bookkeeping is not bounded):
	// an update that adds nothing goes through.
	if _, err := e.s.UpdateSession(e.ctx, "t1", s.ID, store.SessionUpdate{Metadata: md("chatbot_error", "x")}); err != nil {
		e.t.Fatal(err)
	}
	if got, err := update(store.SessionUpdate{State: store.StateInProgress, Metadata: md("a", "uno")}); err != nil || got.State != store.StateInProgress {
		e.t.Fatalf("an update that adds nothing to metadata past the bound: %+v, %v", got, err)
	}

	// A chatbot start, on the session's metadata and the contact's.
	start := store.ChatbotStart{Tenant: "t1", Platform: "api", Channel: "api", User: "u2", ChatbotID: "bot1", Greeting: greet,
		GreetingStatus: store.StatusDelivered, MaxMetadata: 3, ContactMetadata: md("x", "1", "y", "2", "z", "3")}
	e.chatbot(start)
	start.ForceStart, start.ContactMetadata = true, md("w", "4")
	_, err = e.s.StartChatbot(e.ctx, start)
	wantErr(e.t, err, store.ErrTooMuchMetadata)
	start.ContactMetadata, start.SessionMetadata = nil, md("p", "1", "q", "2", "r", "3", "s", "4")
	_, err = e.s.StartChatbot(e.ctx, start)
	wantErr(e.t, err, store.ErrTooMuchMetadata)
	list, _, err := e.s.ListSessions(e.ctx, "t1", store.SessionFilter{User: "u2"}, store.SessionCursor{}, 10)
	if err != nil || len(list) != 1 || !list[0].State.Active() {
		e.t.Fatalf("a refused start (force_start) changed the sessions: %+v, %v", list, err)
	}
	ct, err := e.s.GetContact(e.ctx, "t1", "api", "u2")
	if err != nil || len(ct.Metadata) != 3 {
		e.t.Fatalf("a refused start changed the contact: %+v, %v", ct, err)
	}
}

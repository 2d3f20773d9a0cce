package storetest

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/store"
)

// Workflow-grade waits (docs/design.md §4): approver sets, cancelling,
// inspecting, and waiting after a message.

// A listener waiting for an approver set takes a message from any of its
// users and from nobody else, and says who answered.
func testApproverSets(e *env) {
	approvers := store.SortUsers([]string{"bob", "alice", "bob"})
	if !slices.Equal(approvers, []string{"alice", "bob"}) {
		e.t.Fatalf("SortUsers = %v", approvers)
	}
	l := e.listen(store.Filter{Users: approvers, Keyword: "approve"}, time.Hour)
	single := e.listen(store.Filter{Users: []string{"bob"}}, time.Hour)
	if r := e.ingest(store.InboundMessage{User: "carol", Text: "approve"}); len(r.Matched) != 0 {
		e.t.Fatalf("a user outside the set matched %v", r.Matched)
	}
	if got := e.getListener(l.ID); got.Outcome != store.Pending || got.SawMismatch {
		e.t.Fatalf("after an outsider's message: %+v", got)
	}
	e.ingest(store.InboundMessage{User: "alice", Text: "not yet"})
	if got := e.getListener(l.ID); got.Outcome != store.Pending || !got.SawMismatch {
		e.t.Fatalf("an approver's non-matching message was not noted: %+v", got)
	}
	r := e.ingest(store.InboundMessage{User: "bob", Text: "I approve"})
	if want := []string{l.ID, single.ID}; !sameSet(r.Matched, want) {
		e.t.Fatalf("bob's approval matched %v, want %v", r.Matched, want)
	}
	got := e.getListener(l.ID)
	if got.Outcome != store.Matched || got.Message.FromUser != "bob" || !slices.Equal(got.Filter.Users, approvers) {
		e.t.Fatalf("approver set's listener = %+v", got)
	}
	// Decided once: the other approver changes nothing.
	if r := e.ingest(store.InboundMessage{User: "alice", Text: "approve"}); len(r.Matched) != 0 {
		e.t.Fatalf("a decided approver set matched again: %v", r.Matched)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// CancelListener decides a pending listener, once; a decided one is
// returned as it stands; an unknown one is not found.
func testCancel(e *env) {
	l := e.listen(store.Filter{Users: []string{"u1"}}, time.Hour)
	sub, err := e.s.Subscribe(e.ctx, store.ListenerTopic("t1", l.ID))
	if err != nil {
		e.t.Fatal(err)
	}
	defer sub.Close()
	e.clk.Advance(time.Minute)
	got, err := e.s.CancelListener(e.ctx, "t1", l.ID)
	if err != nil || got.Outcome != store.Cancelled || !got.DecidedAt.Equal(e.clk.Now()) || got.Waited() != time.Minute {
		e.t.Fatalf("CancelListener = %+v, %v", got, err)
	}
	var pending []store.Event
	if ev := next(e.t, sub, &pending); ev.Kind != store.EventListenerResolved || ev.ListenerID != l.ID {
		e.t.Fatalf("event %+v", ev)
	}
	if r := e.ingest(store.InboundMessage{User: "u1", Text: "too late"}); len(r.Matched) != 0 {
		e.t.Fatalf("a cancelled listener matched")
	}
	again, err := e.s.CancelListener(e.ctx, "t1", l.ID)
	if err != nil || again.Outcome != store.Cancelled || !again.DecidedAt.Equal(got.DecidedAt) {
		e.t.Fatalf("cancelling again = %+v, %v", again, err)
	}
	matched := e.listen(store.Filter{Users: []string{"u2"}}, time.Hour)
	e.ingest(store.InboundMessage{User: "u2", Text: "yes"})
	if got, err := e.s.CancelListener(e.ctx, "t1", matched.ID); err != nil || got.Outcome != store.Matched {
		e.t.Fatalf("cancelling a matched listener = %+v, %v", got, err)
	}
	late := e.listen(store.Filter{Users: []string{"u3"}}, time.Minute)
	e.clk.Advance(time.Minute)
	if got, err := e.s.CancelListener(e.ctx, "t1", late.ID); err != nil || got.Outcome != store.TimedOut {
		e.t.Fatalf("cancelling past the deadline = %+v, %v; want the timeout", got, err)
	}
	_, err = e.s.CancelListener(e.ctx, "t1", "cr_missing")
	wantErr(e.t, err, store.ErrListenerNotFound)
	_, err = e.s.CancelListener(e.ctx, "t2", late.ID)
	wantErr(e.t, err, store.ErrListenerNotFound)
}

// testCancelRace races a cancel, a matching ingest and the deadline passing
// (read by GetListener), round after round, each side starting after its
// own random wait, until each outcome has won a few times. Whatever the
// interleaving, there is exactly one outcome, and every side reports it.
func testCancelRace(e *env) {
	begin := time.Now()
	e.ingest(store.InboundMessage{User: "warmup", Text: "x"})
	step := max(time.Since(begin), time.Microsecond)
	seen := map[store.OutcomeKind]int{}
	for round := 0; seen[store.Matched] < 3 || seen[store.TimedOut] < 3 || seen[store.Cancelled] < 3; round++ {
		if round == 3000 {
			e.t.Fatalf("after %d rounds not every side has won: %v", round, seen)
		}
		user := fmt.Sprint("cancelrace", round)
		l := e.listen(store.Filter{Users: []string{user}}, time.Minute)
		var wg sync.WaitGroup
		var start atomic.Bool
		var matched bool
		var cancelled, read store.Listener
		var cancelErr error
		race := func(side func()) {
			wait := time.Duration(rand.Int64N(int64(3 * step)))
			wg.Go(func() {
				for !start.Load() {
					runtime.Gosched()
				}
				spin(wait)
				side()
			})
		}
		race(func() { matched = len(e.ingest(store.InboundMessage{User: user, Text: "now"}).Matched) == 1 })
		race(func() { cancelled, cancelErr = e.s.CancelListener(e.ctx, "t1", l.ID) })
		race(func() {
			e.clk.Advance(time.Minute)
			read, _ = e.s.GetListener(e.ctx, "t1", l.ID)
		})
		start.Store(true)
		wg.Wait()
		final := e.getListener(l.ID)
		switch {
		case cancelErr != nil:
			e.t.Fatalf("round %d: CancelListener: %v", round, cancelErr)
		case final.Outcome == store.Pending:
			e.t.Fatalf("round %d: still pending after all three", round)
		case matched != (final.Outcome == store.Matched):
			e.t.Fatalf("round %d: ingest says matched=%v, final outcome %v", round, matched, final.Outcome)
		case cancelled.Outcome != store.Pending && cancelled.Outcome != final.Outcome:
			e.t.Fatalf("round %d: CancelListener answered %v, final is %v", round, cancelled.Outcome, final.Outcome)
		case read.Outcome != store.Pending && read.Outcome != final.Outcome:
			e.t.Fatalf("round %d: a reader saw %v, final is %v", round, read.Outcome, final.Outcome)
		}
		seen[final.Outcome]++
	}
}

// A listener registered after a message counts the replies that came
// between that message and the registration: the oldest that matches
// decides it at once. Messages from before that message never do.
func testAfterMessage(e *env) {
	tick := func() { e.clk.Advance(time.Millisecond) }
	alice, bob := e.create("t1", "alice"), e.create("t1", "bob")
	e.ingest(store.InboundMessage{User: "bob", Text: "approve"}) // before the question
	tick()
	question := e.post("t1", alice.ID, "Approve the refund?")
	tick()
	e.ingest(store.InboundMessage{User: "alice", Text: "let me check"})
	tick()
	first := e.ingest(store.InboundMessage{User: "bob", Text: "approve!"}).Message
	tick()
	e.ingest(store.InboundMessage{User: "alice", Text: "approve"})
	tick()

	l := e.listen(store.Filter{Users: []string{"alice", "bob"}, Keyword: "approve", AfterMessageID: question.ID}, time.Hour)
	if l.Outcome != store.Matched || l.Message == nil || l.Message.ID != first.ID || l.Message.FromUser != "bob" {
		e.t.Fatalf("registered after the replies: %+v; want matched by %s", l, first.ID)
	}
	if got := e.getListener(l.ID); got.Outcome != store.Matched || got.Message.ID != first.ID {
		e.t.Fatalf("read back: %+v", got)
	}
	// In its session: alice's "let me check" is in scope but no match.
	inSession := e.listen(store.Filter{SessionID: alice.ID, Keyword: "refunded", AfterMessageID: question.ID}, time.Hour)
	if inSession.Outcome != store.Pending || !inSession.SawMismatch {
		e.t.Fatalf("a session listener with only non-matching replies: %+v", inSession)
	}
	// Nothing after a later message: pending, and an Ingest still decides.
	tick()
	later := e.post("t1", bob.ID, "Thanks")
	tick()
	waiting := e.listen(store.Filter{Users: []string{"bob"}, AfterMessageID: later.ID}, time.Hour)
	if waiting.Outcome != store.Pending {
		e.t.Fatalf("matched a reply from before its message: %+v", waiting)
	}
	if r := e.ingest(store.InboundMessage{User: "bob", Text: "you're welcome"}); !slices.Contains(r.Matched, waiting.ID) {
		e.t.Fatalf("an ingest after registration did not match: %v", r.Matched)
	}
	// Another tenant's messages are not looked at.
	other, err := e.s.RegisterListener(e.ctx, store.NewListener{ID: ids.Listener(), Tenant: "t2", ResumeWindow: time.Hour,
		Filter: store.Filter{Users: []string{"bob"}, AfterMessageID: question.ID}})
	if err != nil || other.Outcome != store.Pending {
		e.t.Fatalf("another tenant's listener: %+v, %v", other, err)
	}
}

// Reading listeners, one or a page at a time, changes nothing: no idle
// window is extended and nothing is decided but timeouts already due.
func testInspection(e *env) {
	ses := e.create("t1", "u9")
	var made []store.Listener
	for i := range 5 {
		made = append(made, e.listen(store.Filter{Users: []string{fmt.Sprint("u", i)}}, 0))
	}
	bySession := e.listen(store.Filter{SessionID: ses.ID}, time.Minute)
	byChannel := e.listen(store.Filter{Channel: "support"}, 0)
	approvers := e.listen(store.Filter{Users: []string{"u1", "u7"}}, 0)
	e.ingest(store.InboundMessage{User: "u0", Text: "hi"})
	if _, err := e.s.CancelListener(e.ctx, "t1", made[2].ID); err != nil {
		e.t.Fatal(err)
	}
	all := func(f store.ListenerFilter, limit int) []store.Listener {
		var out []store.Listener
		after := ""
		for pages := 0; ; pages++ {
			page, next, err := e.s.ListListeners(e.ctx, "t1", f, after, limit)
			if err != nil {
				e.t.Fatal(err)
			}
			if len(page) > limit || pages > 20 {
				e.t.Fatalf("a page of %d (limit %d), %d pages", len(page), limit, pages)
			}
			out = append(out, page...)
			if next == "" {
				return out
			}
			after = next
		}
	}
	ids := func(ls []store.Listener) []string {
		out := make([]string, len(ls))
		for i := range ls {
			out[i] = ls[i].ID
		}
		return out
	}
	everyone := all(store.ListenerFilter{}, 3)
	if len(everyone) != 8 || !slices.IsSorted(ids(everyone)) {
		e.t.Fatalf("listing pages through %v", ids(everyone))
	}
	for _, l := range everyone {
		if l.ID == made[0].ID && l.Outcome != store.Matched || l.ID == made[2].ID && l.Outcome != store.Cancelled ||
			l.ID == made[1].ID && (l.Outcome != store.Pending || !l.IdleUntil.Equal(made[1].IdleUntil)) {
			e.t.Fatalf("listed %+v", l)
		}
	}
	for name, c := range map[string]struct {
		f    store.ListenerFilter
		want []string
	}{
		"user":      {store.ListenerFilter{User: "u1"}, []string{made[1].ID, approvers.ID}},
		"approver":  {store.ListenerFilter{User: "u7"}, []string{approvers.ID}},
		"session":   {store.ListenerFilter{SessionID: ses.ID}, []string{bySession.ID}},
		"channel":   {store.ListenerFilter{Channel: "support"}, []string{byChannel.ID}},
		"matched":   {store.ListenerFilter{Outcome: store.Matched, ByOutcome: true}, []string{made[0].ID}},
		"cancelled": {store.ListenerFilter{Outcome: store.Cancelled, ByOutcome: true}, []string{made[2].ID}},
		"pending":   {store.ListenerFilter{Outcome: store.Pending, ByOutcome: true}, []string{made[1].ID, made[3].ID, made[4].ID, bySession.ID, byChannel.ID, approvers.ID}},
	} {
		if got := ids(all(c.f, 2)); !sameSet(got, c.want) {
			e.t.Errorf("%s: listed %v, want %v", name, got, c.want)
		}
	}
	if page, _, err := e.s.ListListeners(e.ctx, "t2", store.ListenerFilter{}, "", 10); err != nil || len(page) != 0 {
		e.t.Fatalf("another tenant listed %d: %v", len(page), err)
	}
	// Reading changed nothing: the idle windows were not extended.
	e.clk.Advance(time.Hour)
	if _, err := e.s.GetListener(e.ctx, "t1", made[1].ID); err == nil {
		e.t.Fatal("a listener read and listed outlived its idle window")
	}
	// The timed listener is decided as its timeout, and listed so; the
	// idle ones are gone from the listing.
	rest := all(store.ListenerFilter{}, 10)
	if got := ids(rest); !sameSet(got, []string{made[0].ID, made[2].ID, bySession.ID}) {
		e.t.Fatalf("after the idle windows, listed %v", got)
	}
	for _, l := range rest {
		if l.ID == bySession.ID && l.Outcome != store.TimedOut {
			e.t.Fatalf("the timed listener is listed as %v", l.Outcome)
		}
	}
}

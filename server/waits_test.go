package server_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// An approval: the workflow asks alice, on replica A, then waits over REST
// for alice or bob after that question; bob's answer, ingested on replica
// B, ends the wait, naming bob.
func TestApprovalFromEitherApproverAcrossReplicas(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, _ *platforms) {
		ses := d.a.createSession("alice")
		question := d.a.post(ses.SessionId, "Approve refund #42? Reply APPROVE")
		wait := d.a.restStream("POST", "/v1/chat:receive", map[string]any{
			"from_users": []string{"bob", "alice"}, "keyword_filter": "approve", "after_message_id": question, "timeout_minutes": 60,
		})
		w := path(wait.next(), "result", "waiting")
		if users := fmt.Sprint(path(w, "listening_for_users")); users != "[alice bob]" || str(w, "after_message_id") != question ||
			str(w, "listening_for_user") != "" {
			t.Fatalf("waiting frame %v", w)
		}
		d.b.ingest("carol", "approve") // not an approver
		d.b.ingest("bob", "Approve, go ahead")
		s := path(wait.next(), "result", "success")
		if str(s, "from_user") != "bob" || str(s, "message_text") != "Approve, go ahead" || str(s, "conversation_id") != str(w, "conversation_id") {
			t.Fatalf("success frame %v", s)
		}
		wait.end()
	})
}

// A reply that came between the question and the wait is not missed: the
// wait registered after it answers at once.
func TestWaitAfterAMessageCatchesAnEarlierReply(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, _ *platforms) {
		ses := d.a.createSession("+15550001234")
		question := d.a.post(ses.SessionId, "Confirm your booking? YES/NO")
		d.a.clk.Advance(time.Millisecond) // the reply comes after the question
		reply := d.b.ingest("+15550001234", "yes please").Message.MessageId
		st, w := d.a.receive(d.a.ctx(), &pb.ChatReceiveRequest{SessionId: ses.SessionId, KeywordFilter: "yes", AfterMessageId: question})
		if w.AfterMessageId != question || w.ListeningOnSession != ses.SessionId {
			t.Fatalf("waiting %v", w)
		}
		if s := recvOrFail(t, st.Recv).GetSuccess(); s.GetMessageId() != reply {
			t.Fatalf("got %v, want the earlier reply %s", s, reply)
		}
		wantEOF(t, st.Recv)
		// Without after_message_id the same wait would not have seen it.
		st, _ = d.a.receive(d.a.ctx(), &pb.ChatReceiveRequest{SessionId: ses.SessionId, KeywordFilter: "yes", Timeout: durationpb.New(time.Second)})
		d.a.clk.Advance(2 * time.Second)
		if e := recvOrFail(t, st.Recv).GetError(); e.GetErrorCode() != "timeout" {
			t.Fatalf("a wait without after_message_id: %v", e)
		}
	})
}

// A wait can be read and listed from any replica without attaching to it,
// and cancelled: its stream ends with error_code cancelled.
func TestInspectAndCancelAWaitFromAnotherReplica(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, _ *platforms) {
		st, w := d.a.receive(d.a.ctx(), &pb.ChatReceiveRequest{FromUsers: []string{"dana", "eve"}, KeywordFilter: "ok", TimeoutMinutes: 30})
		id := w.ConversationId

		got, err := d.b.chat.GetListener(d.b.ctx(), &pb.GetListenerRequest{ConversationId: id})
		if err != nil {
			t.Fatal(err)
		}
		l := got.Listener
		if l.State != pb.ListenerState_LISTENER_STATE_PENDING || fmt.Sprint(l.FromUsers) != "[dana eve]" || l.KeywordFilter != "ok" ||
			l.TimeoutAt == nil || l.CreatedAt == nil || l.DecidedAt != nil {
			t.Fatalf("GetListener %v", l)
		}
		r := d.b.rest("GET", "/v1/listeners/"+id, nil)
		if r.code != 200 || str(r.json(t), "state") != "LISTENER_STATE_PENDING" || str(r.json(t), "conversation_id") != id {
			t.Fatalf("REST GetListener: %d %s", r.code, r.body)
		}
		r = d.b.rest("GET", "/v1/listeners?user=eve&state=LISTENER_STATE_PENDING", nil)
		listed, _ := path(r.json(t), "listeners").([]any)
		if r.code != 200 || len(listed) != 1 || str(listed[0], "conversation_id") != id {
			t.Fatalf("REST ListListeners: %d %s", r.code, r.body)
		}
		if l, err := d.b.chat.ListListeners(d.b.ctx(), &pb.ListListenersRequest{User: "frank"}); err != nil || len(l.Listeners) != 0 {
			t.Fatalf("listing another user's waits: %v %v", l, err)
		}

		r = d.b.rest("POST", "/v1/listeners/"+id+":cancel", nil)
		if r.code != 200 || str(r.json(t), "state") != "LISTENER_STATE_CANCELLED" {
			t.Fatalf("REST CancelListener: %d %s", r.code, r.body)
		}
		e := recvOrFail(t, st.Recv).GetError()
		if e.GetErrorCode() != "cancelled" || e.GetConversationId() != id || !strings.Contains(e.GetMessage(), "cancelled") {
			t.Fatalf("the stream ended with %v", e)
		}
		wantEOF(t, st.Recv)
		// Cancelling again, or after the fact, answers the outcome.
		again, err := d.a.chat.CancelListener(d.a.ctx(), &pb.CancelListenerRequest{ConversationId: id})
		if err != nil || again.Listener.State != pb.ListenerState_LISTENER_STATE_CANCELLED || again.Listener.DecidedAt == nil {
			t.Fatalf("cancelling again: %v %v", again, err)
		}
		if d.b.ingest("dana", "ok").ListenersMatched != 0 {
			t.Fatal("a cancelled wait matched")
		}
		// Resuming it shows the outcome too.
		st, _ = d.b.receive(d.b.ctx(), &pb.ChatReceiveRequest{ConversationId: id})
		if e := recvOrFail(t, st.Recv).GetError(); e.GetErrorCode() != "cancelled" {
			t.Fatalf("resumed: %v", e)
		}
	})
}

func TestWaitsRefuseBadInput(t *testing.T) {
	ts := start(t, nil, nil, withKeys(testKey{"key-acme-0123456789", "acme"}, testKey{"key-other-0123456789", "other"}))
	ts.key = "key-acme-0123456789"
	ses := ts.createSession("u1")
	msg := ts.post(ses.SessionId, "hi")
	many := make([]string, 65)
	for i := range many {
		many[i] = fmt.Sprint("user", i)
	}
	for _, c := range []struct {
		req   *pb.ChatReceiveRequest
		field string
	}{
		{&pb.ChatReceiveRequest{FromUser: "a", FromUsers: []string{"b"}}, "from_users"},
		{&pb.ChatReceiveRequest{FromUsers: many}, "from_users"},
		{&pb.ChatReceiveRequest{FromUsers: []string{"ok", ""}}, "from_users[1]"},
		{&pb.ChatReceiveRequest{FromUsers: []string{"no spaces"}}, "from_users[0]"},
		{&pb.ChatReceiveRequest{FromUser: "a", AfterMessageId: "msg_nope"}, "after_message_id"},
		{&pb.ChatReceiveRequest{Channel: "api", AfterMessageId: msg}, "after_message_id"},
	} {
		st, err := ts.chat.ChatReceive(ts.ctx(), c.req)
		if err == nil {
			_, err = st.Recv()
		}
		wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", c.field)
	}
	_, err := ts.chat.GetListener(ts.ctx(), &pb.GetListenerRequest{ConversationId: "cr_missing"})
	wantStatus(t, err, codes.NotFound, "LISTENER_NOT_FOUND", "")
	_, err = ts.chat.GetListener(ts.ctx(), &pb.GetListenerRequest{})
	wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", "conversation_id")
	_, err = ts.chat.ListListeners(ts.ctx(), &pb.ListListenersRequest{PageToken: "garbage!"})
	wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", "page_token")
	_, err = ts.chat.ListListeners(ts.ctx(), &pb.ListListenersRequest{State: 99})
	wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", "state")
	// Another tenant's wait is not there.
	_, w := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: "u1"})
	ts.key = "key-other-0123456789"
	_, err = ts.chat.CancelListener(ts.ctx(), &pb.CancelListenerRequest{ConversationId: w.ConversationId})
	wantStatus(t, err, codes.NotFound, "LISTENER_NOT_FOUND", "")
	if l, err := ts.chat.ListListeners(ts.ctx(), &pb.ListListenersRequest{}); err != nil || len(l.Listeners) != 0 {
		t.Fatalf("another tenant lists %v, %v", l, err)
	}
}

// ListListeners pages, in a stable order, through every wait.
func TestListListenersPages(t *testing.T) {
	ts := start(t, nil, nil)
	want := map[string]bool{}
	for i := range 7 {
		_, w := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{FromUser: fmt.Sprint("p", i)})
		want[w.ConversationId] = true
	}
	seen := map[string]bool{}
	token := ""
	for pages := 0; ; pages++ {
		r, err := ts.chat.ListListeners(ts.ctx(), &pb.ListListenersRequest{PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Listeners) > 3 || pages > 5 {
			t.Fatalf("page %d holds %d", pages, len(r.Listeners))
		}
		for _, l := range r.Listeners {
			if seen[l.ConversationId] {
				t.Fatalf("%s listed twice", l.ConversationId)
			}
			seen[l.ConversationId] = true
		}
		if token = r.NextPageToken; token == "" {
			break
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("listed %d of %d", len(seen), len(want))
	}
}

package server_test

import (
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

func (ts *testServer) createSession(user string) *pb.Session {
	ts.t.Helper()
	r, err := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{User: user})
	if err != nil {
		ts.t.Fatalf("CreateSession: %v", err)
	}
	return r.Session
}

// post posts text into a session over gRPC and returns the message's id.
func (ts *testServer) post(sessionID, text string) string {
	ts.t.Helper()
	r, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: sessionID, Message: text})
	if err != nil {
		ts.t.Fatalf("PostMessage: %v", err)
	}
	return r.MessageId
}

// liveWatch opens a live-only WatchSession and waits until the server has
// set it up (its headers arrive then), so later posts reach it.
func (ts *testServer) liveWatch(sessionID string) pb.SessionService_WatchSessionClient {
	ts.t.Helper()
	st, err := ts.sessions.WatchSession(ts.ctx(), &pb.WatchSessionRequest{SessionId: sessionID, LiveOnly: true})
	if err != nil {
		ts.t.Fatalf("WatchSession: %v", err)
	}
	if _, err := st.Header(); err != nil {
		ts.t.Fatalf("WatchSession headers: %v", err)
	}
	return st
}

// wantMessages reads the watch's next frames: messages with ids want, in
// order, each once.
func wantMessages(t *testing.T, watch pb.SessionService_WatchSessionClient, want []string) {
	t.Helper()
	for i, id := range want {
		if got := recvOrFail(t, watch.Recv).GetMessage().GetMessageId(); got != id {
			t.Fatalf("message %d: got %s, want %s", i, got, id)
		}
	}
}

func (ts *testServer) history(sessionID string) []*pb.Message {
	ts.t.Helper()
	r, err := ts.sessions.ListMessages(ts.ctx(), &pb.ListMessagesRequest{SessionId: sessionID, PageSize: 1000})
	if err != nil {
		ts.t.Fatalf("ListMessages: %v", err)
	}
	return r.Messages
}

func TestPostMessageDeliversStoresAndFansOut(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	watch := ts.liveWatch(ses.SessionId)

	// Over REST, as a low-code HTTP node would.
	r := ts.rest("POST", "/v1/sessions/"+ses.SessionId+"/messages", map[string]any{
		"message": "Your order shipped", "metadata": map[string]string{"order": "42"},
	})
	if r.code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", r.code, r.body)
	}
	body := r.json(t)
	if body["status"] != "MESSAGE_STATUS_DELIVERED" || str(body, "session_id") != ses.SessionId ||
		str(body, "platform") != "api" || str(body, "channel") != "api" || str(body, "delivered_at") == "" {
		t.Fatalf("response = %s", r.body)
	}
	msgID := str(body, "message_id")

	got := recvOrFail(t, watch.Recv).GetMessage()
	if got.GetMessageId() != msgID || got.Text != "Your order shipped" || got.Direction != pb.Direction_DIRECTION_OUTBOUND ||
		got.Metadata["order"] != "42" {
		t.Fatalf("watcher got %v, want message %s", got, msgID)
	}
	// And over gRPC.
	resp, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "second"})
	if err != nil || resp.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED || resp.MessageId <= msgID {
		t.Fatalf("PostMessage = %v, %v", resp, err)
	}
	if got := recvOrFail(t, watch.Recv).GetMessage(); got.GetMessageId() != resp.MessageId {
		t.Fatalf("watcher got %v, want %s", got, resp.MessageId)
	}
	h := ts.history(ses.SessionId)
	if len(h) != 2 || h[0].MessageId != msgID || h[1].MessageId != resp.MessageId || h[0].Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED {
		t.Fatalf("history = %v", h)
	}
}

func TestPostMessageIntoMissingOrEndedSession(t *testing.T) {
	ts := start(t, nil, nil)
	_, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: "ses_missing", Message: "x"})
	wantStatus(t, err, codes.NotFound, "SESSION_NOT_FOUND", "")
	wantREST(t, ts.rest("POST", "/v1/sessions/ses_missing/messages", map[string]string{"message": "x"}), 404, "SESSION_NOT_FOUND")

	closed := ts.createSession("u1")
	if _, err := ts.sessions.CloseSession(ts.ctx(), &pb.CloseSessionRequest{SessionId: closed.SessionId}); err != nil {
		t.Fatal(err)
	}
	_, err = ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: closed.SessionId, Message: "x"})
	wantStatus(t, err, codes.FailedPrecondition, "SESSION_CLOSED", "")
	wantREST(t, ts.rest("POST", "/v1/sessions/"+closed.SessionId+"/messages", map[string]string{"message": "x"}), 400, "SESSION_CLOSED")

	expired := ts.createSession("u2")
	ts.clk.Advance(24 * time.Hour)
	_, err = ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: expired.SessionId, Message: "x"})
	wantStatus(t, err, codes.FailedPrecondition, "SESSION_EXPIRED", "")
	if h := ts.history(expired.SessionId); len(h) != 0 {
		t.Fatalf("a refused post was stored: %v", h)
	}
}

func TestPostMessageIdempotencyKey(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("u1")
	req := map[string]any{"message": "charge card", "idempotency_key": "wf-run-7:step-3"}
	first := ts.rest("POST", "/v1/sessions/"+ses.SessionId+"/messages", req).json(t)
	ts.clk.Advance(time.Hour)
	second := ts.rest("POST", "/v1/sessions/"+ses.SessionId+"/messages", req).json(t)
	if first["message_id"] == "" || first["message_id"] != second["message_id"] || first["delivered_at"] != second["delivered_at"] {
		t.Fatalf("retry answered %v, want the first response %v", second, first)
	}
	// The gRPC spelling of the same request is the same request.
	third, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "charge card", IdempotencyKey: "wf-run-7:step-3"})
	if err != nil || third.MessageId != first["message_id"] {
		t.Fatalf("gRPC retry = %v, %v", third, err)
	}
	if h := ts.history(ses.SessionId); len(h) != 1 {
		t.Fatalf("history has %d messages, want 1", len(h))
	}
	// Reusing the key for something else is refused, and stores nothing.
	_, err = ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "refund", IdempotencyKey: "wf-run-7:step-3"})
	wantStatus(t, err, codes.InvalidArgument, "IDEMPOTENCY_KEY_REUSED", "idempotency_key")
	// The first result is replayed even after the session closed.
	if _, err := ts.sessions.CloseSession(ts.ctx(), &pb.CloseSessionRequest{SessionId: ses.SessionId}); err != nil {
		t.Fatal(err)
	}
	if again := ts.rest("POST", "/v1/sessions/"+ses.SessionId+"/messages", req).json(t); again["message_id"] != first["message_id"] {
		t.Fatalf("replay after close = %v", again)
	}
}

func TestPostMessageToUnconfiguredPlatformFailsAndIsKept(t *testing.T) {
	ts := start(t, nil, nil)
	ses, err := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{Channel: "team", User: "U42"})
	if err != nil {
		t.Fatal(err)
	}
	if ses.Session.Platform != "slack" || ses.Session.Channel != "C0123" {
		t.Fatalf("channel name did not resolve: %v", ses.Session)
	}
	resp, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: ses.Session.SessionId, Message: "hi"})
	if err != nil {
		t.Fatalf("a platform refusal must not be an RPC error: %v", err)
	}
	if resp.Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || resp.Error.GetCode() != "platform_not_configured" ||
		resp.DeliveredAt != nil || resp.MessageId == "" {
		t.Fatalf("response = %v", resp)
	}
	h := ts.history(ses.Session.SessionId)
	if len(h) != 1 || h[0].Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || h[0].Error.GetCode() != "platform_not_configured" {
		t.Fatalf("history = %v", h)
	}
}

func TestSendChatbotMessageRules(t *testing.T) {
	ts := start(t, nil, nil)
	send := func(req *pb.SendChatbotMessageRequest) *pb.SendChatbotMessageResponse {
		t.Helper()
		r, err := ts.chat.SendChatbotMessage(ts.ctx(), req)
		if err != nil {
			t.Fatalf("SendChatbotMessage: %v", err)
		}
		return r
	}
	const to = "+15557654321"

	// No session: one is started, metadata merged, greeting rendered.
	first := send(&pb.SendChatbotMessageRequest{
		Chatbot: "welcome", From: "support", To: to,
		SessionMetadata: map[string]string{"topic": "billing"},
		ContactMetadata: map[string]string{"name": "Ada"},
	})
	if first.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_FAILED && first.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SENT {
		t.Fatalf("status = %v", first.Status)
	}
	if !first.SessionStarted || first.ChatbotId != "bot_welcome" || first.Platform != "whatsapp" || first.Channel != "15550001111" ||
		first.Session.State != pb.SessionState_SESSION_STATE_BOT || first.Session.ChatbotId != "bot_welcome" ||
		first.Contact.Metadata["name"] != "Ada" || first.MessageId == "" {
		t.Fatalf("first = %v", first)
	}
	h := ts.history(first.SessionId)
	if len(h) != 1 || h[0].Text != "Hi Ada, about billing?" || h[0].FromUser != "bot_welcome" {
		t.Fatalf("greeting = %v", h)
	}
	// whatsapp has no adapter in this server: the greeting is kept, FAILED.
	if first.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_FAILED || first.Error.GetCode() != "platform_not_configured" {
		t.Fatalf("whatsapp greeting status = %v %v", first.Status, first.Error)
	}

	// On the api channel the greeting is delivered; by id or by name.
	api := send(&pb.SendChatbotMessageRequest{Chatbot: "bot_plain", From: "api", To: "visitor-1"})
	if api.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SENT || !api.SessionStarted {
		t.Fatalf("api = %v", api)
	}

	// Continue: same session, no new start.
	cont := send(&pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "support", To: to, ContactMetadata: map[string]string{"name": "Grace"}})
	if cont.SessionStarted || cont.SessionId != first.SessionId || cont.Session.Metadata["topic"] != "billing" {
		t.Fatalf("continue = %v", cont)
	}

	// Skip while a bot runs.
	skip := send(&pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "support", To: to, SkipIfBotInExecution: true})
	if skip.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SKIPPED || skip.SkipReason != pb.SkipReason_SKIP_REASON_BOT_IN_EXECUTION ||
		skip.SessionId != first.SessionId || skip.MessageId != "" {
		t.Fatalf("skip bot = %v", skip)
	}

	// Skip while a human conversation is in progress (over REST).
	if _, err := ts.sessions.UpdateSession(ts.ctx(), &pb.UpdateSessionRequest{SessionId: first.SessionId, State: pb.SessionState_SESSION_STATE_IN_PROGRESS}); err != nil {
		t.Fatal(err)
	}
	r := ts.rest("POST", "/v1/chatbot-messages", map[string]any{
		"chatbot": "welcome", "from": "support", "to": to, "skipIfInProgress": true, // camelCase is accepted too
	}).json(t)
	if r["status"] != "CHATBOT_MESSAGE_STATUS_SKIPPED" || r["skip_reason"] != "SKIP_REASON_IN_PROGRESS" || r["session_id"] != first.SessionId {
		t.Fatalf("skip in progress = %v", r)
	}

	// Force-start: the old session closes, a new one starts in BOT.
	forced := send(&pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "support", To: to, ForceStartSession: true})
	if !forced.SessionStarted || forced.SessionId == first.SessionId || forced.Session.State != pb.SessionState_SESSION_STATE_BOT {
		t.Fatalf("forced = %v", forced)
	}
	old, err := ts.sessions.GetSession(ts.ctx(), &pb.GetSessionRequest{SessionId: first.SessionId})
	if err != nil || old.Session.State != pb.SessionState_SESSION_STATE_CLOSED {
		t.Fatalf("old session = %v, %v", old, err)
	}

	// Idempotency: a retried call returns the first response.
	req := &pb.SendChatbotMessageRequest{Chatbot: "bot_plain", From: "api", To: "visitor-2", IdempotencyKey: "run-1"}
	a, b := send(req), send(req)
	if a.MessageId != b.MessageId || a.SessionId != b.SessionId || !b.SessionStarted {
		t.Fatalf("retry = %v, want %v", b, a)
	}
	if h := ts.history(a.SessionId); len(h) != 1 {
		t.Fatalf("retry sent %d greetings", len(h))
	}
}

func TestSendChatbotMessageWithNamedSession(t *testing.T) {
	ts := start(t, nil, nil)
	ses := ts.createSession("visitor-1")
	r, err := ts.chat.SendChatbotMessage(ts.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "bot_plain", From: "api", To: "visitor-1", SessionId: ses.SessionId})
	if err != nil || r.SessionStarted || r.SessionId != ses.SessionId {
		t.Fatalf("named session = %v, %v", r, err)
	}
	_, err = ts.chat.SendChatbotMessage(ts.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "bot_plain", From: "api", To: "someone-else", SessionId: ses.SessionId})
	wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", "session_id")
	_, err = ts.chat.SendChatbotMessage(ts.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "bot_plain", From: "api", To: "visitor-1", SessionId: "ses_nope"})
	wantStatus(t, err, codes.NotFound, "SESSION_NOT_FOUND", "")
}

func TestIngestMessageOpensAndReusesSessions(t *testing.T) {
	ts := start(t, nil, nil)
	r := ts.rest("POST", "/v1/inbound-messages", map[string]any{
		"from_user": "visitor-9", "text": "hello", "raw": map[string]any{"ua": "curl", "n": 1},
	})
	if r.code != 200 {
		t.Fatalf("HTTP %d: %s", r.code, r.body)
	}
	first := r.json(t)
	if first["session_started"] != true || str(first, "message", "direction") != "DIRECTION_INBOUND" ||
		str(first, "message", "status") != "MESSAGE_STATUS_RECEIVED" || str(first, "message", "raw", "ua") != "curl" ||
		str(first, "session", "platform") != "api" {
		t.Fatalf("first ingest = %s", r.body)
	}
	second, err := ts.chat.IngestMessage(ts.ctx(), &pb.IngestMessageRequest{FromUser: "visitor-9", Text: "again"})
	if err != nil || second.SessionStarted || second.Session.SessionId != str(first, "session", "session_id") {
		t.Fatalf("second ingest = %v, %v", second, err)
	}
	// Into a named session, without repeating who and where.
	third, err := ts.chat.IngestMessage(ts.ctx(), &pb.IngestMessageRequest{SessionId: second.Session.SessionId, Text: "third"})
	if err != nil || third.Message.FromUser != "visitor-9" || third.Session.SessionId != second.Session.SessionId {
		t.Fatalf("named ingest = %v, %v", third, err)
	}
}

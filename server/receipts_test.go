package server_test

import (
	"testing"
	"time"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/platformtest"
)

// Template messages take receipts as any message does: delivered, read;
// and a failed receipt carrying Meta's 131047 or 131026 makes the message
// FAILED with the code and its reason, in the watcher's status event and
// in history, on either replica; a stale receipt after it changes nothing.
func TestTemplateReceipts(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		p.whatsapp.Approve("report_ready", "en", 1)
		ses, err := d.a.sessions.CreateSession(d.a.ctx(), &pb.CreateSessionRequest{Channel: "support", User: "+15551250001"})
		if err != nil {
			t.Fatal(err)
		}
		sid := ses.Session.SessionId
		watch := d.a.liveWatch(sid)
		tpl := &pb.Template{Name: "report_ready", Language: "en", Parameters: []string{"Q3"}}
		var sent []*pb.PostMessageResponse
		for range 3 {
			r := d.b.postFull(&pb.PostMessageRequest{SessionId: sid, Message: "Your report is ready", Template: tpl})
			if r.Status != pb.MessageStatus_MESSAGE_STATUS_SENT || r.SentAs != pb.SentAs_SENT_AS_TEMPLATE {
				t.Fatalf("post: %v", r)
			}
			sent = append(sent, r)
			recvOrFail(t, watch.Recv) // the message, PENDING
			recvOrFail(t, watch.Recv) // SENT
		}
		receipts := []struct {
			post   *pb.PostMessageResponse
			status string
			code   int
		}{
			{sent[0], "delivered", 0},
			{sent[0], "read", 0},
			{sent[1], "failed", 131026},
			{sent[2], "delivered", 0},
			{sent[2], "failed", 131047},
			{sent[2], "read", 0}, // after FAILED: changes nothing
		}
		for _, rc := range receipts {
			body := platformtest.WhatsAppStatus(waNumber, rc.post.PlatformMessageId, rc.status, "15551250001", time.Now(), rc.code)
			if r := d.b.whatsAppWebhook(body); r.code != 200 {
				t.Fatalf("%s receipt: %d", rc.status, r.code)
			}
		}
		for _, want := range []struct {
			id           string
			status       pb.MessageStatus
			code, reason string
		}{
			{sent[0].MessageId, pb.MessageStatus_MESSAGE_STATUS_DELIVERED, "", ""},
			{sent[0].MessageId, pb.MessageStatus_MESSAGE_STATUS_READ, "", ""},
			{sent[1].MessageId, pb.MessageStatus_MESSAGE_STATUS_FAILED, "131026", "undeliverable"},
			{sent[2].MessageId, pb.MessageStatus_MESSAGE_STATUS_DELIVERED, "", ""},
			{sent[2].MessageId, pb.MessageStatus_MESSAGE_STATUS_FAILED, "131047", "reply_window_closed"},
		} {
			ch := recvOrFail(t, watch.Recv).GetMessageStatus()
			if ch.GetMessageId() != want.id || ch.Status != want.status || ch.Error.GetCode() != want.code || ch.Error.GetReason() != want.reason {
				t.Fatalf("status event %v, want %v %s %s", ch, want.status, want.code, want.reason)
			}
		}
		h := d.a.history(sid)
		if len(h) != 3 || h[0].Status != pb.MessageStatus_MESSAGE_STATUS_READ ||
			h[1].Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || h[1].Error.GetCode() != "131026" ||
			h[2].Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || h[2].Error.GetReason() != "reply_window_closed" || h[2].Template.GetName() != "report_ready" {
			t.Fatalf("history %v", h)
		}
	})
}

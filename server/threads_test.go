package server_test

import (
	"strings"
	"testing"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/platformtest"
)

// A Slack message in a thread makes replies into its session go to that
// thread, over gRPC and REST, on either replica; the session and its
// messages show the thread. A message outside a thread brings replies
// back to the channel.
func TestSlackThreads(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		const thread = "1715000000.000100"
		if r := d.b.slackEvent(platformtest.SlackEvent("EvTh1", slackChan, "U0THR", "a question", map[string]any{"thread_ts": thread})); r.code != 200 {
			t.Fatalf("event: %d", r.code)
		}
		ses := d.a.sessionOf("slack", "U0THR")
		if ses.Thread != thread {
			t.Fatalf("session thread %q, want %q", ses.Thread, thread)
		}
		r := d.a.postFull(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: "an answer"})
		rr := d.b.rest("POST", "/v1/sessions/"+ses.SessionId+"/messages", map[string]any{"message": "and more"})
		if r.Status != pb.MessageStatus_MESSAGE_STATUS_DELIVERED || rr.code != 200 {
			t.Fatalf("posts: %v; %d %s", r, rr.code, rr.body)
		}
		posts := p.slack.Posts()
		want := []platformtest.SlackPost{
			{Token: slackToken, Channel: slackChan, Text: "an answer", ThreadTS: thread},
			{Token: slackToken, Channel: slackChan, Text: "and more", ThreadTS: thread},
		}
		if len(posts) != 2 || posts[0] != want[0] || posts[1] != want[1] {
			t.Fatalf("Slack got %+v, want %+v", posts, want)
		}
		for _, m := range d.b.history(ses.SessionId) {
			if m.Thread != thread {
				t.Fatalf("message %q in thread %q", m.Text, m.Thread)
			}
		}

		d.a.slackEvent(platformtest.SlackEvent("EvTh2", slackChan, "U0THR", "in the channel now", nil))
		if got := d.b.getSession(ses.SessionId).Thread; got != "" {
			t.Fatalf("after a message outside a thread: session thread %q", got)
		}
		d.b.postFull(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: "back in the channel"})
		if last := p.slack.Posts()[2]; last.ThreadTS != "" || last.Text != "back in the channel" {
			t.Fatalf("Slack got %+v, want a post outside the thread", last)
		}
	})
}

// A thread id the hub cannot hold is left out, and said so: the message is
// ingested all the same, and replies go to the channel.
func TestSlackThreadPastItsLimitIsLeftOut(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option())
	long := strings.Repeat("1", 129)
	if r := ts.slackEvent(platformtest.SlackEvent("EvTh3", slackChan, "U0LONG", "hi", map[string]any{"thread_ts": long})); r.code != 200 {
		t.Fatalf("event: %d", r.code)
	}
	ses := ts.sessionOf("slack", "U0LONG")
	h := ts.history(ses.SessionId)
	if ses.Thread != "" || len(h) != 1 || h[0].Text != "hi" || h[0].Thread != "" || h[0].Metadata["thread_omitted"] == "" {
		t.Fatalf("session %v, history %v", ses, h)
	}
	ts.postFull(&pb.PostMessageRequest{SessionId: ses.SessionId, Message: "hello"})
	if posts := p.slack.Posts(); len(posts) != 1 || posts[0].ThreadTS != "" {
		t.Fatalf("Slack got %+v", posts)
	}
}

package server_test

import (
	"fmt"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/browsertest"
	"github.com/chatrelay/chatrelay/internal/redistest"
)

// The widget in a real browser: the demo page, served by a real server,
// in headless Chromium, every scenario asserted on the page's DOM.

// demo opens the demo page at base for the session, and waits until its
// stream is live.
func demo(tab *browsertest.Tab, base, token string) {
	tab.Run(chromedp.Navigate(base + "/widget/demo?token=" + url.QueryEscape(token)))
	tab.WaitFor("the widget to connect", `document.querySelector('.crw')?.dataset.conn === 'live'`)
}

// shown is how many messages of the page have text exactly.
func shown(text string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('.crw-msg .crw-text')].filter(e => e.textContent === %s).length`, strconv.Quote(text))
}

// stateOf is the data-state of the page's message with text.
func stateOf(text string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('.crw-msg')].find(li => li.querySelector('.crw-text').textContent === %s)?.dataset.state`, strconv.Quote(text))
}

func wantNoProblems(t *testing.T, tab *browsertest.Tab) {
	t.Helper()
	if p := tab.Problems(); len(p) > 0 {
		t.Fatalf("the page reported errors (a CSP violation, an exception): %v", p)
	}
}

func TestWidgetInABrowser(t *testing.T) {
	browser := browsertest.New(t)

	t.Run("the demo page shows a greeting, and a reply typed and sent with Enter resolves a ChatReceive", func(t *testing.T) {
		ts := start(t, nil, nil)
		ses := ts.webSession("visitor-1")
		greeting := "Hi! I'm Ada from support. How can I help?"
		ts.post(ses.SessionId, greeting)
		tab := browser.Tab(t)
		demo(tab, ts.base, ts.widgetToken(ses.SessionId))
		tab.WaitFor("the greeting", shown(greeting)+` === 1`)

		live := browsertest.Eval[string](tab, `document.querySelector('.crw-log').getAttribute('aria-live')`)
		role := browsertest.Eval[string](tab, `document.querySelector('.crw-log').getAttribute('role')`)
		if live != "polite" || role != "log" {
			t.Fatalf("the message list has aria-live %q, role %q", live, role)
		}

		waiting, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{SessionId: ses.SessionId, KeywordFilter: "order", TimeoutMinutes: 5})
		// By keyboard alone: Tab to the message box, type, Enter.
		for i := 0; ; i++ {
			if browsertest.Eval[bool](tab, `document.activeElement?.matches('.crw-form input') === true`) {
				break
			}
			if i == 10 {
				t.Fatal("Tab never reached the message box")
			}
			tab.Run(chromedp.KeyEvent(kb.Tab))
		}
		outline := browsertest.Eval[string](tab, `getComputedStyle(document.activeElement).outlineStyle`)
		if outline == "none" || outline == "" {
			t.Fatalf("the focused message box shows no focus (outline-style %q)", outline)
		}
		reply := "Where is my order #1234?"
		tab.Run(chromedp.KeyEvent(reply + kb.Enter))

		s := recvOrFail(t, waiting.Recv).GetSuccess()
		if s.GetMessageText() != reply || s.FromUser != "visitor-1" {
			t.Fatalf("ChatReceive got %v, want the visitor's reply", s)
		}
		// Sent, then confirmed by the stream, and shown once.
		tab.WaitFor("the reply confirmed", stateOf(reply)+` === 'confirmed'`)
		answer := "It ships today; here is the tracking link."
		ts.post(ses.SessionId, answer)
		tab.WaitFor("the answer", shown(answer)+` === 1`)
		if n := browsertest.Eval[int](tab, shown(reply)); n != 1 {
			t.Fatalf("the reply shows %d times", n)
		}
		if label := browsertest.Eval[string](tab, `[...document.querySelectorAll('.crw-in .crw-state')].map(e => e.textContent).join()`); label != "Delivered" {
			t.Fatalf("the reply's delivery state reads %q", label)
		}
		// Its time is the server's (the fake clock's), not the browser's.
		if at := browsertest.Eval[string](tab, `document.querySelector('.crw-in time').dateTime`); at != epoch.Format(time.RFC3339) {
			t.Fatalf("the reply says it was sent at %s, want the server's %s", at, epoch.Format(time.RFC3339))
		}
		wantNoProblems(t, tab)
		tab.Screenshot(t.TempDir(), "widget-demo")
	})

	t.Run("a message posted while the connection is cut appears once after it reconnects", func(t *testing.T) {
		ts := start(t, nil, nil)
		proxy := redistest.NewProxy(t, ts.base[len("http://"):])
		ses := ts.webSession("visitor-1")
		ts.post(ses.SessionId, "Hello again")
		tab := browser.Tab(t)
		demo(tab, "http://"+proxy.Addr, ts.widgetToken(ses.SessionId))
		tab.WaitFor("the history", shown("Hello again")+` === 1`)

		proxy.Cut()
		tab.WaitFor("the reconnecting indicator", `document.querySelector('.crw-conn').dataset.state === 'reconnecting' &&
			document.querySelector('.crw-conn').textContent.startsWith('Reconnecting')`)
		missed := "Sorry for the wait: your refund is approved."
		ts.post(ses.SessionId, missed)
		proxy.Restore()

		tab.WaitFor("the missed message", shown(missed)+` === 1`)
		tab.WaitFor("the stream live again", `document.querySelector('.crw').dataset.conn === 'live'`)
		after := "Anything else?"
		ts.post(ses.SessionId, after)
		tab.WaitFor("a live message after the reconnect", shown(after)+` === 1`)
		if counts := browsertest.Eval[[]int](tab, fmt.Sprintf(`[%s, %s, %s]`, shown("Hello again"), shown(missed), shown(after))); fmt.Sprint(counts) != "[1 1 1]" {
			t.Fatalf("messages shown %v times, want each once", counts)
		}
		if total := browsertest.Eval[int](tab, `document.querySelectorAll('.crw-msg').length`); total != 3 {
			t.Fatalf("%d messages on the page, want 3", total)
		}
		wantNoProblems(t, tab)
		tab.Screenshot(t.TempDir(), "widget-reconnected")
	})

	t.Run("on two replicas over Redis, the page on A shows a post made on B", func(t *testing.T) {
		cl := startCluster(t, 2)
		a, b := cl.replicas[0], cl.replicas[1]
		ses := b.webSession("visitor-1")
		tab := browser.Tab(t)
		demo(tab, a.base, b.widgetToken(ses.SessionId))
		fromB := "Posted on replica B"
		b.post(ses.SessionId, fromB)
		tab.WaitFor("B's post on A's page", shown(fromB)+` === 1`)
		// And the visitor's reply, sent through A, reaches a wait on B.
		waiting, _ := b.receive(b.ctx(), &pb.ChatReceiveRequest{SessionId: ses.SessionId, TimeoutMinutes: 5})
		tab.Run(chromedp.SendKeys(".crw-form input", "Thanks, B!"+kb.Enter))
		if s := recvOrFail(t, waiting.Recv).GetSuccess(); s.GetMessageText() != "Thanks, B!" {
			t.Fatalf("B's wait got %v", s)
		}
		tab.WaitFor("the reply confirmed", stateOf("Thanks, B!")+` === 'confirmed'`)
		wantNoProblems(t, tab)
		tab.Screenshot(t.TempDir(), "widget-replicas")
	})
}

package server_test

import (
	"fmt"
	"html/template"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/browsertest"
	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/server"
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

	t.Run("with data-token-url the chat goes on past its token's expiry; without, it ends", func(t *testing.T) {
		// The embedding site: its own origin and strict policy, a page per
		// session, and the endpoint that answers a fresh token (held until
		// the test lets it answer).
		var ts *testServer
		renewed, answer := make(chan string, 4), make(chan struct{})
		site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sid := r.URL.Query().Get("session")
			switch r.URL.Path {
			case "/page":
				w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src "+ts.base+"; connect-src 'self' "+ts.base)
				_ = sitePage.Execute(w, map[string]any{"Hub": ts.base, "Token": ts.widgetToken(sid),
					"Renew": r.URL.Query().Get("renew") != "", "Session": sid})
			case "/chat-token":
				renewed <- sid
				<-answer
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"token":%q}`, ts.widgetToken(sid))
			default:
				http.NotFound(w, r)
			}
		}))
		defer site.Close()
		defer close(answer) // lets a held answer go before the site closes, on failure
		ts = start(t, nil, nil, withWidget(func(w *server.Widget) { w.AllowedOrigins = []string{site.URL} }))
		renewing, plain := ts.webSession("visitor-1"), ts.webSession("visitor-2")
		for _, ses := range []*pb.Session{renewing, plain} {
			ts.post(ses.SessionId, "Before the token ran out")
		}
		withRenew, without := browser.Tab(t), browsertest.New(t).Tab(t) // a tab is a browser of its own
		withRenew.Run(chromedp.Navigate(site.URL + "/page?renew=1&session=" + renewing.SessionId))
		without.Run(chromedp.Navigate(site.URL + "/page?session=" + plain.SessionId))
		for _, tab := range []*browsertest.Tab{withRenew, without} {
			tab.WaitFor("the widget to connect", `document.querySelector('.crw')?.dataset.conn === 'live'`)
			tab.WaitFor("the history", shown("Before the token ran out")+` === 1`)
		}
		// The page's answers, as the widget's calls see them.
		browsertest.Eval[bool](withRenew, `(() => { const f = window.fetch; window.statuses = [];
			window.fetch = (...a) => f(...a).then(r => { window.statuses.push(r.status); return r; }); return true; })()`)

		ts.clk.Advance(time.Hour + time.Second) // past both tokens' expiry: the streams end
		select {
		case sid := <-renewed:
			if sid != renewing.SessionId {
				t.Fatalf("a fresh token was asked for session %s", sid)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the widget never asked its site for a fresh token")
		}
		without.WaitFor("the chat to end", `document.querySelector('.crw-conn').dataset.state === 'expired'`)
		// Sent with the expired token while the site has not answered yet:
		// refused, then sent again with the fresh one.
		waiting, _ := ts.receive(ts.ctx(), &pb.ChatReceiveRequest{SessionId: renewing.SessionId, TimeoutMinutes: 5})
		withRenew.Run(chromedp.SendKeys(".crw-form input", "Sent while renewing"+kb.Enter))
		withRenew.WaitFor("the send refused with the expired token", `window.statuses.includes(401)`)
		answer <- struct{}{}
		if s := recvOrFail(t, waiting.Recv).GetSuccess(); s.GetMessageText() != "Sent while renewing" {
			t.Fatalf("the wait got %v", s)
		}
		withRenew.WaitFor("the reply confirmed", stateOf("Sent while renewing")+` === 'confirmed'`)
		after := "After a fresh token"
		ts.post(renewing.SessionId, after)
		withRenew.WaitFor("the post after the expiry", shown(after)+` === 1`)
		withRenew.WaitFor("the stream live", `document.querySelector('.crw').dataset.conn === 'live'`)
		if n := browsertest.Eval[int](withRenew, `document.querySelectorAll('.crw-msg').length`); n != 3 {
			t.Fatalf("%d messages on the renewed page, want 3 (each once)", n)
		}
		if n := browsertest.Eval[int](without, `document.querySelectorAll('.crw-msg').length`); n != 1 {
			t.Fatalf("%d messages on the expired page, want 1", n)
		}
		wantNoProblems(t, withRenew)
		wantNoProblems(t, without)
		withRenew.Screenshot(t.TempDir(), "widget-renewed")
	})

	t.Run("a site that gives no fresh token, or sends the page to its login, ends the chat after one ask", func(t *testing.T) {
		var ts *testServer
		var mu sync.Mutex
		first, asked := map[string]string{}, map[string]int{} // by session: the page's token, token asks
		site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sid := r.URL.Query().Get("session")
			mu.Lock()
			defer mu.Unlock()
			switch r.URL.Path {
			case "/page":
				first[sid] = ts.widgetToken(sid)
				w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src "+ts.base+"; connect-src 'self' "+ts.base)
				_ = sitePage.Execute(w, map[string]any{"Hub": ts.base, "Token": first[sid], "Renew": true, "Session": sid,
					"Login": r.URL.Query().Get("login") != ""})
			case "/chat-token":
				asked[sid]++
				if r.URL.Query().Get("login") != "" {
					http.Redirect(w, r, "/login", http.StatusFound)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"token":%q}`, first[sid]) // the one the page has, expired
			case "/login":
				fmt.Fprint(w, "<!doctype html><title>Sign in</title>")
			}
		}))
		defer site.Close()
		ts = start(t, nil, nil, withWidget(func(w *server.Widget) { w.AllowedOrigins = []string{site.URL} }))
		same, login := ts.webSession("visitor-1"), ts.webSession("visitor-2")
		tabs := map[string]*browsertest.Tab{same.SessionId: browser.Tab(t), login.SessionId: browsertest.New(t).Tab(t)}
		tabs[same.SessionId].Run(chromedp.Navigate(site.URL + "/page?session=" + same.SessionId))
		// data-token-url is the page's own; this one's site sends it to sign in.
		tabs[login.SessionId].Run(chromedp.Navigate(site.URL + "/page?session=" + login.SessionId + "&login=1"))
		for _, tab := range tabs {
			tab.WaitFor("the widget to connect", `document.querySelector('.crw')?.dataset.conn === 'live'`)
		}
		ts.clk.Advance(time.Hour + time.Second)
		for _, tab := range tabs {
			tab.WaitFor("the chat to end", `document.querySelector('.crw-conn').dataset.state === 'expired'`)
			wantNoProblems(t, tab)
		}
		mu.Lock()
		defer mu.Unlock()
		if asked[same.SessionId] != 1 || asked[login.SessionId] != 1 {
			t.Fatalf("the sites were asked for a token %d and %d times, want once each", asked[same.SessionId], asked[login.SessionId])
		}
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

// sitePage is a page of a site that embeds the widget, on an origin of its
// own.
var sitePage = template.Must(template.New("site").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A shop</title></head>
<body><h1>A shop</h1><div id="chat"></div>
<script src="{{.Hub}}/widget.js" data-token="{{.Token}}" data-target="#chat"{{if .Renew}} data-token-url="/chat-token?session={{.Session}}{{if .Login}}&amp;login=1{{end}}"{{end}} defer></script>
</body></html>`))

// Command fakeplatforms runs a local Slack Web API and WhatsApp Cloud API,
// to try chatrelay without accounts on either. They check what chatrelay
// sends as the platforms do (method, path, credentials, body), answer as
// they do, and print each request. It also sends chatrelay the callbacks
// the platforms would, signed as they sign them.
//
//	go run ./examples/fakeplatforms serve                            # Slack on :9801, WhatsApp on :9802
//	go run ./examples/fakeplatforms slack U0ADA C0123ABCD 'yes' [THREAD_TS]  # a user's message in a Slack channel (or thread)
//	go run ./examples/fakeplatforms whatsapp +15551234567 'yes'      # a customer's WhatsApp message
//	go run ./examples/fakeplatforms receipt wamid.FAKE… read         # WhatsApp's receipt for a sent message
//
// Credentials come from the environment variables chatrelay's example
// configuration names: SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET, WA_TOKEN,
// WA_APP_SECRET. CHATRELAY_URL is chatrelay's HTTP address (default
// http://localhost:8080).
package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/internal/platformtest"
)

// The WhatsApp number of examples/chatrelay.yaml's `support` channel.
const phoneNumberID = "15550001111"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch args := os.Args[2:]; os.Args[1] {
	case "serve":
		err = serve()
	case "slack":
		if len(args) != 3 && len(args) != 4 {
			usage()
		}
		var extra map[string]any
		if len(args) == 4 {
			extra = map[string]any{"thread_ts": args[3]}
		}
		err = callback("/hooks/slack/acme", platformtest.SlackEvent(fmt.Sprintf("Ev%d", time.Now().UnixNano()), args[1], args[0], args[2], extra),
			func(body []byte) http.Header {
				return platformtest.SignSlack(env("SLACK_SIGNING_SECRET"), time.Now(), body)
			})
	case "whatsapp":
		if len(args) != 2 {
			usage()
		}
		err = whatsapp(platformtest.WhatsAppMessage(phoneNumberID, fmt.Sprintf("wamid.IN%d", time.Now().UnixNano()),
			strings.TrimPrefix(args[0], "+"), args[1], time.Now()))
	case "receipt":
		if len(args) != 2 {
			usage()
		}
		err = whatsapp(platformtest.WhatsAppStatus(phoneNumberID, args[0], args[1], "15551234567", time.Now(), 0))
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakeplatforms:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: fakeplatforms serve | slack USER CHANNEL TEXT [THREAD_TS] | whatsapp +E164 TEXT | receipt WAMID sent|delivered|read|failed")
	os.Exit(2)
}

func env(name string) string {
	v := os.Getenv(name)
	if v == "" {
		fmt.Fprintf(os.Stderr, "fakeplatforms: set %s (the same value chatrelay has)\n", name)
		os.Exit(2)
	}
	return v
}

func serve() error {
	sl, err := net.Listen("tcp", "127.0.0.1:9801")
	if err != nil {
		return err
	}
	wl, err := net.Listen("tcp", "127.0.0.1:9802")
	if err != nil {
		return err
	}
	s := platformtest.NewSlackOn(sl, env("SLACK_BOT_TOKEN"))
	defer s.Close()
	s.OnPost(func(r *http.Request, p platformtest.SlackPost) {
		thread := ""
		if p.ThreadTS != "" {
			thread = " thread_ts=" + p.ThreadTS
		}
		fmt.Printf("slack    %s %s  token=%s channel=%s%s text=%q\n", r.Method, r.URL.Path, redact(p.Token), p.Channel, thread, p.Text)
	})
	w := platformtest.NewWhatsAppOn(wl, env("WA_TOKEN"), phoneNumberID)
	defer w.Close()
	// The templates examples/chatrelay.yaml falls back on, as if approved
	// in WhatsApp Manager.
	w.Approve("chat_update", "en", 1)
	w.Approve("welcome_intro", "en", 2)
	w.OnSend(func(r *http.Request, s platformtest.WhatsAppSend) {
		answer := s.ID
		if answer == "" {
			answer = "refused"
		}
		fmt.Printf("whatsapp %s %s  Authorization: Bearer %s\n         %s\n         → %s\n", r.Method, r.URL.Path, redact(s.Token), s.Raw, answer)
	})
	fmt.Printf("Slack Web API on %s, WhatsApp Cloud API on %s; Ctrl-C stops them\n", s.URL(), w.URL())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt)
	<-stop
	return nil
}

func redact(token string) string {
	if len(token) <= 5 {
		return "…"
	}
	return token[:5] + "…"
}

func whatsapp(body []byte) error {
	return callback("/hooks/whatsapp/support", body, func(body []byte) http.Header {
		return http.Header{"Content-Type": {"application/json"}, "X-Hub-Signature-256": {platformtest.SignWhatsApp(env("WA_APP_SECRET"), body)}}
	})
}

// callback sends chatrelay a platform's signed callback and prints the
// answer.
func callback(path string, body []byte, sign func([]byte) http.Header) error {
	base := os.Getenv("CHATRELAY_URL")
	if base == "" {
		base = "http://localhost:8080"
	}
	req, err := http.NewRequest(http.MethodPost, base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header = sign(body)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	fmt.Printf("POST %s → %s %s\n", path, resp.Status, answer)
	return nil
}

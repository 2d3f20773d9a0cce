package server_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/platformtest"
	"github.com/chatrelay/chatrelay/server"
)

// withFallbacks gives the support channel and the welcome chatbot their
// fallback templates.
func withFallbacks(channel, bot *server.FallbackTemplate) option {
	return func(c *server.Config) {
		for i := range c.Channels {
			if c.Channels[i].Name == "support" {
				c.Channels[i].FallbackTemplate = channel
			}
		}
		for i := range c.Chatbots {
			if c.Chatbots[i].Name == "welcome" {
				c.Chatbots[i].FallbackTemplate = bot
			}
		}
	}
}

var (
	orderUpdate = &server.FallbackTemplate{Name: "order_update", Language: "en_US",
		Parameters: []string{"{{contact.name}}", "{{ message }}", "{{session.order}}"}}
	welcomeBack = &server.FallbackTemplate{Name: "welcome_back", Language: "en", Parameters: []string{"{{contact.name}}"}}
)

// onEachBackendWith is onEachBackend with more server options.
func onEachBackendWith(t *testing.T, opts []option, fn func(t *testing.T, d *deployment, p *platforms)) {
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		p := newPlatforms(t)
		ts := start(t, nil, nil, append([]option{p.option()}, opts...)...)
		fn(t, &deployment{a: ts, b: ts}, p)
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		p := newPlatforms(t)
		cl := startClusterWith(t, 2, clusterOptions{server: append([]option{p.option()}, opts...)})
		fn(t, &deployment{a: cl.replicas[0], b: cl.replicas[1], redis: true}, p)
	})
}

// graphBody is what the Graph API got, as JSON with sorted keys.
func graphBody(t *testing.T, s platformtest.WhatsAppSend) string {
	t.Helper()
	b, err := json.Marshal(s.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Outside the window a post goes as the channel's fallback template, its
// parameters filled from the contact, the message (white space folded, as
// Meta takes it) and the session; inside it, as text. The answer says
// which, over gRPC and REST, on either replica, and history keeps it.
func TestWhatsAppFallbackTemplateOutsideTheWindow(t *testing.T) {
	t.Parallel()
	onEachBackendWith(t, []option{withFallbacks(orderUpdate, nil)}, func(t *testing.T, d *deployment, p *platforms) {
		p.whatsapp.EnforceWindow(d.a.clk.Now)
		p.whatsapp.Approve("order_update", "en_US", 3)
		const customer = "15551240001"
		d.a.whatsAppWebhook(p.whatsapp.Message("wamid.F1", customer, "Where is my order?"))
		sid := d.a.sessionOf("whatsapp", "+"+customer).SessionId
		if _, err := d.a.sessions.UpdateSession(d.a.ctx(), &pb.UpdateSessionRequest{SessionId: sid, Metadata: map[string]string{"order": "A-1001"}}); err != nil {
			t.Fatal(err)
		}
		// The contact's name, as a workflow records it.
		if _, err := d.a.chat.SendChatbotMessage(d.a.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "bot_plain", From: "support",
			To: "+" + customer, ContactMetadata: map[string]string{"name": "Ada"}}); err != nil {
			t.Fatal(err)
		}
		// Late inside the window; the post keeps the session alive.
		d.a.clk.Advance(23 * time.Hour)
		inside := d.b.postFull(&pb.PostMessageRequest{SessionId: sid, Message: "It ships today."})
		if inside.Status != pb.MessageStatus_MESSAGE_STATUS_SENT || inside.SentAs != pb.SentAs_SENT_AS_TEXT || inside.Template != nil {
			t.Fatalf("inside the window: %v, want SENT as TEXT", inside)
		}

		d.a.clk.Advance(2 * time.Hour)
		out := d.b.postFull(&pb.PostMessageRequest{SessionId: sid, Message: "Your order\n\nhas   shipped."})
		want := &pb.Template{Name: "order_update", Language: "en_US", Parameters: []string{"Ada", "Your order has shipped.", "A-1001"}}
		if out.Status != pb.MessageStatus_MESSAGE_STATUS_SENT || out.SentAs != pb.SentAs_SENT_AS_TEMPLATE ||
			out.Template.String() != want.String() || out.PlatformMessageId == "" {
			t.Fatalf("outside the window: %v, want SENT as the fallback template %v", out, want)
		}
		sends := p.whatsapp.Sends()
		last := sends[len(sends)-1]
		wantBody := `{"messaging_product":"whatsapp","recipient_type":"individual","template":{"components":[{"parameters":[` +
			`{"text":"Ada","type":"text"},{"text":"Your order has shipped.","type":"text"},{"text":"A-1001","type":"text"}],"type":"body"}],` +
			`"language":{"code":"en_US"},"name":"order_update"},"to":"15551240001","type":"template"}`
		if got := graphBody(t, last); got != wantBody || last.ID != out.PlatformMessageId {
			t.Fatalf("the Graph API got %s\nwant %s", got, wantBody)
		}

		rr := d.a.rest("POST", "/v1/sessions/"+sid+"/messages", map[string]any{"message": "Delivered, too."})
		m := rr.json(t)
		if rr.code != 200 || str(m, "sent_as") != "SENT_AS_TEMPLATE" || str(m, "template", "name") != "order_update" ||
			!slices.Equal(anyStrings(path(m, "template", "parameters")), []string{"Ada", "Delivered, too.", "A-1001"}) {
			t.Fatalf("over REST: %d %s", rr.code, rr.body)
		}
		h := d.a.history(sid)
		if tpl := h[len(h)-2].Template; tpl.String() != want.String() || h[len(h)-2].Text != "Your order\n\nhas   shipped." {
			t.Fatalf("history keeps %v with text %q", tpl, h[len(h)-2].Text)
		}
	})
}

func anyStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, len(l))
	for i, e := range l {
		out[i], _ = e.(string)
	}
	return out
}

// A template named on the request always goes as that template, inside
// the window or outside it, for a post and for a chatbot's greeting to a
// customer who never wrote; on Slack it is ignored and the text goes.
func TestExplicitTemplateIsAlwaysSentAsATemplate(t *testing.T) {
	t.Parallel()
	onEachBackend(t, func(t *testing.T, d *deployment, p *platforms) {
		p.whatsapp.EnforceWindow(d.a.clk.Now)
		p.whatsapp.Approve("report_ready", "en", 1)
		tpl := &pb.Template{Name: "report_ready", Language: "en", Parameters: []string{"Q3"}}
		greet, err := d.a.chat.SendChatbotMessage(d.a.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "support",
			To: "+15551240002", Template: tpl})
		if err != nil {
			t.Fatal(err)
		}
		if greet.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SENT || greet.SentAs != pb.SentAs_SENT_AS_TEMPLATE ||
			greet.GreetingStatus != pb.MessageStatus_MESSAGE_STATUS_SENT || greet.Template.String() != tpl.String() {
			t.Fatalf("a greeting with a template to a customer who never wrote: %v", greet)
		}
		d.a.whatsAppWebhook(p.whatsapp.Message("wamid.E1", "15551240002", "thanks"))
		inside := d.b.postFull(&pb.PostMessageRequest{SessionId: greet.SessionId, Message: "Your Q3 report is ready", Template: tpl})
		d.a.clk.Advance(23 * time.Hour)
		late := d.a.postFull(&pb.PostMessageRequest{SessionId: greet.SessionId, Message: "Your Q3 report is ready", Template: tpl})
		d.a.clk.Advance(2 * time.Hour) // past the window; the post kept the session alive
		rr := d.b.rest("POST", "/v1/sessions/"+greet.SessionId+"/messages", map[string]any{"message": "Your Q3 report is ready",
			"template": map[string]any{"name": "report_ready", "language": "en", "parameters": []string{"Q3"}}})
		if inside.SentAs != pb.SentAs_SENT_AS_TEMPLATE || inside.Status != pb.MessageStatus_MESSAGE_STATUS_SENT || late.SentAs != pb.SentAs_SENT_AS_TEMPLATE ||
			rr.code != 200 || str(rr.json(t), "sent_as") != "SENT_AS_TEMPLATE" || str(rr.json(t), "status") != "MESSAGE_STATUS_SENT" {
			t.Fatalf("inside: %v; outside over REST: %d %s", inside, rr.code, rr.body)
		}
		sends := p.whatsapp.Sends()
		if len(sends) != 4 {
			t.Fatalf("%d sends, want 4", len(sends))
		}
		for _, s := range sends {
			if s.Template == nil || s.Template.Name != "report_ready" || s.Template.Language != "en" || !slices.Equal(s.Template.Parameters, []string{"Q3"}) || s.Text != "" {
				t.Fatalf("Meta got %+v, want the template", s)
			}
		}
		// Slack has no templates: the text goes.
		d.a.slackEvent(platformtest.SlackEvent("EvT1", slackChan, "U0TPL", "hi", nil))
		slackSes := d.a.sessionOf("slack", "U0TPL")
		sl := d.b.postFull(&pb.PostMessageRequest{SessionId: slackSes.SessionId, Message: "plain text", Template: tpl})
		if sl.SentAs != pb.SentAs_SENT_AS_TEXT || sl.Template != nil || p.slack.Posts()[0].Text != "plain text" {
			t.Fatalf("Slack post with a template: %v", sl)
		}
	})
}

// A chatbot's greeting outside the window goes as the chatbot's fallback
// template before the channel's; with neither, it fails without a call.
func TestChatbotFallbackTemplate(t *testing.T) {
	t.Parallel()
	onEachBackendWith(t, []option{withFallbacks(orderUpdate, welcomeBack)}, func(t *testing.T, d *deployment, p *platforms) {
		p.whatsapp.EnforceWindow(d.a.clk.Now)
		p.whatsapp.Approve("welcome_back", "en", 1)
		r, err := d.b.chat.SendChatbotMessage(d.b.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "support",
			To: "+15551240003", ContactMetadata: map[string]string{"name": "Grace"}})
		if err != nil {
			t.Fatal(err)
		}
		want := &pb.Template{Name: "welcome_back", Language: "en", Parameters: []string{"Grace"}}
		if r.Status != pb.ChatbotMessageStatus_CHATBOT_MESSAGE_STATUS_SENT || r.SentAs != pb.SentAs_SENT_AS_TEMPLATE || r.Template.String() != want.String() {
			t.Fatalf("greeting: %v, want the chatbot's template %v", r, want)
		}
		if s := p.whatsapp.Sends(); len(s) != 1 || s[0].Template == nil || s[0].Template.Name != "welcome_back" || s[0].ID == "" {
			t.Fatalf("Meta got %+v", s)
		}
	})
}

// Every field of a template has a limit, checked before anything is
// stored, over gRPC and REST; a fallback template is checked when the
// server starts.
func TestTemplateLimits(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option())
	ts.whatsAppWebhook(platformtest.WhatsAppMessage(waNumber, "wamid.L1", "15551240004", "hi", ts.clk.Now()))
	sid := ts.sessionOf("whatsapp", "+15551240004").SessionId
	params := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "p"
		}
		return out
	}
	for _, c := range []struct {
		name  string
		tpl   *pb.Template
		field string
	}{
		{"no name", &pb.Template{Language: "en"}, "template.name"},
		{"a name past 512 bytes", &pb.Template{Name: strings.Repeat("a", 513), Language: "en"}, "template.name"},
		{"a name with capitals", &pb.Template{Name: "Order_Update", Language: "en"}, "template.name"},
		{"no language", &pb.Template{Name: "x"}, "template.language"},
		{"a language that is no code", &pb.Template{Name: "x", Language: "english"}, "template.language"},
		{"a language past its form", &pb.Template{Name: "x", Language: "en_USAAA"}, "template.language"},
		{"33 parameters", &pb.Template{Name: "x", Language: "en", Parameters: params(33)}, "template.parameters"},
		{"an empty parameter", &pb.Template{Name: "x", Language: "en", Parameters: []string{"a", ""}}, "template.parameters[1]"},
		{"a parameter past 1 KiB", &pb.Template{Name: "x", Language: "en", Parameters: []string{strings.Repeat("é", 513)}}, "template.parameters[0]"},
		{"a new line", &pb.Template{Name: "x", Language: "en", Parameters: []string{"a\nb"}}, "template.parameters[0]"},
		{"five spaces", &pb.Template{Name: "x", Language: "en", Parameters: []string{"a     b"}}, "template.parameters[0]"},
	} {
		_, err := ts.chat.PostMessage(ts.ctx(), &pb.PostMessageRequest{SessionId: sid, Message: "m", Template: c.tpl})
		wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", c.field)
		_, err = ts.chat.SendChatbotMessage(ts.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "support", To: "+15551240004", Template: c.tpl})
		wantStatus(t, err, codes.InvalidArgument, "INVALID_ARGUMENT", c.field)
	}
	// At the limits, accepted (and refused by Meta, which knows no such template).
	ok := &pb.Template{Name: strings.Repeat("a", 512), Language: "zh_HK", Parameters: append(params(31), strings.Repeat("é", 512))}
	if r := ts.postFull(&pb.PostMessageRequest{SessionId: sid, Message: "m", Template: ok}); r.Error.GetCode() != "132001" {
		t.Fatalf("a template at the limits: %v, want Meta's 132001", r)
	}
	wantREST(t, ts.rest("POST", "/v1/sessions/"+sid+"/messages", map[string]any{"message": "m", "template": map[string]any{"name": "X"}}), 400, "INVALID_ARGUMENT")
	if h := ts.history(sid); len(h) != 2 {
		t.Fatalf("refused posts were stored: %d messages", len(h))
	}

	for name, opt := range map[string]option{
		"on a slack channel": func(c *server.Config) {
			c.Channels = append(c.Channels, server.Channel{Name: "ops", Platform: "slack", ID: "C9", FallbackTemplate: welcomeBack})
		},
		"with a bad name":    withFallbacks(&server.FallbackTemplate{Name: "Bad Name", Language: "en"}, nil),
		"with no language":   withFallbacks(nil, &server.FallbackTemplate{Name: "x"}),
		"with a new line":    withFallbacks(&server.FallbackTemplate{Name: "x", Language: "en", Parameters: []string{"{{message}}\n"}}, nil),
		"with 33 parameters": withFallbacks(&server.FallbackTemplate{Name: "x", Language: "en", Parameters: params(33)}, nil),
	} {
		cfg := server.Config{Store: ts.store, Logger: quiet, Channels: []server.Channel{{Name: "support", Platform: "whatsapp", ID: waNumber}},
			Chatbots: []server.Chatbot{{ID: "bot_welcome", Name: "welcome", Greeting: "hi"}}}
		opt(&cfg)
		if _, err := server.New(cfg); err == nil || !strings.Contains(err.Error(), "fallback_template") {
			t.Errorf("a fallback template %s: %v, want a configuration error", name, err)
		}
	}
}

// A fallback parameter filled past its limit is cut to it, at a character.
func TestFallbackParameterIsCutToItsLimit(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option(), withFallbacks(&server.FallbackTemplate{Name: "note", Language: "en", Parameters: []string{"{{message}}"}}, nil))
	p.whatsapp.Approve("note", "en", 1)
	ses, err := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{Channel: "support", User: "+15551240005"})
	if err != nil {
		t.Fatal(err)
	}
	r := ts.postFull(&pb.PostMessageRequest{SessionId: ses.Session.SessionId, Message: strings.Repeat("é", 600)})
	if got := r.Template.GetParameters(); len(got) != 1 || got[0] != strings.Repeat("é", 512) || r.Status != pb.MessageStatus_MESSAGE_STATUS_SENT {
		t.Fatalf("answer %v", r)
	}
}

// A chatbot that runs on a webhook talks on WhatsApp within the window
// rules too: its greeting to a customer who never wrote goes as its
// fallback template; its reply to the customer's message, inside the
// window, as text.
func TestRunningChatbotOnWhatsApp(t *testing.T) {
	p := newPlatforms(t)
	b := newEchoBot(t)
	withEchoFallback := func(c *server.Config) {
		for i := range c.Chatbots {
			if c.Chatbots[i].ID == "bot_echo" {
				c.Chatbots[i].FallbackTemplate = welcomeBack
			}
		}
	}
	ts := start(t, nil, nil, p.option(), b.option(), withEchoFallback)
	p.whatsapp.EnforceWindow(ts.clk.Now)
	p.whatsapp.Approve("welcome_back", "en", 1)
	r, err := ts.chat.SendChatbotMessage(ts.ctx(), &pb.SendChatbotMessageRequest{Chatbot: "echo", From: "support", To: "+15551260001",
		ContactMetadata: map[string]string{"name": "Ada"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.SentAs != pb.SentAs_SENT_AS_TEMPLATE || r.Template.GetName() != "welcome_back" || r.GreetingStatus != pb.MessageStatus_MESSAGE_STATUS_SENT {
		t.Fatalf("greeting %v", r)
	}
	ts.whatsAppWebhook(p.whatsapp.Message("wamid.B1", "15551260001", "hello bot"))
	waitFor(t, "the bot's reply to reach Meta", func() bool { return len(p.whatsapp.Sends()) == 2 })
	if s := p.whatsapp.Sends()[1]; s.Text != "echo: hello bot" || s.Template != nil || s.ID == "" {
		t.Fatalf("the bot's reply went as %+v, want text inside the window", s)
	}
}

// A fallback whose placeholder names metadata the contact lacks would send
// Meta an empty parameter, which it refuses: the message fails at once with
// its own code, and Meta is not called.
func TestFallbackWithMissingMetadataIsRefusedBeforeMeta(t *testing.T) {
	p := newPlatforms(t)
	ts := start(t, nil, nil, p.option(), withFallbacks(&server.FallbackTemplate{Name: "note", Language: "en",
		Parameters: []string{"{{contact.name}}", "{{message}}"}}, nil))
	p.whatsapp.Approve("note", "en", 2)
	ses, err := ts.sessions.CreateSession(ts.ctx(), &pb.CreateSessionRequest{Channel: "support", User: "+15551240006"})
	if err != nil {
		t.Fatal(err)
	}
	r := ts.postFull(&pb.PostMessageRequest{SessionId: ses.Session.SessionId, Message: "Your order shipped"})
	if r.Status != pb.MessageStatus_MESSAGE_STATUS_FAILED || r.Error.GetCode() != "template_parameter_empty" ||
		!strings.Contains(r.Error.GetMessage(), "{{contact.name}}") {
		t.Fatalf("answer %v; want FAILED template_parameter_empty naming the placeholder", r)
	}
	if n := len(p.whatsapp.Sends()); n != 0 {
		t.Fatalf("Meta was called %d times", n)
	}
}

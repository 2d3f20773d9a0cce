package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/config"
	"github.com/chatrelay/chatrelay/server"
)

func load(t *testing.T, yaml string, env map[string]string) (*config.File, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "chatrelay.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return config.Load(path, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
}

// Every limit is configurable by its documented name; the ones a file
// leaves out keep their defaults.
func TestEveryLimitIsConfigurable(t *testing.T) {
	f, err := load(t, `
limits:
  message_bytes: 1
  id_bytes: 2
  metadata_entries: 3
  metadata_key_bytes: 4
  metadata_value_bytes: 5
  keyword_bytes: 6
  regex_instructions: 7
  raw_bytes: 8
  raw_depth: 9
  max_timeout: 10m
  request_bytes: 11
  header_bytes: 12
  body_timeout: 13s
  pending_listeners: 14
  streams: 15
  failed_auths_per_minute: 16
  page_bytes: 17
  template_name_bytes: 18
  template_parameters: 19
  template_parameter_bytes: 20
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := server.Limits{MessageBytes: 1, IDBytes: 2, MetadataEntries: 3, MetadataKeyBytes: 4, MetadataValueBytes: 5,
		KeywordBytes: 6, RegexInstructions: 7, RawBytes: 8, RawDepth: 9, MaxTimeout: 10 * time.Minute, RequestBytes: 11,
		HeaderBytes: 12, BodyTimeout: 13 * time.Second, PendingListeners: 14, Streams: 15, FailedAuthsPerMinute: 16, PageBytes: 17,
		TemplateNameBytes: 18, TemplateParameters: 19, TemplateParameterBytes: 20}
	if f.Limits != want {
		t.Fatalf("limits %+v\nwant   %+v", f.Limits, want)
	}
	f, err = load(t, "limits:\n  streams: 5\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	want = server.DefaultLimits()
	want.Streams = 5
	if f.Limits != want {
		t.Fatalf("one limit set: %+v, want the defaults but streams", f.Limits)
	}
}

// Fallback templates are read from a channel and a chatbot.
func TestFallbackTemplatesAreRead(t *testing.T) {
	f, err := load(t, `
channels:
  - name: support
    platform: whatsapp
    id: "15550001111"
    fallback_template: {name: chat_update, language: en, parameters: ["{{message}}"]}
chatbots:
  - id: bot_welcome
    greeting: hi
    fallback_template:
      name: welcome_intro
      language: en_US
      parameters: ["{{contact.name}}", "{{session.topic}}"]
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch, bot := f.Channels[0].FallbackTemplate, f.Chatbots[0].FallbackTemplate
	if ch == nil || ch.Name != "chat_update" || ch.Language != "en" || len(ch.Parameters) != 1 || ch.Parameters[0] != "{{message}}" ||
		bot == nil || bot.Name != "welcome_intro" || bot.Language != "en_US" || len(bot.Parameters) != 2 {
		t.Fatalf("channel %+v, chatbot %+v", ch, bot)
	}
}

// An empty file, or one of comments only, is the defaults.
func TestAnEmptyFileIsTheDefaults(t *testing.T) {
	for _, body := range []string{"", "\n", "# nothing here\n"} {
		f, err := load(t, body, nil)
		if err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		if f.Limits != server.DefaultLimits() || len(f.Channels) != 0 {
			t.Fatalf("%q: %+v", body, f)
		}
	}
}

// Platform accounts' secrets come from the environment only; a missing
// one is named by its variable, and no secret appears in any error.
func TestPlatformSecretsComeFromTheEnvironment(t *testing.T) {
	const yaml = `
slack:
  - {name: acme, tenant: acme, bot_token_env: SLACK_TOKEN, signing_secret_env: SLACK_SECRET}
whatsapp:
  - {name: support, phone_number_id: "106540352242922", access_token_env: WA_TOKEN, app_secret_env: WA_SECRET, verify_token_env: WA_VERIFY}
`
	env := map[string]string{"SLACK_TOKEN": "xoxb-secret-1", "SLACK_SECRET": "signing-secret-2", "WA_TOKEN": "wa-secret-3",
		"WA_SECRET": "app-secret-4", "WA_VERIFY": "verify-5"}
	f, err := load(t, yaml, env)
	if err != nil {
		t.Fatal(err)
	}
	accounts, err := f.Adapters(nil, nil)
	if err != nil || len(accounts) != 2 {
		t.Fatalf("adapters: %v, %v", accounts, err)
	}
	if a := accounts[0]; a.Platform() != "slack" || a.Name() != "acme" || a.Tenant() != "acme" {
		t.Fatalf("slack account %s/%s of %s", a.Platform(), a.Name(), a.Tenant())
	}
	if a := accounts[1]; a.Platform() != "whatsapp" || a.Tenant() != "default" || !a.Delivers("106540352242922") || a.Delivers("1") {
		t.Fatalf("whatsapp account %s/%s of %s", a.Platform(), a.Name(), a.Tenant())
	}
	delete(env, "WA_SECRET")
	_, err = load(t, yaml, env)
	if err == nil || !strings.Contains(err.Error(), "WA_SECRET is not set") {
		t.Fatalf("a missing secret: %v", err)
	}
	for _, secret := range []string{"xoxb-secret-1", "signing-secret-2", "wa-secret-3", "verify-5"} {
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("the error shows a secret: %v", err)
		}
	}
	if _, err := load(t, "slack:\n  - {name: x, bot_token: xoxb-in-the-file}\n", env); err == nil {
		t.Fatal("a token written in the file was accepted")
	}
}

func TestPlatformAccountsAreChecked(t *testing.T) {
	env := map[string]string{"T": "t", "S": "s"}
	for name, yaml := range map[string]string{
		"two Slack accounts for one tenant": `
slack:
  - {name: a, bot_token_env: T, signing_secret_env: S}
  - {name: b, bot_token_env: T, signing_secret_env: S}`,
		"a phone number id that is not digits": `
whatsapp:
  - {name: a, phone_number_id: "+1555", access_token_env: T, app_secret_env: S, verify_token_env: T}`,
		"one number twice": `
whatsapp:
  - {name: a, phone_number_id: "1", access_token_env: T, app_secret_env: S, verify_token_env: T}
  - {name: b, phone_number_id: "1", access_token_env: T, app_secret_env: S, verify_token_env: T}`,
		"a name twice": `
whatsapp:
  - {name: a, phone_number_id: "1", access_token_env: T, app_secret_env: S, verify_token_env: T}
  - {name: a, phone_number_id: "2", access_token_env: T, app_secret_env: S, verify_token_env: T}`,
	} {
		f, err := load(t, yaml, env)
		if err == nil {
			_, err = f.Adapters(nil, nil)
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A webhook integration and a chatbot's webhook take their secrets from the
// environment; a secret that is not whsec_<base64> is refused without
// being shown.
func TestWebhookSecretsComeFromTheEnvironment(t *testing.T) {
	const yaml = `
chatbots:
  - id: bot_echo
    greeting: hi
    webhook: {url: "http://127.0.0.1:9810/", secret_env: BOT_SECRET}
webhooks:
  - name: crm
    url: https://crm.example/chat-events
    secret_env: CRM_SECRET
`
	if _, err := load(t, yaml, map[string]string{"CRM_SECRET": "whsec_Y3JtLXdlYmhvb2stc2VjcmV0LWZvci10ZXN0cw=="}); err == nil ||
		!strings.Contains(err.Error(), "BOT_SECRET") {
		t.Fatalf("a missing chatbot secret: %v", err)
	}
	f, err := load(t, yaml, map[string]string{"CRM_SECRET": "not-whsec-but-secret", "BOT_SECRET": "whsec_ZWNoby1ib3Qtc2VjcmV0LWZvci10aGUtdGVzdHMh"})
	if err != nil {
		t.Fatal(err)
	}
	if f.Chatbots[0].Webhook.Secret != "whsec_ZWNoby1ib3Qtc2VjcmV0LWZvci10aGUtdGVzdHMh" {
		t.Fatalf("the chatbot's secret was not resolved")
	}
	if _, err := f.Adapters(nil, nil); err == nil || strings.Contains(err.Error(), "not-whsec-but-secret") || !strings.Contains(err.Error(), "crm") {
		t.Fatalf("a malformed secret: %v", err)
	}
}

// The widget's section: every setting by its documented name, and its
// secret from the environment variable secret_env names.
func TestWidgetIsConfigurableWithItsSecretFromTheEnvironment(t *testing.T) {
	f, err := load(t, `
widget:
  secret_env: WIDGET_SECRET
  allowed_origins: ["https://shop.example", "http://localhost:3000"]
  token_ttl: 30m
  max_token_ttl: 2h
  connections_per_session: 3
  heartbeat: 20s
`, map[string]string{"WIDGET_SECRET": "a-secret-of-thirty-two-bytes-at-least"})
	if err != nil {
		t.Fatal(err)
	}
	w := f.Widget
	if w.Secret != "a-secret-of-thirty-two-bytes-at-least" || strings.Join(w.AllowedOrigins, " ") != "https://shop.example http://localhost:3000" ||
		w.TokenTTL != 30*time.Minute || w.MaxTokenTTL != 2*time.Hour || w.ConnectionsPerSession != 3 || w.Heartbeat != 20*time.Second {
		t.Fatalf("widget %+v", w)
	}
	if _, err := load(t, "widget:\n  secret_env: WIDGET_SECRET\n", nil); err == nil || !strings.Contains(err.Error(), "WIDGET_SECRET") {
		t.Fatalf("an unset secret_env: %v", err)
	}
	if f, err := load(t, "", nil); err != nil || f.Widget.Secret != "" {
		t.Fatalf("no widget section: %+v, %v", f.Widget, err)
	}
}

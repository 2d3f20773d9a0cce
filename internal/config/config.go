// Package config reads chatrelay's optional YAML configuration file:
// channels, chatbots (and their webhooks), API keys, platform accounts
// (Slack, WhatsApp, generic webhooks), limits. Secrets are never
// written in the file: each is named by the environment variable that holds
// it (a `*_env` field), resolved when the file is loaded, and never logged.
// cmd/chatrelay turns a File into the server's, the store's and the
// adapters' configurations.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/adapters/slack"
	"github.com/chatrelay/chatrelay/adapters/webhook"
	"github.com/chatrelay/chatrelay/adapters/whatsapp"
	"github.com/chatrelay/chatrelay/server"
)

// File is the configuration file.
type File struct {
	Channels []server.Channel `yaml:"channels"`
	Chatbots []server.Chatbot `yaml:"chatbots"`
	APIKeys  []server.APIKey  `yaml:"api_keys"`
	// TrustedProxies: see server.Config.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Slack and WhatsApp are the platform accounts (docs/design.md §9).
	Slack    []Slack    `yaml:"slack"`
	WhatsApp []WhatsApp `yaml:"whatsapp"`
	Webhooks []Webhook  `yaml:"webhooks"`
	// ResumeWindow and DeliveryTimeout: see server.Config.
	ResumeWindow    time.Duration `yaml:"resume_window"`
	DeliveryTimeout time.Duration `yaml:"delivery_timeout"`
	// SessionTTL and HistoryLimit configure the store.
	SessionTTL   time.Duration `yaml:"session_ttl"`
	HistoryLimit int           `yaml:"history_limit"`
	// Limits override server.DefaultLimits field by field.
	Limits server.Limits `yaml:"limits"`
	// Widget configures the web widget (docs/design.md §12); its secret
	// comes from widget.secret_env.
	Widget server.Widget `yaml:"widget"`
}

// Slack is a Slack app installed in a workspace: at most one per tenant.
type Slack struct {
	Name             string `yaml:"name"`
	Tenant           string `yaml:"tenant"`
	BotTokenEnv      string `yaml:"bot_token_env"`
	SigningSecretEnv string `yaml:"signing_secret_env"`
	APIURL           string `yaml:"api_url"`

	botToken, signingSecret string
}

// WhatsApp is a WhatsApp business phone number.
type WhatsApp struct {
	Name           string `yaml:"name"`
	Tenant         string `yaml:"tenant"`
	PhoneNumberID  string `yaml:"phone_number_id"`
	AccessTokenEnv string `yaml:"access_token_env"`
	AppSecretEnv   string `yaml:"app_secret_env"`
	VerifyTokenEnv string `yaml:"verify_token_env"`
	APIURL         string `yaml:"api_url"`

	accessToken, appSecret, verifyToken string
}

// Webhook is a generic integration on the Standard Webhooks scheme.
type Webhook struct {
	Name      string `yaml:"name"`
	Tenant    string `yaml:"tenant"`
	URL       string `yaml:"url"`
	SecretEnv string `yaml:"secret_env"`

	secret string
}

// Default is the configuration without a file.
func Default() *File { return &File{Limits: server.DefaultLimits()} }

// Load reads the file at path. Unknown fields are errors, so a typo cannot
// silently drop a setting; an empty file is the defaults. Secrets are
// resolved through lookupEnv (os.LookupEnv in main).
func Load(path string, lookupEnv func(string) (string, bool)) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	// What the file leaves out keeps its default: the decoder only sets
	// the fields it finds.
	f := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	env := &resolver{path: path, lookup: lookupEnv}
	for i := range f.APIKeys {
		f.APIKeys[i].Key = env.secret(fmt.Sprintf("api_keys[%d].key_env", i), f.APIKeys[i].KeyEnv)
	}
	for i := range f.Slack {
		s := &f.Slack[i]
		field := fmt.Sprintf("slack[%d].", i)
		s.botToken = env.secret(field+"bot_token_env", s.BotTokenEnv)
		s.signingSecret = env.secret(field+"signing_secret_env", s.SigningSecretEnv)
	}
	for i := range f.WhatsApp {
		w := &f.WhatsApp[i]
		field := fmt.Sprintf("whatsapp[%d].", i)
		w.accessToken = env.secret(field+"access_token_env", w.AccessTokenEnv)
		w.appSecret = env.secret(field+"app_secret_env", w.AppSecretEnv)
		w.verifyToken = env.secret(field+"verify_token_env", w.VerifyTokenEnv)
	}
	for i := range f.Webhooks {
		f.Webhooks[i].secret = env.secret(fmt.Sprintf("webhooks[%d].secret_env", i), f.Webhooks[i].SecretEnv)
	}
	for i := range f.Chatbots {
		if w := f.Chatbots[i].Webhook; w != nil {
			w.Secret = env.secret(fmt.Sprintf("chatbots[%d].webhook.secret_env", i), w.SecretEnv)
		}
	}
	if f.Widget.SecretEnv != "" {
		f.Widget.Secret = env.secret("widget.secret_env", f.Widget.SecretEnv)
	}
	if env.err != nil {
		return nil, env.err
	}
	return f, nil
}

// resolver reads secrets from the environment, keeping the first failure.
type resolver struct {
	path   string
	lookup func(string) (string, bool)
	err    error
}

func (r *resolver) secret(field, name string) string {
	if r.err != nil {
		return ""
	}
	if name == "" {
		r.err = fmt.Errorf("config file %s: %s is required (secrets are never written in the file)", r.path, field)
		return ""
	}
	v, ok := r.lookup(name)
	if !ok || v == "" {
		r.err = fmt.Errorf("config file %s: %s: environment variable %s is not set", r.path, field, name)
	}
	return v
}

// Adapters builds the platform accounts, checking each. At most one Slack
// account per tenant (a workspace's sessions are found by tenant), and
// names are unique per platform (they are URLs). client, when set, makes
// their API calls (adapters.Client, traced); nil gives each its default.
func (f *File) Adapters(logger *slog.Logger, client *http.Client) ([]adapters.Adapter, error) {
	var out []adapters.Adapter
	slackTenants := map[string]bool{}
	names := map[string]bool{}
	unique := func(platform, name string) error {
		if names[platform+"/"+name] {
			return fmt.Errorf("%s account %q is configured twice", platform, name)
		}
		names[platform+"/"+name] = true
		return nil
	}
	for _, s := range f.Slack {
		a, err := slack.New(slack.Config{Name: s.Name, Tenant: s.Tenant, BotToken: s.botToken, SigningSecret: s.signingSecret,
			APIURL: s.APIURL, Logger: logger, HTTPClient: client})
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if slackTenants[a.Tenant()] {
			return nil, fmt.Errorf("config: slack %s: tenant %q has a Slack account already (one per tenant)", s.Name, a.Tenant())
		}
		slackTenants[a.Tenant()] = true
		if err := unique("slack", s.Name); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		out = append(out, a)
	}
	numbers := map[string]bool{}
	var linked []*whatsapp.Adapter
	for _, w := range f.WhatsApp {
		a, err := whatsapp.New(whatsapp.Config{Name: w.Name, Tenant: w.Tenant, PhoneNumberID: w.PhoneNumberID,
			AccessToken: w.accessToken, AppSecret: w.appSecret, VerifyToken: w.verifyToken, APIURL: w.APIURL, Logger: logger, HTTPClient: client})
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if numbers[w.PhoneNumberID] {
			return nil, fmt.Errorf("config: whatsapp %s: phone number id %s is configured twice", w.Name, w.PhoneNumberID)
		}
		numbers[w.PhoneNumberID] = true
		if err := unique("whatsapp", w.Name); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		out = append(out, a)
		linked = append(linked, a)
	}
	whatsapp.Link(linked...)
	for _, w := range f.Webhooks {
		a, err := webhook.New(webhook.Config{Name: w.Name, Tenant: w.Tenant, URL: w.URL, Secret: w.secret, Logger: logger, HTTPClient: client})
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if err := unique("webhook", w.Name); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		out = append(out, a)
	}
	return out, nil
}

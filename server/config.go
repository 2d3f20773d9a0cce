package server

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/store"
)

// Platforms (docs/design.md §1).
const (
	platformWeb      = "web"
	platformAPI      = "api"
	platformSlack    = "slack"
	platformWhatsApp = "whatsapp"
	platformWebhook  = "webhook"
)

var platforms = map[string]bool{
	platformWeb: true, platformAPI: true, platformSlack: true, platformWhatsApp: true, platformWebhook: true,
}

// Config is everything Run needs. The zero value of each optional field
// takes the default noted.
type Config struct {
	// GRPCAddr and HTTPAddr are where Run listens; default ":9090" and
	// ":8080".
	GRPCAddr string
	HTTPAddr string
	// Store is the backend. Required; whoever made it closes it.
	Store store.Store
	// Clock is the time source for timeouts; default the wall clock. It
	// must be the store's clock.
	Clock clock.Clock
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Channels are named channels; `web` and `api` always exist.
	Channels []Channel
	// Chatbots are the bots SendChatbotMessage can start.
	Chatbots []Chatbot
	// APIKeys, when any, make every RPC but health require one. With none,
	// everything is tenant "default".
	APIKeys []APIKey
	// Limits bound input; default DefaultLimits().
	Limits Limits
	// ResumeWindow is how long a ChatReceive listener without a timeout
	// survives with no stream attached; default 24 h.
	ResumeWindow time.Duration
	// ShutdownTimeout bounds graceful shutdown; default 10 s.
	ShutdownTimeout time.Duration
}

// Channel is a configured channel: a human name for a platform's channel id.
type Channel struct {
	Name     string `yaml:"name"`
	Platform string `yaml:"platform"`
	ID       string `yaml:"id"`
}

// Chatbot is a configured bot.
type Chatbot struct {
	ID   string `yaml:"id"`
	Name string `yaml:"name"`
	// Greeting is the first message; {{contact.KEY}} and {{session.KEY}}
	// are filled from metadata (empty when missing).
	Greeting string `yaml:"greeting"`
}

// APIKey grants a tenant access. Keys are secrets: they are only ever read
// from the environment (KeyEnv) and never logged.
type APIKey struct {
	// Name identifies the key in logs.
	Name   string `yaml:"name"`
	Tenant string `yaml:"tenant"`
	// KeyEnv names the environment variable holding the key.
	KeyEnv string `yaml:"key_env"`
	// Key is the secret, resolved from KeyEnv by LoadFile.
	Key string `yaml:"-"`
	// RatePerSecond and Burst limit calls made with this key; 0 means no
	// limit.
	RatePerSecond float64 `yaml:"rate_per_second"`
	Burst         int     `yaml:"burst"`
}

const defaultTenant = "default"

func (c *Config) setDefaults() error {
	if c.GRPCAddr == "" {
		c.GRPCAddr = ":9090"
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = ":8080"
	}
	if c.Store == nil {
		return errors.New("config: Store is required")
	}
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Limits == (Limits{}) {
		c.Limits = DefaultLimits()
	}
	if err := c.Limits.validate(); err != nil {
		return fmt.Errorf("config: limits: %w", err)
	}
	if c.ResumeWindow == 0 {
		c.ResumeWindow = 24 * time.Hour
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.ResumeWindow < 0 || c.ShutdownTimeout < 0 {
		return errors.New("config: durations must not be negative")
	}
	return nil
}

// directory resolves channel and chatbot names.
type directory struct {
	channelByName map[string]Channel
	channelByID   map[string]Channel
	botByName     map[string]Chatbot
	botByID       map[string]Chatbot
}

func newDirectory(cfg *Config) (*directory, error) {
	d := &directory{
		channelByName: map[string]Channel{},
		channelByID:   map[string]Channel{},
		botByName:     map[string]Chatbot{},
		botByID:       map[string]Chatbot{},
	}
	chk := checker{lim: cfg.Limits}
	builtins := []Channel{{Name: "web", Platform: platformWeb, ID: "web"}, {Name: "api", Platform: platformAPI, ID: "api"}}
	for i, ch := range append(builtins, cfg.Channels...) {
		field := fmt.Sprintf("channels[%d]", i-len(builtins))
		chk.id(field+".name", ch.Name, true)
		chk.id(field+".id", ch.ID, true)
		if !platforms[ch.Platform] {
			chk.add(field+".platform", "must be one of web, api, slack, whatsapp, webhook")
		}
		if i >= len(builtins) {
			if _, dup := d.channelByName[ch.Name]; dup {
				chk.add(field+".name", "%q is configured twice (web and api are built in)", ch.Name)
			}
			if prev, dup := d.channelByID[ch.ID]; dup && prev.Platform != ch.Platform {
				chk.add(field+".id", "%q is already the id of a %s channel", ch.ID, prev.Platform)
			}
		}
		d.channelByName[ch.Name] = ch
		d.channelByID[ch.ID] = ch
	}
	for i, b := range cfg.Chatbots {
		field := fmt.Sprintf("chatbots[%d]", i)
		chk.id(field+".id", b.ID, true)
		chk.id(field+".name", b.Name, false)
		chk.text(field+".greeting", b.Greeting, cfg.Limits.MessageBytes, true)
		if _, dup := d.botByID[b.ID]; dup {
			chk.add(field+".id", "%q is configured twice", b.ID)
		}
		if _, dup := d.botByName[b.Name]; dup && b.Name != "" {
			chk.add(field+".name", "%q is configured twice", b.Name)
		}
		d.botByID[b.ID] = b
		if b.Name != "" {
			d.botByName[b.Name] = b
		}
	}
	if err := chk.err(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return d, nil
}

// chatbot finds a bot by name, then by id.
func (d *directory) chatbot(v string) (Chatbot, bool) {
	if b, ok := d.botByName[v]; ok {
		return b, true
	}
	b, ok := d.botByID[v]
	return b, ok
}

// channel resolves where a session lives from an optional platform and a
// channel name or id. A configured name pins both; otherwise platform is
// needed, and web and api default to their built-in channel.
func (d *directory) channel(c *checker, platformField, platform, channelField, channel string) (string, string) {
	if platform != "" && !platforms[platform] {
		c.add(platformField, "must be one of web, api, slack, whatsapp, webhook")
		return "", ""
	}
	if ch, ok := d.channelByName[channel]; ok {
		if platform != "" && platform != ch.Platform {
			c.add(channelField, "%q is a %s channel, not %s", channel, ch.Platform, platform)
		}
		return ch.Platform, ch.ID
	}
	if platform == "" {
		if ch, ok := d.channelByID[channel]; ok {
			return ch.Platform, ch.ID
		}
		if channel != "" {
			c.add(channelField, "unknown channel %q: name a configured channel, or give the platform", channel)
			return "", ""
		}
		platform = platformAPI
	}
	if channel == "" {
		if platform != platformWeb && platform != platformAPI {
			c.add(channelField, "is required on %s", platform)
			return "", ""
		}
		channel = platform
	}
	c.id(channelField, channel, true)
	return platform, channel
}

// File is the optional YAML configuration file.
type File struct {
	Channels []Channel `yaml:"channels"`
	Chatbots []Chatbot `yaml:"chatbots"`
	APIKeys  []APIKey  `yaml:"api_keys"`
	// ResumeWindow: see Config.ResumeWindow.
	ResumeWindow time.Duration `yaml:"resume_window"`
	// SessionTTL and HistoryLimit configure the store.
	SessionTTL   time.Duration `yaml:"session_ttl"`
	HistoryLimit int           `yaml:"history_limit"`
	// Limits override DefaultLimits field by field; nil means none.
	Limits *Limits `yaml:"limits"`
}

// LimitsOrDefault returns DefaultLimits with the file's overrides applied.
func (f *File) LimitsOrDefault() Limits {
	if f.Limits == nil {
		return DefaultLimits()
	}
	return *f.Limits
}

// LoadFile reads a YAML configuration file. Unknown fields are errors, so a
// typo cannot silently drop a setting. API keys are resolved through
// lookupEnv (os.LookupEnv in main), never read from the file itself.
func LoadFile(path string, lookupEnv func(string) (string, bool)) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	// Limits the file leaves out keep their defaults: the decoder only
	// sets the fields it finds.
	defaults := DefaultLimits()
	f := File{Limits: &defaults}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	for i := range f.APIKeys {
		k := &f.APIKeys[i]
		if k.KeyEnv == "" {
			return nil, fmt.Errorf("config file %s: api_keys[%d]: key_env is required (keys are never written in the file)", path, i)
		}
		v, ok := lookupEnv(k.KeyEnv)
		if !ok || v == "" {
			return nil, fmt.Errorf("config file %s: api_keys[%d]: environment variable %s is not set", path, i, k.KeyEnv)
		}
		k.Key = v
	}
	return &f, nil
}

package server

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/chatrelay/chatrelay/adapters"
	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/store"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
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
	// TrustedProxies are the addresses (CIDRs, or single IPs) of the
	// proxies in front of the server, whose X-Forwarded-For entries name
	// the client: failed authentications are counted per client address,
	// and behind a proxy every client would otherwise share its address.
	TrustedProxies []string
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
	// Adapters are the platform accounts messages are delivered through
	// (docs/design.md §9); web and api need none.
	Adapters []adapters.Adapter
	// DeliveryTimeout is how long PostMessage waits for the platform
	// before it answers PENDING (delivery goes on); default 10 s.
	DeliveryTimeout time.Duration
	// DeliveryLease is how long a replica has to finish a delivery it
	// started before any other may; default 2 min. It must exceed the
	// longest send.
	DeliveryLease time.Duration
	// DeliveryPoll is how often a replica looks for deliveries to finish
	// or retry; default 1 s.
	DeliveryPoll time.Duration
	// Metrics, when set, is where the server registers its Prometheus
	// metrics, served at /metrics; nil counts nothing.
	Metrics *prometheus.Registry
	// TracerProvider, when set, traces every RPC and HTTP request, and
	// carries the trace to platforms' APIs; nil traces nothing, at no
	// cost.
	TracerProvider trace.TracerProvider
	// Widget configures the web widget (docs/design.md §12).
	Widget Widget
}

// Channel is a configured channel: a human name for a platform's channel
// id, within a tenant (default "default").
type Channel struct {
	Name     string `yaml:"name"`
	Tenant   string `yaml:"tenant"`
	Platform string `yaml:"platform"`
	ID       string `yaml:"id"`
	// FallbackTemplate, on a whatsapp channel, is what a message goes as
	// when the customer's window is closed and the caller named no
	// template (docs/design.md §9).
	FallbackTemplate *FallbackTemplate `yaml:"fallback_template"`
}

// Chatbot is a configured bot.
type Chatbot struct {
	ID   string `yaml:"id"`
	Name string `yaml:"name"`
	// Greeting is the first message; {{contact.KEY}} and {{session.KEY}}
	// are filled from metadata (empty when missing).
	Greeting string `yaml:"greeting"`
	// FallbackTemplate is what the greeting goes as on WhatsApp when the
	// customer's window is closed: before the channel's.
	FallbackTemplate *FallbackTemplate `yaml:"fallback_template"`
	// Webhook, when set, runs the bot: it receives the inbound messages
	// of the sessions the bot runs, and answers for it (docs/design.md
	// §9).
	Webhook *ChatbotWebhook `yaml:"webhook"`
}

// ChatbotWebhook is where a chatbot runs, signed as Standard Webhooks.
type ChatbotWebhook struct {
	URL string `yaml:"url"`
	// SecretEnv names the environment variable holding the secret,
	// whsec_<base64> (several, space-separated, while rotating).
	SecretEnv string `yaml:"secret_env"`
	// Secret is resolved from SecretEnv.
	Secret string `yaml:"-"`
}

// APIKey grants a tenant access. Keys are secrets: they are only ever read
// from the environment (KeyEnv) and never logged.
type APIKey struct {
	// Name identifies the key in logs.
	Name   string `yaml:"name"`
	Tenant string `yaml:"tenant"`
	// KeyEnv names the environment variable holding the key.
	KeyEnv string `yaml:"key_env"`
	// Key is the secret, resolved from KeyEnv.
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
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.DeliveryTimeout, 10*time.Second)
	def(&c.DeliveryLease, 2*time.Minute)
	def(&c.DeliveryPoll, time.Second)
	if c.ResumeWindow < 0 || c.ShutdownTimeout < 0 || c.DeliveryTimeout < 0 || c.DeliveryPoll < 0 {
		return errors.New("config: durations must not be negative")
	}
	if err := c.Widget.setDefaults(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if c.DeliveryLease <= sendTimeout {
		return fmt.Errorf("config: the delivery lease must exceed the longest send (%s)", sendTimeout)
	}
	return nil
}

// directory resolves channel and chatbot names. Channels belong to a
// tenant (the built-in web and api to every one); chatbots to all.
type directory struct {
	channelByName map[tenantKeyed]Channel
	channelByID   map[tenantKeyed]Channel
	botByName     map[string]Chatbot
	botByID       map[string]Chatbot
}

// tenantKeyed is a channel's name or id within its tenant ("" for the
// built-in channels, which every tenant has).
type tenantKeyed struct{ tenant, key string }

func newDirectory(cfg *Config) (*directory, error) {
	d := &directory{
		channelByName: map[tenantKeyed]Channel{},
		channelByID:   map[tenantKeyed]Channel{},
		botByName:     map[string]Chatbot{},
		botByID:       map[string]Chatbot{},
	}
	chk := checker{lim: cfg.Limits}
	for _, ch := range []Channel{{Name: "web", Platform: platformWeb, ID: "web"}, {Name: "api", Platform: platformAPI, ID: "api"}} {
		d.channelByName[tenantKeyed{"", ch.Name}] = ch
		d.channelByID[tenantKeyed{"", ch.ID}] = ch
	}
	for i, ch := range cfg.Channels {
		field := fmt.Sprintf("channels[%d]", i)
		if ch.Tenant == "" {
			ch.Tenant = defaultTenant
		}
		chk.id(field+".name", ch.Name, true)
		chk.id(field+".id", ch.ID, true)
		chk.id(field+".tenant", ch.Tenant, true)
		if !platforms[ch.Platform] {
			chk.add(field+".platform", "must be one of web, api, slack, whatsapp, webhook")
		}
		if ch.FallbackTemplate != nil && ch.Platform != platformWhatsApp {
			chk.add(field+".fallback_template", "is for whatsapp channels: only WhatsApp has templates")
		}
		chk.fallback(field+".fallback_template", ch.FallbackTemplate)
		name, id := tenantKeyed{ch.Tenant, ch.Name}, tenantKeyed{ch.Tenant, ch.ID}
		if _, dup := d.channelByName[name]; dup || ch.Name == "web" || ch.Name == "api" {
			chk.add(field+".name", "%q is configured twice for tenant %s (web and api are built in)", ch.Name, ch.Tenant)
		}
		if prev, dup := d.channelByID[id]; dup && prev.Platform != ch.Platform {
			chk.add(field+".id", "%q is already the id of a %s channel of tenant %s", ch.ID, prev.Platform, ch.Tenant)
		}
		d.channelByName[name] = ch
		d.channelByID[id] = ch
	}
	// A webhook integration's name is its sessions' channel: it is a
	// channel of its tenant, by name and id, unless one is configured so.
	for _, a := range cfg.Adapters {
		if a.Platform() != platformWebhook {
			continue
		}
		ch := Channel{Name: a.Name(), Tenant: a.Tenant(), Platform: platformWebhook, ID: a.Name()}
		name, id := tenantKeyed{ch.Tenant, ch.Name}, tenantKeyed{ch.Tenant, ch.ID}
		if _, taken := d.channelByName[name]; !taken {
			d.channelByName[name] = ch
		}
		if _, taken := d.channelByID[id]; !taken {
			d.channelByID[id] = ch
		}
	}
	for i, b := range cfg.Chatbots {
		field := fmt.Sprintf("chatbots[%d]", i)
		chk.id(field+".id", b.ID, true)
		chk.id(field+".name", b.Name, false)
		chk.text(field+".greeting", b.Greeting, cfg.Limits.MessageBytes, true)
		chk.fallback(field+".fallback_template", b.FallbackTemplate)
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

// named finds a tenant's channel by its name.
func (d *directory) named(tenant, name string) (Channel, bool) {
	if ch, ok := d.channelByName[tenantKeyed{"", name}]; ok {
		return ch, true
	}
	ch, ok := d.channelByName[tenantKeyed{tenant, name}]
	return ch, ok
}

// byID finds a tenant's configured channel by its id.
func (d *directory) byID(tenant, id string) (Channel, bool) {
	if ch, ok := d.channelByID[tenantKeyed{"", id}]; ok {
		return ch, true
	}
	ch, ok := d.channelByID[tenantKeyed{tenant, id}]
	return ch, ok
}

// fallback is the fallback template of a tenant's channel by its id, or
// nil.
func (d *directory) fallback(tenant, id string) *FallbackTemplate {
	ch, _ := d.byID(tenant, id)
	return ch.FallbackTemplate
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
func (d *directory) channel(c *checker, tenant, platformField, platform, channelField, channel string) (string, string) {
	if platform != "" && !platforms[platform] {
		c.add(platformField, "must be one of web, api, slack, whatsapp, webhook")
		return "", ""
	}
	if ch, ok := d.named(tenant, channel); ok {
		if platform != "" && platform != ch.Platform {
			c.add(channelField, "%q is a %s channel, not %s", channel, ch.Platform, platform)
		}
		return ch.Platform, ch.ID
	}
	if platform == "" {
		if ch, ok := d.byID(tenant, channel); ok {
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

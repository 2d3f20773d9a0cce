package server

import (
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/chatrelay/chatrelay/store"
)

// Limits bounds every input field and every resource a caller can hold
// (docs/design.md §5). Each is configurable under `limits:` in the
// configuration file, by the YAML name given.
type Limits struct {
	// MessageBytes bounds message texts (UTF-8 bytes). Default 32 KiB.
	MessageBytes int `yaml:"message_bytes"`
	// IDBytes bounds ids, user ids, channel ids and idempotency keys, which
	// must be [A-Za-z0-9_.:@+-]. Default 128.
	IDBytes int `yaml:"id_bytes"`
	// MetadataEntries, MetadataKeyBytes and MetadataValueBytes bound every
	// metadata map. Defaults 64, 64 and 1 KiB.
	MetadataEntries    int `yaml:"metadata_entries"`
	MetadataKeyBytes   int `yaml:"metadata_key_bytes"`
	MetadataValueBytes int `yaml:"metadata_value_bytes"`
	// KeywordBytes bounds keyword filters and regular expressions. Default
	// 256.
	KeywordBytes int `yaml:"keyword_bytes"`
	// RegexInstructions bounds a REGEX keyword filter's compiled program.
	// Matching costs time in proportion to the program's size times the
	// text's length, for every message a listener sees. Default 100.
	RegexInstructions int `yaml:"regex_instructions"`
	// RawBytes and RawDepth bound an inbound message's raw payload: its
	// size as JSON and how deeply it nests. Defaults 64 KiB and 32.
	RawBytes int `yaml:"raw_bytes"`
	RawDepth int `yaml:"raw_depth"`
	// MaxTimeout bounds ChatReceive timeouts. Default 7 days.
	MaxTimeout time.Duration `yaml:"max_timeout"`
	// RequestBytes bounds a whole request message. Default 1 MiB.
	RequestBytes int `yaml:"request_bytes"`
	// HeaderBytes bounds a request's headers: HTTP headers, and gRPC
	// metadata, which arrive before authentication. Default 64 KiB.
	HeaderBytes int `yaml:"header_bytes"`
	// BodyTimeout bounds how long an HTTP request's body may take to
	// arrive, so a client that trickles it cannot hold a connection for
	// ever. Default 15 s.
	BodyTimeout time.Duration `yaml:"body_timeout"`
	// PendingListeners caps a tenant's pending ChatReceive listeners, on
	// every replica together. Default 100,000.
	PendingListeners int `yaml:"pending_listeners"`
	// Streams caps a tenant's open streams (ChatReceive and WatchSession)
	// on one replica. Default 10,000.
	Streams int `yaml:"streams"`
	// PageBytes bounds a ListMessages or ListSessions page's encoded size,
	// below the 4 MiB a default gRPC client receives: a page holds fewer
	// items than page_size when they would exceed it (at least one).
	// Default 2 MiB.
	PageBytes int `yaml:"page_bytes"`
	// FailedAuthsPerMinute is how many failed authentications a client
	// address may make in a burst, and per minute after it; past it the
	// address is refused with RATE_LIMITED. Default 10.
	FailedAuthsPerMinute int `yaml:"failed_auths_per_minute"`
	// TemplateNameBytes, TemplateParameters and TemplateParameterBytes
	// bound a WhatsApp template: its name, how many body parameters it
	// takes, and each one's size (Meta's limit for a body parameter).
	// Defaults 512, 32 and 1 KiB.
	TemplateNameBytes      int `yaml:"template_name_bytes"`
	TemplateParameters     int `yaml:"template_parameters"`
	TemplateParameterBytes int `yaml:"template_parameter_bytes"`
}

// DefaultLimits are the defaults of docs/design.md §5.
func DefaultLimits() Limits {
	return Limits{
		MessageBytes:         32 << 10,
		IDBytes:              128,
		MetadataEntries:      64,
		MetadataKeyBytes:     64,
		MetadataValueBytes:   1 << 10,
		KeywordBytes:         256,
		RegexInstructions:    100,
		RawBytes:             64 << 10,
		RawDepth:             32,
		MaxTimeout:           7 * 24 * time.Hour,
		RequestBytes:         1 << 20,
		HeaderBytes:          64 << 10,
		BodyTimeout:          15 * time.Second,
		PendingListeners:     100_000,
		Streams:              10_000,
		PageBytes:            2 << 20,
		FailedAuthsPerMinute: 10,

		TemplateNameBytes:      512,
		TemplateParameters:     32,
		TemplateParameterBytes: 1 << 10,
	}
}

func (l Limits) validate() error {
	for name, v := range map[string]int64{
		"message_bytes": int64(l.MessageBytes), "id_bytes": int64(l.IDBytes), "metadata_entries": int64(l.MetadataEntries),
		"metadata_key_bytes": int64(l.MetadataKeyBytes), "metadata_value_bytes": int64(l.MetadataValueBytes),
		"keyword_bytes": int64(l.KeywordBytes), "regex_instructions": int64(l.RegexInstructions),
		"raw_bytes": int64(l.RawBytes), "raw_depth": int64(l.RawDepth), "max_timeout": int64(l.MaxTimeout),
		"request_bytes": int64(l.RequestBytes), "header_bytes": int64(l.HeaderBytes), "body_timeout": int64(l.BodyTimeout),
		"pending_listeners": int64(l.PendingListeners), "streams": int64(l.Streams), "failed_auths_per_minute": int64(l.FailedAuthsPerMinute),
		"page_bytes": int64(l.PageBytes), "template_name_bytes": int64(l.TemplateNameBytes),
		"template_parameters": int64(l.TemplateParameters), "template_parameter_bytes": int64(l.TemplateParameterBytes),
	} {
		if v <= 0 {
			return fmt.Errorf("%s must be positive", name)
		}
	}
	return nil
}

// checker collects field violations so that a client learns of every bad
// field at once.
type checker struct {
	lim Limits
	v   []*errdetails.BadRequest_FieldViolation
}

func (c *checker) add(field, format string, args ...any) {
	c.v = append(c.v, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

func (c *checker) err() error {
	if len(c.v) == 0 {
		return nil
	}
	return &invalidError{violations: c.v}
}

// isID reports whether v is a well-formed id, without saying why not.
func (c *checker) isID(v string) bool {
	if v == "" || len(v) > c.lim.IDBytes {
		return false
	}
	for i := 0; i < len(v); i++ {
		if !idChar(v[i]) {
			return false
		}
	}
	return true
}

func idChar(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' ||
		b == '_' || b == '.' || b == ':' || b == '@' || b == '+' || b == '-'
}

// id checks an identifier: at most IDBytes of [A-Za-z0-9_.:@+-].
func (c *checker) id(field, v string, required bool) {
	if v == "" {
		if required {
			c.add(field, "is required")
		}
		return
	}
	if len(v) > c.lim.IDBytes {
		c.add(field, "is %d bytes; the limit is %d", len(v), c.lim.IDBytes)
		return
	}
	for i := 0; i < len(v); i++ {
		if !idChar(v[i]) {
			c.add(field, "may only contain letters, digits and _.:@+- (found %q at byte %d)", v[i], i)
			return
		}
	}
}

// text checks free text: valid UTF-8, at most max bytes.
func (c *checker) text(field, v string, max int, required bool) {
	switch {
	case v == "" && required:
		c.add(field, "is required")
	case len(v) > max:
		c.add(field, "is %d bytes; the limit is %d", len(v), max)
	case !utf8.ValidString(v):
		c.add(field, "is not valid UTF-8")
	}
}

func (c *checker) metadata(field string, m map[string]string) {
	if len(m) > c.lim.MetadataEntries {
		c.add(field, "has %d entries; the limit is %d", len(m), c.lim.MetadataEntries)
		return
	}
	for k, v := range m {
		switch {
		case k == "":
			c.add(field, "has an empty key")
		case len(k) > c.lim.MetadataKeyBytes:
			c.add(field+"."+truncate(k), "key is %d bytes; the limit is %d", len(k), c.lim.MetadataKeyBytes)
		case !utf8.ValidString(k):
			c.add(field, "has a key that is not valid UTF-8")
		case len(v) > c.lim.MetadataValueBytes:
			c.add(field+"."+k, "value is %d bytes; the limit is %d", len(v), c.lim.MetadataValueBytes)
		case !utf8.ValidString(v):
			c.add(field+"."+k, "value is not valid UTF-8")
		}
	}
}

// metadataKeys checks a list of keys to delete.
func (c *checker) metadataKeys(field string, keys []string) {
	if len(keys) > c.lim.MetadataEntries {
		c.add(field, "has %d entries; the limit is %d", len(keys), c.lim.MetadataEntries)
		return
	}
	for i, k := range keys {
		if k == "" || len(k) > c.lim.MetadataKeyBytes || !utf8.ValidString(k) {
			c.add(fmt.Sprintf("%s[%d]", field, i), "must be a non-empty UTF-8 key of at most %d bytes", c.lim.MetadataKeyBytes)
		}
	}
}

var e164 = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)

// user checks a platform user id; whatsapp users are E.164 numbers.
func (c *checker) user(field, platform, v string, required bool) {
	if platform == platformWhatsApp && v != "" && !e164.MatchString(v) {
		c.add(field, "must be an E.164 phone number such as +15551234567 on whatsapp")
		return
	}
	c.id(field, v, required)
}

// regex checks a regular expression: valid RE2, and no bigger compiled
// than RegexInstructions, since every message a listener sees costs time
// in proportion to that size times the text's length.
func (c *checker) regex(field, v string) {
	n, err := store.RegexInstructions(v)
	switch {
	case err != nil:
		c.add(field, "is not a valid RE2 expression: %v", err)
	case n > c.lim.RegexInstructions:
		c.add(field, "compiles to %d instructions; the limit is %d (use fewer or smaller repetitions)", n, c.lim.RegexInstructions)
	}
}

// duration checks an optional positive Duration of at most MaxTimeout.
func (c *checker) duration(field string, d *durationpb.Duration) {
	if d == nil {
		return
	}
	if err := d.CheckValid(); err != nil {
		c.add(field, "is not a valid duration: %v", err)
		return
	}
	switch v := d.AsDuration(); {
	case v <= 0:
		c.add(field, "must be positive")
	case v > c.lim.MaxTimeout:
		c.add(field, "is %s; the limit is %s", v, c.lim.MaxTimeout)
	}
}

// truncate shortens a key for use in a field path, keeping it valid UTF-8
// (a status detail with invalid UTF-8 could not be marshalled).
func truncate(s string) string {
	if len(s) > 16 {
		s = s[:16] + "…"
	}
	return strings.ToValidUTF8(s, "")
}

// raw checks an inbound message's raw payload and returns it as JSON:
// at most RawDepth levels of objects and arrays, and RawBytes once
// encoded. Stored JSON is decoded with a recursion limit, so a payload
// nested past it could be stored but never read back; refusing it here
// keeps every stored message readable.
func (c *checker) raw(field string, s *structpb.Struct) []byte {
	if s == nil {
		return nil
	}
	if structDepth(s, c.lim.RawDepth) > c.lim.RawDepth {
		c.add(field, "nests more than %d levels of objects and arrays; the limit is %d", c.lim.RawDepth, c.lim.RawDepth)
		return nil
	}
	b, err := protojson.Marshal(s)
	switch {
	case err != nil:
		c.add(field, "cannot be encoded as JSON: %v", err)
		return nil
	case len(b) > c.lim.RawBytes:
		c.add(field, "is %d bytes as JSON; the limit is %d", len(b), c.lim.RawBytes)
		return nil
	}
	return b
}

// structDepth is how many levels of objects and arrays s nests (s itself
// is 1), counted only up to limit+1: a deeper payload costs no more to
// refuse than one just past the limit.
func structDepth(s *structpb.Struct, limit int) int {
	deepest := 1
	for _, v := range s.GetFields() {
		if deepest > limit {
			break
		}
		deepest = max(deepest, 1+valueDepth(v, limit-1))
	}
	return deepest
}

func valueDepth(v *structpb.Value, limit int) int {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StructValue:
		return structDepth(k.StructValue, limit)
	case *structpb.Value_ListValue:
		deepest := 1
		for _, e := range k.ListValue.GetValues() {
			if deepest > limit {
				break
			}
			deepest = max(deepest, 1+valueDepth(e, limit-1))
		}
		return deepest
	}
	return 0
}

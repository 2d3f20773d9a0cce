package server

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Limits bounds every input field (DESIGN §5).
type Limits struct {
	// MessageBytes bounds message texts (UTF-8 bytes). Default 32 KiB.
	MessageBytes int
	// IDBytes bounds ids, user ids, channel ids and idempotency keys, which
	// must be [A-Za-z0-9_.:@+-]. Default 128.
	IDBytes int
	// MetadataEntries, MetadataKeyBytes and MetadataValueBytes bound every
	// metadata map. Defaults 64, 64 and 1 KiB.
	MetadataEntries    int
	MetadataKeyBytes   int
	MetadataValueBytes int
	// KeywordBytes bounds keyword filters and regular expressions. Default
	// 256.
	KeywordBytes int
	// MaxTimeout bounds ChatReceive timeouts. Default 7 days.
	MaxTimeout time.Duration
	// RequestBytes bounds a whole request message. Default 1 MiB.
	RequestBytes int
}

// DefaultLimits are DESIGN §5's defaults.
func DefaultLimits() Limits {
	return Limits{
		MessageBytes:       32 << 10,
		IDBytes:            128,
		MetadataEntries:    64,
		MetadataKeyBytes:   64,
		MetadataValueBytes: 1 << 10,
		KeywordBytes:       256,
		MaxTimeout:         7 * 24 * time.Hour,
		RequestBytes:       1 << 20,
	}
}

func (l Limits) validate() error {
	if l.MessageBytes <= 0 || l.IDBytes <= 0 || l.MetadataEntries <= 0 || l.MetadataKeyBytes <= 0 ||
		l.MetadataValueBytes <= 0 || l.KeywordBytes <= 0 || l.MaxTimeout <= 0 || l.RequestBytes <= 0 {
		return errors.New("every limit must be positive")
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

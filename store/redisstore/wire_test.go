package redisstore

import (
	"reflect"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/store"
)

var suffixTexts = []string{
	"", "shipped", `say "hi" \ there`, "a\nb\rc\td\bE\fF", "\x00\x01\x1f\x7f", "<b>&amp;</b>",
	"emoji 🎉 and ünïcødé", "line\u2028sep\u2029para", "bad \xff utf8 \xc3", "\xe2\x80", "trailing \\",
	strings.Repeat("long text ", 500),
}

// messageSuffix must write what encoding/json writes, byte for byte: the
// history holds both (raw payloads still go through encoding/json), and
// replays compare with what was stored.
func TestMessageSuffixIsEncodingJSON(t *testing.T) {
	for _, text := range suffixTexts {
		for _, m := range []store.Message{
			{Direction: store.Outbound, Text: text, Status: store.StatusDelivered},
			{Direction: store.Inbound, Text: text, FromUser: text, Status: store.StatusReceived},
			{Direction: store.Outbound, Text: text, Status: store.StatusFailed, Error: &store.PlatformError{Code: text, Message: text}},
			{Direction: store.Outbound, Text: text, Status: store.StatusFailed, Error: &store.PlatformError{Code: "only_code"}},
			{Direction: store.Outbound, Text: text, Status: store.StatusFailed, Error: &store.PlatformError{}},
			{Direction: store.Outbound, Text: text, Metadata: map[string]string{"b": text, "a": "1", text: "k", "<": ">"}},
			{Direction: store.Outbound, Text: text, Metadata: map[string]string{}},
		} {
			checkSuffix(t, &m)
		}
	}
}

// A field added to wireBody must be added to messageSuffix too.
func TestMessageSuffixWritesEveryWireField(t *testing.T) {
	if n := reflect.TypeFor[wireBody]().NumField(); n != 8 {
		t.Fatalf("wireBody has %d fields; messageSuffix writes 8 (dir, text, from, st, md, raw, ec, em): teach it the new ones", n)
	}
}

func FuzzMessageSuffix(f *testing.F) {
	for _, s := range suffixTexts {
		f.Add(s, s, s, s)
	}
	f.Fuzz(func(t *testing.T, text, from, key, code string) {
		checkSuffix(t, &store.Message{
			Direction: store.Inbound, Text: text, FromUser: from, Status: store.StatusReceived,
			Metadata: map[string]string{key: text, "z": from}, Error: &store.PlatformError{Code: code, Message: text},
		})
	})
}

func checkSuffix(t *testing.T, m *store.Message) {
	t.Helper()
	got, err := messageSuffix(m)
	if err != nil {
		t.Fatal(err)
	}
	want, err := marshalSuffix(m)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("message %+v:\n got %s\nwant %s", m, got, want)
	}
}

func BenchmarkMessageSuffix(b *testing.B) {
	m := &store.Message{Direction: store.Outbound, Text: "Your order #1234 has shipped & will arrive Tuesday.", Status: store.StatusDelivered}
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			_, _ = messageSuffix(m)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			_, _ = marshalSuffix(m)
		}
	})
}

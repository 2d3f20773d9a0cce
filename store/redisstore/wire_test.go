package redisstore

import (
	"reflect"
	"strings"
	"testing"
	"time"

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
			{Direction: store.Inbound, Text: text, Status: store.StatusReceived, Thread: "1715000000.000100", Error: &store.PlatformError{Code: "c"}},
			{Direction: store.Outbound, Text: text, Status: store.StatusPending, Template: &store.Template{Name: "order_ready", Language: "en_US", Parameters: []string{text, "2"}}},
		} {
			checkSuffix(t, &m)
		}
	}
}

// A field added to wireBody must be added to messageSuffix too.
func TestMessageSuffixWritesEveryWireField(t *testing.T) {
	if n := reflect.TypeFor[wireBody]().NumField(); n != 10 {
		t.Fatalf("wireBody has %d fields; messageSuffix writes 9 (dir, text, from, st, md, raw, ec, em, th) and leaves tpl to encoding/json: teach it the new ones", n)
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

// FuzzStoredRecords: a record read from Redis, however damaged (a
// hand-edited key, a foreign writer, a truncated value), decodes or fails
// with an error, never a panic: one bad record must not take a replica down.
// What messageSuffix writes always decodes back.
func FuzzStoredRecords(f *testing.F) {
	f.Add(`{"id":"msg_1","seq":1,"sid":"ses_1","pf":"api","ch":"api","at":1795297498123,"dir":1,"text":"hi","st":1,"raw":{"a":[1]}}`)
	f.Add(`{"id":"ses_1","tn":"t","st":"1","ex":"1795297498123","seq":"3","md":"{\"a\":\"b\"}"}`)
	f.Add(`{"tn":"t","flt":"{\"u\":\"x\",\"k\":\"yes\",\"m\":2}","oc":"1","msg":"{\"id\":\"msg_1\"}"}`)
	f.Add(`{"m":{"id":"msg_1"},"s":{"id":"ses_1"},"started":true,"matched":["cr_1"]}`)
	f.Add(`{"md":"{","seq":"-1","raw":[`)
	f.Add(`null`)
	now := time.UnixMilli(1795297498123)
	f.Fuzz(func(t *testing.T, raw string) {
		_, _ = decodeMessage(raw)
		_, _ = decodeSession(raw, now)
		_, _ = decodeListener("cr_1", raw)
		_, _ = decodeFilter(raw)
		_, _, _ = decodeIngest(raw, now)
		_, _ = decodeContact(raw, "t", "api", "u")
		_, _ = decodeRecord("session", raw)

		m := &store.Message{Direction: store.Inbound, Text: raw, FromUser: raw, Status: store.StatusReceived,
			Metadata: map[string]string{raw: raw}}
		suffix, err := messageSuffix(m)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeMessage(`{"id":"msg_1","seq":1,"sid":"ses_1","pf":"api","ch":"api","at":1,` + suffix)
		if err != nil {
			t.Fatalf("a message as written does not decode: %v", err)
		}
		if want := string([]rune(raw)); back.Text != want || back.FromUser != want { // each invalid byte as U+FFFD, as encoding/json writes it
			t.Fatalf("text %q came back as %q", raw, back.Text)
		}
	})
}

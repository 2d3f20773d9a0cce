package server_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/server"
)

func loadFile(t *testing.T, yaml string) (*server.File, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "chatrelay.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return server.LoadFile(path, func(string) (string, bool) { return "", false })
}

// Every limit is configurable by its documented name; the ones a file
// leaves out keep their defaults.
func TestConfigFileSetsEveryLimit(t *testing.T) {
	f, err := loadFile(t, `
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
`)
	if err != nil {
		t.Fatal(err)
	}
	want := server.Limits{MessageBytes: 1, IDBytes: 2, MetadataEntries: 3, MetadataKeyBytes: 4, MetadataValueBytes: 5,
		KeywordBytes: 6, RegexInstructions: 7, RawBytes: 8, RawDepth: 9, MaxTimeout: 10 * time.Minute, RequestBytes: 11,
		HeaderBytes: 12, BodyTimeout: 13 * time.Second, PendingListeners: 14, Streams: 15, FailedAuthsPerMinute: 16}
	if got := f.LimitsOrDefault(); got != want {
		t.Fatalf("limits %+v\nwant   %+v", got, want)
	}
	f, err = loadFile(t, "limits:\n  streams: 5\n")
	if err != nil {
		t.Fatal(err)
	}
	want = server.DefaultLimits()
	want.Streams = 5
	if got := f.LimitsOrDefault(); got != want {
		t.Fatalf("one limit set: %+v, want the defaults but streams", got)
	}
}

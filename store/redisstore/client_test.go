package redisstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/store/redisstore"
)

func TestNewClientUnderstandsEachURLForm(t *testing.T) {
	cases := []struct {
		url  string
		want string
	}{
		{"redis://localhost:6379/0", "*redis.Client"},
		{"rediss://user:pw@localhost:6380", "*redis.Client"},
		{"redis://localhost:26379?master_name=mymaster&addr=localhost:26380", "*redis.Client"},
		{"redis://localhost:7000?addr=localhost:7001&addr=localhost:7002", "*redis.ClusterClient"},
		{"redis://localhost:7000?cluster=true", "*redis.ClusterClient"},
	}
	for _, c := range cases {
		cl, err := redisstore.NewClient(c.url)
		if err != nil {
			t.Fatalf("%s: %v", c.url, err)
		}
		got := ""
		switch cl.(type) {
		case *redis.Client:
			got = "*redis.Client"
		case *redis.ClusterClient:
			got = "*redis.ClusterClient"
		}
		if got != c.want {
			t.Errorf("%s: %s, want %s", c.url, got, c.want)
		}
		_ = cl.Close()
	}
	for _, bad := range []string{"http://x", "redis://localhost:6379?nonsense=1", "://"} {
		if _, err := redisstore.NewClient(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// go-redis retries nothing for chatrelay: a script whose connection broke
// may have run, and running it again could repeat a write (a post without
// an idempotency key, twice). storetest.RunFaults runs on these settings.
func TestNewClientRetriesNothing(t *testing.T) {
	for _, url := range []string{"redis://localhost:6379", "redis://localhost:7000?cluster=true", "redis://localhost:26379?master_name=m"} {
		cl, err := redisstore.NewClient(url)
		if err != nil {
			t.Fatal(err)
		}
		retries := 0
		switch c := cl.(type) {
		case *redis.Client:
			retries = c.Options().MaxRetries
		case *redis.ClusterClient:
			retries = c.Options().MaxRetries
		}
		// Set as -1; a Client keeps it as 0 once it has taken its defaults.
		if retries > 0 {
			t.Errorf("%s: MaxRetries %d, want none", url, retries)
		}
		_ = cl.Close()
	}
	if cl, _ := redisstore.NewClient("redis://localhost:6379?max_retries=2"); cl.(*redis.Client).Options().MaxRetries != 2 {
		t.Error("an explicit max_retries was overridden")
	}
}

// go-redis's own messages reach the service's logger, as structured
// warnings.
func TestLogToRoutesGoRedisThroughSlog(t *testing.T) {
	var buf bytes.Buffer
	l := redisstore.LogTo(slog.New(slog.NewJSONHandler(&buf, nil)))
	l.Printf(context.Background(), "redis: discarding bad PubSub connection: %s", "EOF")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("not one JSON record: %q", buf.String())
	}
	if rec["level"] != "WARN" || rec["msg"] != "redis: discarding bad PubSub connection: EOF" || rec["component"] != "go-redis" {
		t.Fatalf("record %v", rec)
	}
}

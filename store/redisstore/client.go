package redisstore

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// NewClient makes a go-redis client from a URL. The forms:
//
//	redis://[user:password@]host:6379[/db]                    one server
//	rediss://…                                                the same over TLS
//	redis://host:26379?master_name=mymaster&addr=host2:26379  Sentinel
//	redis://host:7000?addr=host2:7000&addr=host3:7000         Cluster
//	redis://host:7000?cluster=true                            Cluster, one seed
//
// Other query parameters are go-redis's (dial_timeout, pool_size, …).
// Unless the URL sets them, timeouts are short (dial 1 s, read and write
// 2 s), so that calls fail fast with UNAVAILABLE while Redis is down
// instead of hanging, and go-redis retries nothing: a command whose
// connection broke may have run, and running a script again could repeat
// a write. The error reaches the caller, whose retry with its idempotency
// key is safe. The caller closes the client.
func NewClient(rawURL string) (redis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	q := u.Query()
	explicit := func(name string) bool { return q.Has(name) }
	failFast := func(dial, read, write *time.Duration, retries *int) {
		if !explicit("dial_timeout") {
			*dial = time.Second
		}
		if !explicit("read_timeout") {
			*read = 2 * time.Second
		}
		if !explicit("write_timeout") {
			*write = 2 * time.Second
		}
		if !explicit("max_retries") {
			*retries = -1 // go-redis: -1 is none, 0 its default of 3
		}
	}
	switch {
	case q.Has("master_name"):
		o, err := redis.ParseFailoverURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis sentinel url: %w", err)
		}
		failFast(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries)
		setName(&o.ClientName)
		return redis.NewFailoverClient(o), nil
	case q.Has("cluster") || len(q["addr"]) > 0:
		q.Del("cluster")
		u.RawQuery = q.Encode()
		o, err := redis.ParseClusterURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("redis cluster url: %w", err)
		}
		failFast(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries)
		setName(&o.ClientName)
		return redis.NewClusterClient(o), nil
	}
	o, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	failFast(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries)
	setName(&o.ClientName)
	return redis.NewClient(o), nil
}

// setName names the connections "chatrelay" in CLIENT LIST, unless the URL
// named them.
func setName(name *string) {
	if *name == "" {
		*name = "chatrelay"
	}
}

// LogTo adapts logger for go-redis's own messages (pass it to
// redis.SetLogger): a lost connection, a failover, a pool that cannot
// dial. They are rare, and each is a warning.
func LogTo(logger *slog.Logger) interface {
	Printf(ctx context.Context, format string, v ...any)
} {
	return redisLog{logger}
}

type redisLog struct{ l *slog.Logger }

func (r redisLog) Printf(ctx context.Context, format string, v ...any) {
	r.l.WarnContext(ctx, "redis: "+strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "), "component", "go-redis")
}

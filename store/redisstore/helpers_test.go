package redisstore

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/redistest"
	"github.com/chatrelay/chatrelay/store"
)

// newTestStore opens a Store with o on a private redis-server, closed when
// the test ends, and returns it with its client.
func newTestStore(t *testing.T, o Options) (*Store, *redis.Client) {
	t.Helper()
	c := redistest.Start(t).Client(t)
	s, err := New(c, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, c
}

// openTestSession opens a session of tenant "t" on api/api for user.
func openTestSession(t *testing.T, s *Store, user string) store.Session {
	t.Helper()
	ses, err := s.CreateSession(context.Background(), store.NewSession{Tenant: "t", Platform: "api", Channel: "api", User: user})
	if err != nil {
		t.Fatal(err)
	}
	return ses
}

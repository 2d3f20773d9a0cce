package memory

import (
	"context"
	"time"

	"golang.org/x/time/rate"

	"github.com/chatrelay/chatrelay/store"
)

// limiters are the rate budgets of this process, on the store's clock.
type limiters struct {
	byKey map[string]*rate.Limiter
}

// Take is store.Limiter's Take: a token bucket per key, the same as the
// cell rate algorithm the Redis backend runs.
func (s *Store) Take(_ context.Context, key string, r store.Rate, n int) (time.Duration, error) {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	now := s.opts.Clock.Now()
	l := s.lim.byKey[key]
	if l == nil || l.Limit() != rate.Limit(r.PerSecond) || l.Burst() != r.Burst {
		l = rate.NewLimiter(rate.Limit(r.PerSecond), r.Burst)
		l.SetLimitAt(now, rate.Limit(r.PerSecond)) // start full, at now on this clock
		s.lim.byKey[key] = l
	}
	want := max(n, 1)
	if tokens := l.TokensAt(now); tokens < float64(want) {
		return time.Duration((float64(want) - tokens) / r.PerSecond * float64(time.Second)), nil
	}
	if n > 0 {
		l.AllowN(now, n)
	}
	return 0, nil
}

// sweepLimiters forgets budgets that are full again: a fresh one is the
// same.
func (s *Store) sweepLimiters(now time.Time) {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	for k, l := range s.lim.byKey {
		if l.TokensAt(now) >= float64(l.Burst()) {
			delete(s.lim.byKey, k)
		}
	}
}

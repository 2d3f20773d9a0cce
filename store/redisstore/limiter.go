package redisstore

import (
	"context"
	"time"

	"github.com/go-redis/redis_rate/v10"

	"github.com/chatrelay/chatrelay/store"
)

// Take is store.Limiter's Take on redis_rate's cell rate algorithm: one
// budget per key in Redis, shared by every replica, on Redis's clock. 1
// round trip.
func (s *Store) Take(ctx context.Context, key string, r store.Rate, n int) (time.Duration, error) {
	// redis_rate's limit is Rate calls per Period: the algorithm only uses
	// their ratio, the interval between calls.
	interval := time.Duration(float64(time.Second) / r.PerSecond)
	limit := redis_rate.Limit{Rate: 1, Period: interval, Burst: r.Burst}
	res, err := s.limiter.AllowN(ctx, s.o.Prefix+":"+key, limit, n)
	if err != nil {
		return 0, unavailable(err)
	}
	if n > 0 {
		if res.Allowed == 0 {
			return max(res.RetryAfter, time.Millisecond), nil
		}
		return 0, nil
	}
	// Looking: the budget holds Remaining calls, or is empty until its
	// oldest call has been paid back.
	if res.Remaining >= 1 {
		return 0, nil
	}
	return max(res.ResetAfter-time.Duration(r.Burst-1)*interval, time.Millisecond), nil
}

package server

import (
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
)

// streamCounts caps each tenant's open streams on this replica: a
// ChatReceive or WatchSession holds a goroutine and buffers for as long as
// it is open, so without a cap one tenant could hold them all.
type streamCounts struct {
	limit int
	mu    sync.Mutex
	open  map[string]int
}

func newStreamCounts(limit int) *streamCounts {
	return &streamCounts{limit: limit, open: make(map[string]int)}
}

// acquire counts a stream of tenant's, and returns how to release it.
func (c *streamCounts) acquire(tenant string) (release func(), err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open[tenant] >= c.limit {
		return nil, &codedError{code: codes.ResourceExhausted, reason: reasonTooManyListeners,
			msg: fmt.Sprintf("the tenant has %d streams open on this replica; the limit is %d (limits.streams): close some, or resume waits later", c.open[tenant], c.limit)}
	}
	c.open[tenant]++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.open[tenant]--; c.open[tenant] == 0 {
				delete(c.open, tenant)
			}
		})
	}, nil
}

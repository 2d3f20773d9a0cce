package server

import (
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
)

// streamCounts caps each tenant's open streams on this replica: a
// ChatReceive or WatchSession holds a goroutine and buffers for as long as
// it is open, so without a cap one tenant could hold them all.
// The same counting caps a web session's widget connections (widget.go).
type streamCounts struct {
	limit int
	// refuse is the error of one stream too many.
	refuse func(open, limit int) error
	mu     sync.Mutex
	open   map[string]int
}

func newStreamCounts(limit int, refuse func(open, limit int) error) *streamCounts {
	return &streamCounts{limit: limit, refuse: refuse, open: make(map[string]int)}
}

// tooManyStreams is the error of a tenant's stream past limits.streams.
func tooManyStreams(open, limit int) error {
	return &codedError{code: codes.ResourceExhausted, reason: reasonTooManyListeners,
		msg: fmt.Sprintf("the tenant has %d streams open on this replica; the limit is %d (limits.streams): close some, or resume waits later", open, limit)}
}

// acquire counts a stream of tenant's (or whatever the counts are keyed
// by), and returns how to release it.
func (c *streamCounts) acquire(tenant string) (release func(), err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open[tenant] >= c.limit {
		return nil, c.refuse(c.open[tenant], c.limit)
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

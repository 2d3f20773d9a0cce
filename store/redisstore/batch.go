package redisstore

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// batcher pipelines concurrent script calls ("auto-pipelining") without
// goroutines of its own. A caller that finds fewer than maxLeaders
// pipelines in flight leads one: it sends its own call together with
// whatever calls are queued, as one pipeline, hands the answers out, and
// passes the lead to the next queued caller, if any. Alone, a call is sent
// at once, as without batching; under load many calls share one write and
// one read on both ends. A pipeline is not a transaction: each script still
// runs, and fails, on its own.
type batcher struct {
	c redis.UniversalClient

	mu      sync.Mutex
	queue   []*batchReq
	leaders int
}

type batchReq struct {
	sc   *redis.Script
	keys []string
	args []any
	cmd  *redis.Cmd
	// wake is signalled once: with cmd set (answered), or lead set (this
	// caller now leads the next pipeline).
	wake chan struct{}
	lead bool
}

const (
	maxLeaders   = 4
	maxBatch     = 128
	batchTimeout = 5 * time.Second
)

func newBatcher(c redis.UniversalClient) *batcher { return &batcher{c: c} }

// run sends one script call, batched with concurrent ones.
func (b *batcher) run(ctx context.Context, sc *redis.Script, keys []string, args ...any) *redis.Cmd {
	r := &batchReq{sc: sc, keys: keys, args: args}
	b.mu.Lock()
	if b.leaders < maxLeaders {
		b.leaders++
		b.mu.Unlock()
		b.leadFrom(r)
		return r.cmd
	}
	r.wake = make(chan struct{}, 1)
	b.queue = append(b.queue, r)
	b.mu.Unlock()
	select {
	case <-r.wake:
	case <-ctx.Done():
		// Still queued: it will run, and be answered to nobody; an
		// idempotency key makes a retry safe.
		return errCmd(ctx, ctx.Err())
	}
	if r.lead {
		b.leadFrom(r)
	}
	return r.cmd
}

// leadFrom sends first and the queued calls as one pipeline, then passes
// the lead on or gives it up.
func (b *batcher) leadFrom(first *batchReq) {
	b.mu.Lock()
	n := min(len(b.queue), maxBatch-1)
	batch := make([]*batchReq, 0, n+1)
	batch = append(batch, first)
	batch = append(batch, b.queue[:n]...)
	b.queue = append(b.queue[:0:0], b.queue[n:]...)
	b.mu.Unlock()

	b.send(batch)
	for _, r := range batch[1:] {
		r.wake <- struct{}{}
	}

	b.mu.Lock()
	if len(b.queue) == 0 {
		b.leaders--
		b.mu.Unlock()
		return
	}
	next := b.queue[0]
	b.queue = b.queue[1:]
	next.lead = true
	b.mu.Unlock()
	next.wake <- struct{}{}
}

func (b *batcher) send(batch []*batchReq) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	if len(batch) == 1 {
		r := batch[0]
		r.cmd = r.sc.Run(ctx, b.c, r.keys, r.args...)
		return
	}
	p := b.c.Pipeline()
	for _, r := range batch {
		r.cmd = r.sc.EvalSha(ctx, p, r.keys, r.args...)
	}
	_, _ = p.Exec(ctx)
	for _, r := range batch {
		if isNoScript(r.cmd.Err()) {
			// Redis lost its script cache (a restart): load and run.
			r.cmd = r.sc.Run(ctx, b.c, r.keys, r.args...)
		}
	}
}

func errCmd(ctx context.Context, err error) *redis.Cmd {
	cmd := redis.NewCmd(ctx)
	cmd.SetErr(err)
	return cmd
}

package redisstore

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// batcher pipelines concurrent script calls ("auto-pipelining"): each of a
// few workers takes whatever calls are waiting and sends them as one
// pipeline. Alone, a call is sent at once, as before; under load many calls
// share one write and one read on both ends, which is where Redis and the
// client spend most of their time with small scripts. A pipeline is not a
// transaction: each script still runs, and fails, on its own.
type batcher struct {
	c    redis.UniversalClient
	reqs chan *batchReq
	stop chan struct{}
	done chan struct{}
}

type batchReq struct {
	sc   *redis.Script
	keys []string
	args []any
	cmd  *redis.Cmd
	done chan struct{}
}

const (
	batchWorkers = 4
	maxBatch     = 128
	batchTimeout = 5 * time.Second
)

func newBatcher(c redis.UniversalClient) *batcher {
	b := &batcher{c: c, reqs: make(chan *batchReq), stop: make(chan struct{}), done: make(chan struct{})}
	finished := make(chan struct{}, batchWorkers)
	for range batchWorkers {
		go func() {
			b.work()
			finished <- struct{}{}
		}()
	}
	go func() {
		for range batchWorkers {
			<-finished
		}
		close(b.done)
	}()
	return b
}

func (b *batcher) close() {
	close(b.stop)
	<-b.done
}

// run sends one script call through a worker and waits for its answer.
func (b *batcher) run(ctx context.Context, sc *redis.Script, keys []string, args ...any) *redis.Cmd {
	r := &batchReq{sc: sc, keys: keys, args: args, done: make(chan struct{})}
	select {
	case b.reqs <- r:
	case <-ctx.Done():
		return errCmd(ctx, ctx.Err())
	case <-b.stop:
		return sc.Run(ctx, b.c, keys, args...)
	}
	select {
	case <-r.done:
		return r.cmd
	case <-ctx.Done():
		// The call may still run; an idempotency key makes a retry safe.
		return errCmd(ctx, ctx.Err())
	}
}

func errCmd(ctx context.Context, err error) *redis.Cmd {
	cmd := redis.NewCmd(ctx)
	cmd.SetErr(err)
	return cmd
}

func (b *batcher) work() {
	batch := make([]*batchReq, 0, maxBatch)
	for {
		select {
		case r := <-b.reqs:
			batch = append(batch[:0], r)
		case <-b.stop:
			return
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		if len(batch) == 1 {
			r := batch[0]
			r.cmd = r.sc.Run(ctx, b.c, r.keys, r.args...)
			close(r.done)
			cancel()
			continue
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
			close(r.done)
		}
		cancel()
	}
}

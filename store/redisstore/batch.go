package redisstore

import (
	"context"
	"fmt"
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
//
// Mergeable calls (see do) go further: those in one pipeline that share a
// group are sent as a single call of the script, with all
// their keys and arguments, so Redis parses, looks up and starts one script
// for many calls, and the script can read and write a shared record once.
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
	// val and err are the answer: the script's, or for a mergeable call
	// its own reply out of the script's array.
	val any
	err error
	// group, for a mergeable call, names the calls it may be merged with
	// (same script, keys one script may touch together); "" for none.
	// common is how many leading args the calls of a group share.
	group  string
	common int
	// wake is signalled once a queued call leaves the queue: with its
	// answer set (state taken), or with the lead (state leading).
	wake  chan struct{}
	state reqState // guarded by batcher.mu
}

// reqState is where a queued call stands. Every transition happens under
// batcher.mu, so a caller whose ctx ends can tell whether its call can
// still be withdrawn (queued), has gone out (taken), or was handed the lead
// it must pass on (leading).
type reqState uint8

const (
	queued    reqState = iota
	taken              // in a pipeline: its answer comes, wanted or not
	leading            // handed the lead of the next pipeline
	abandoned          // its caller went away first: it is never sent
)

const (
	// Two pipelines in flight: one being answered while the next is
	// written. More split the same load into smaller merged calls, each
	// costing Redis a fixed ~150k instructions on top of its posts' own,
	// and where Redis shares the cores they cost more than they overlap:
	// chatbench's Redis / echo with 1, 2, 4 was 0.51/0.53, 0.52/0.53,
	// 0.50/0.50 (alternated runs, 5 rounds each), with about 11, 6 and 4
	// posts per call.
	maxLeaders   = 2
	maxBatch     = 128
	batchTimeout = 5 * time.Second
)

func newBatcher(c redis.UniversalClient) *batcher { return &batcher{c: c} }

// wakes recycles batchReq.wake channels: a queued call allocated one each.
var wakes = sync.Pool{New: func() any { return make(chan struct{}, 1) }}

// run sends one script call, batched with concurrent ones, and returns
// its answer.
func (b *batcher) run(ctx context.Context, sc *redis.Script, keys []string, args ...any) (any, error) {
	return b.do(ctx, &batchReq{sc: sc, keys: keys, args: args})
}

// do sends r, batched with concurrent calls. A mergeable call (r.group
// set) is of a script that takes one key per call, the first r.common args
// once and the rest once per call, and answers an array with one reply per
// key; concurrent calls of one group may be merged into one call, and
// either way r's answer is its own reply alone. The shared args must be
// comparable; a call whose shared args differ from the group's is sent on
// its own.
//
// do honours ctx while r waits in the queue: a call withdrawn in time is
// never sent, and one whose caller leaves later runs with nobody waiting
// for its answer (an idempotency key makes the caller's retry safe). A
// caller that leads a pipeline sees it through, on the batcher's own
// deadline, since other callers' answers ride on it.
func (b *batcher) do(ctx context.Context, r *batchReq) (any, error) {
	b.mu.Lock()
	if b.leaders < maxLeaders {
		b.leaders++
		b.mu.Unlock()
		b.lead(r)
		return r.val, r.err
	}
	r.wake = wakes.Get().(chan struct{})
	b.queue = append(b.queue, r)
	b.mu.Unlock()
	select {
	case <-r.wake:
		// Signalled once, and now empty: reusable.
		wakes.Put(r.wake)
	case <-ctx.Done():
		// The wake channel may still be signalled: it is not reused.
		b.withdraw(r)
		return nil, ctx.Err()
	}
	if r.state == leading {
		b.lead(r)
	}
	return r.val, r.err
}

// withdraw is do's side of a caller that gave up: a queued call is dropped,
// and a lead it was handed goes to the next queued call, so the leader
// count always returns to zero once the queue drains.
func (b *batcher) withdraw(r *batchReq) {
	b.mu.Lock()
	switch r.state {
	case queued:
		r.state = abandoned
		b.mu.Unlock()
	case leading:
		r.state = abandoned
		b.passLeadLocked()
	default: // taken: its pipeline answers it, to nobody
		b.mu.Unlock()
	}
}

// lead sends first and up to maxBatch-1 queued calls as one pipeline,
// passes the lead on, and then answers the pipeline's callers.
func (b *batcher) lead(first *batchReq) {
	b.mu.Lock()
	batch := append(make([]*batchReq, 0, min(len(b.queue)+1, maxBatch)), first)
	for len(batch) < maxBatch {
		r := b.popLocked()
		if r == nil {
			break
		}
		r.state = taken
		batch = append(batch, r)
	}
	b.mu.Unlock()

	b.send(batch)
	// The next pipeline goes out first; this one's callers are answered
	// while Redis works on it.
	b.mu.Lock()
	b.passLeadLocked()
	for _, r := range batch[1:] {
		r.wake <- struct{}{}
	}
}

// passLeadLocked hands a finished lead to the next queued call, or gives it
// up when none is waiting. It is called with b.mu held, and releases it.
func (b *batcher) passLeadLocked() {
	next := b.popLocked()
	if next == nil {
		b.leaders--
		b.mu.Unlock()
		return
	}
	next.state = leading
	b.mu.Unlock()
	next.wake <- struct{}{}
}

// queueLen is how many calls wait in the queue (abandoned ones included
// until they are dropped).
func (b *batcher) queueLen() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

// popLocked takes the oldest call still wanted off the queue, or nil.
func (b *batcher) popLocked() *batchReq {
	for len(b.queue) > 0 {
		r := b.queue[0]
		b.queue[0] = nil
		b.queue = b.queue[1:]
		if r.state != abandoned {
			return r
		}
	}
	b.queue = b.queue[:0]
	return nil
}

func (b *batcher) send(batch []*batchReq) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	units := merge(batch)
	if len(units) == 1 {
		u := units[0]
		keys, args := u.call()
		u.deliver(runScript(ctx, b.c, u[0].sc, keys, args...))
		return
	}
	p := b.c.Pipeline()
	answers := make([]func() *redis.Cmd, len(units))
	for i, u := range units {
		keys, args := u.call()
		answers[i] = piped(ctx, b.c, p, u[0].sc, keys, args...)
	}
	_, _ = p.Exec(ctx)
	for i, u := range units {
		u.deliver(answers[i]())
	}
}

// A unit is the calls sent as one script call: one call, or mergeable
// calls of one group.
type unit []*batchReq

// merge splits a batch into units, keeping the calls' order within each.
func merge(batch []*batchReq) []unit {
	units := make([]unit, 0, len(batch))
	type groupKey struct {
		sc    *redis.Script
		group string
	}
	open := map[groupKey]int{} // the index in units of each group's latest unit
	for _, r := range batch {
		if r.group != "" {
			k := groupKey{r.sc, r.group}
			if i, ok := open[k]; ok && units[i].accepts(r) {
				units[i] = append(units[i], r)
				continue
			}
			open[k] = len(units)
		}
		units = append(units, unit{r})
	}
	return units
}

func (u unit) accepts(r *batchReq) bool {
	first := u[0]
	if r.common != first.common {
		return false
	}
	for i := range r.common {
		if r.args[i] != first.args[i] {
			return false
		}
	}
	return true
}

// call is the unit's keys and args as one script call.
func (u unit) call() ([]string, []any) {
	if len(u) == 1 {
		return u[0].keys, u[0].args
	}
	keys := make([]string, 0, len(u))
	args := append(make([]any, 0, len(u)*len(u[0].args)), u[0].args[:u[0].common]...)
	for _, r := range u {
		keys = append(keys, r.keys...)
		args = append(args, r.args[r.common:]...)
	}
	return keys, args
}

// deliver hands each call of the unit its answer.
func (u unit) deliver(cmd *redis.Cmd) {
	if u[0].group == "" {
		u[0].val, u[0].err = cmd.Val(), cmd.Err()
		return
	}
	replies, err := cmd.Slice()
	if err == nil && len(replies) != len(u) {
		err = fmt.Errorf("redisstore: %d replies to %d merged calls", len(replies), len(u))
	}
	for i, r := range u {
		if err != nil {
			r.err = err
			continue
		}
		r.val = replies[i]
	}
}

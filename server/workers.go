package server

import "time"

// workers runs functions on goroutines that outlive them. A delivery
// grows its goroutine's stack through the platform's client (HTTP, JSON
// decoding) on every call; on a fresh goroutine per delivery, copying
// stacks as they grew was a tenth of a Slack post's CPU. A worker that
// finds nothing to do for workerIdle exits, so a burst leaves nothing
// behind for long.
type workers struct{ next chan func() }

const workerIdle = 10 * time.Second

func newWorkers() workers { return workers{next: make(chan func())} }

// Go runs f on an idle worker, or a new one when none is idle.
func (w workers) Go(f func()) {
	select {
	case w.next <- f:
	default:
		go w.run(f)
	}
}

func (w workers) run(f func()) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		f()
		idle.Reset(workerIdle)
		select {
		case f = <-w.next:
		case <-idle.C:
			return
		}
	}
}

package server

import (
	"time"

	"github.com/chatrelay/chatrelay/internal/clock"
)

// alarm signals C once the clock reaches the time it was last set to. The
// streaming handlers use it for deadlines the store decides: when it rings
// they ask the store, and if the store does not yet see the time as passed
// (its clock reads a hair earlier: millisecond precision, another replica's
// clock, a clock being slewed) they set it again with a floor, so they wait
// a little rather than spin against the store.
type alarm struct {
	clk   clock.Clock
	C     chan struct{}
	timer clock.Timer
}

func newAlarm(clk clock.Clock) *alarm { return &alarm{clk: clk, C: make(chan struct{}, 1)} }

// rearmFloor is the least an alarm set again waits.
const rearmFloor = 50 * time.Millisecond

// set makes the alarm ring at at, or after floor if that is later,
// replacing the previous setting. A ring of the previous setting may still
// be pending in C; handlers treat a ring as "ask the store", so that is
// harmless.
func (a *alarm) set(at time.Time, floor time.Duration) {
	a.stop()
	a.timer = a.clk.AfterFunc(max(at.Sub(a.clk.Now()), floor), func() {
		select {
		case a.C <- struct{}{}:
		default:
		}
	})
}

func (a *alarm) stop() {
	if a.timer != nil {
		a.timer.Stop()
	}
}

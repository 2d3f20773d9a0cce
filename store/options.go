package store

import (
	"errors"
	"time"

	"github.com/chatrelay/chatrelay/internal/clock"
)

// Options are the settings every backend honours. Zero values take the
// defaults noted; SetDefaults fills them in.
type Options struct {
	// Clock is the time source; default the wall clock. Expiry follows it
	// exactly.
	Clock clock.Clock
	// SessionTTL is how long a session stays active without a message;
	// default 24 h.
	SessionTTL time.Duration
	// HistoryLimit caps the messages retained per session, oldest dropped
	// first; default 1000.
	HistoryLimit int
	// IdempotencyTTL is how long an idempotency key is remembered; default
	// 24 h.
	IdempotencyTTL time.Duration
	// OutcomeRetention is how long a listener's outcome is kept after it is
	// decided; default 24 h.
	OutcomeRetention time.Duration
	// EndedRetention is how long a closed or expired session, its history
	// and its contact are kept; default 7 days.
	EndedRetention time.Duration
}

// SetDefaults fills in zero fields and rejects negative ones.
func (o *Options) SetDefaults() error {
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.SessionTTL, 24*time.Hour)
	def(&o.IdempotencyTTL, 24*time.Hour)
	def(&o.OutcomeRetention, 24*time.Hour)
	def(&o.EndedRetention, 7*24*time.Hour)
	if o.HistoryLimit == 0 {
		o.HistoryLimit = 1000
	}
	if o.SessionTTL < 0 || o.IdempotencyTTL < 0 || o.OutcomeRetention < 0 || o.EndedRetention < 0 || o.HistoryLimit < 0 {
		return errors.New("store options: durations and limits must not be negative")
	}
	return nil
}

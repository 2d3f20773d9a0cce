package ids

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestMessageIDsIncreaseWithinAMillisecondAndAcrossClockSteps(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	prev := ""
	for i := 0; i < 10000; i++ {
		at := now
		if i%1000 == 999 {
			at = now.Add(-time.Second) // a clock step back
		}
		id := Message(at, prev)
		if id <= prev {
			t.Fatalf("id %d: %s does not sort after %s", i, id, prev)
		}
		u, err := uuid.Parse(strings.TrimPrefix(id, MessagePrefix))
		if err != nil || u.Version() != 7 || u.Variant() != uuid.RFC4122 {
			t.Fatalf("id %s is not a uuidv7: err=%v version=%d", id, err, u.Version())
		}
		prev = id
	}
}

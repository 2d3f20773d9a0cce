package redisstore

import (
	"context"
	"testing"

	"github.com/chatrelay/chatrelay/internal/ids"
	"github.com/chatrelay/chatrelay/internal/redistest"
)

// The scripts build message ids in Lua; they must be the ids the Go side
// builds, bit for bit, or ids would stop sorting in append order and the
// sequence number could not be read back from them.
func TestScriptMessageIDsAreGoMessageIDs(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	const rnd = "0123abcd"
	for _, tc := range []struct {
		ms  int64
		seq uint64
	}{
		{0, 0}, {1, 1}, {1795297498123, 1}, {1795297498123, 65535}, {1795297498123, 65536},
		{1795297498123, 1<<28 - 1}, {1795297498123, 1 << 28}, {1795297498123, 1<<30 + 12345},
		{1795297498123, 1<<42 - 1}, {1<<48 - 1, 1<<42 - 1}, {0xabcdef012345, 0x2bcdef01234},
	} {
		got, err := c.Eval(ctx, prelude+"return msgid(tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])",
			[]string{"k"}, tc.ms, tc.seq, rnd).Text()
		if err != nil {
			t.Fatal(err)
		}
		if want := ids.MessageWithRandom(tc.ms, tc.seq, rnd); got != want {
			t.Errorf("ms %d, seq %d: script %s, Go %s", tc.ms, tc.seq, got, want)
		}
	}
}

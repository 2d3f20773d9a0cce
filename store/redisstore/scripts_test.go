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
	// In this order, consecutive ids share the time and the high bits of
	// seq, or one, or neither: the script reuses what it formatted for the
	// previous id only when both are the same.
	cases := []struct {
		ms  int64
		seq uint64
	}{
		{0, 0}, {1, 1}, {1795297498123, 1}, {1795297498123, 2}, {1795297498124, 3},
		{1795297498124, 65535}, {1795297498124, 65536}, {1795297498123, 65537},
		{1795297498123, 1<<28 - 1}, {1795297498123, 1 << 28}, {1795297498123, 1<<30 + 12345},
		{1795297498123, 1<<42 - 1}, {1<<48 - 1, 1<<42 - 1}, {0xabcdef012345, 0x2bcdef01234}, {1, 1},
	}
	var args []any
	for _, tc := range cases {
		args = append(args, tc.ms, tc.seq)
	}
	got, err := c.Eval(ctx, lua("prelude")+`
local out = {}
for i = 1, #ARGV, 2 do out[#out + 1] = msgid(tonumber(ARGV[i]), tonumber(ARGV[i + 1]), '`+rnd+`') end
return out`, []string{"k"}, args...).StringSlice()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(cases) {
		t.Fatalf("%d ids for %d cases", len(got), len(cases))
	}
	for i, tc := range cases {
		if want := ids.MessageWithRandom(tc.ms, tc.seq, rnd); got[i] != want {
			t.Errorf("ms %d, seq %d: script %s, Go %s", tc.ms, tc.seq, got[i], want)
		}
	}
}

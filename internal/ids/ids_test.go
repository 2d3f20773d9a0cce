package ids

import (
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestMessageIDsSortInAppendOrderAndCarryTheirSeq(t *testing.T) {
	ms := int64(1_790_000_000_000)
	prev := ""
	for _, seq := range []uint64{1, 2, 3, 255, 256, 4095, 4096, 1 << 16, 1<<28 - 1, 1 << 28, 1 << 30, 1<<42 - 1} {
		if seq%2 == 0 {
			ms++ // some share a millisecond, some do not
		}
		id := Message(ms, seq)
		if id <= prev {
			t.Fatalf("seq %d: %s does not sort after %s", seq, id, prev)
		}
		u, err := uuid.Parse(strings.TrimPrefix(id, MessagePrefix))
		if err != nil || u.Version() != 7 || u.Variant() != uuid.RFC4122 {
			t.Fatalf("%s is not a uuidv7: err=%v version=%d variant=%v", id, err, u.Version(), u.Variant())
		}
		if ts, _ := u.Time().UnixTime(); ts != ms/1000 {
			t.Fatalf("%s has time %d, want %d", id, ts, ms/1000)
		}
		got, err := MessageSeq(id)
		if err != nil || got != seq {
			t.Fatalf("MessageSeq(%s) = %d, %v; want %d", id, got, err, seq)
		}
		if got, err := MessageMs(id); err != nil || got != ms {
			t.Fatalf("MessageMs(%s) = %d, %v; want %d", id, got, err, ms)
		}
		prev = id
	}
	for _, bad := range []string{"", "msg_", "ses_" + uuid.NewString(), "msg_" + uuid.NewString(), "msg_zz"} {
		if _, err := MessageSeq(bad); err == nil {
			t.Errorf("MessageSeq(%q) accepted it", bad)
		}
	}
}

func TestTaggedIDsCarryTheirTag(t *testing.T) {
	tag := Tag("tenant", "user")
	if tag != Tag("tenant", "user") || tag == Tag("tenantuser") || len(tag) != 8 {
		t.Fatalf("Tag is not a stable 8-digit digest of its parts: %s", tag)
	}
	for _, id := range []string{TaggedSession(tag), TaggedListener(tag)} {
		got, ok := TagOf(id)
		if !ok || got != tag {
			t.Fatalf("TagOf(%s) = %s, %v", id, got, ok)
		}
		if _, err := uuid.Parse(id[strings.IndexByte(id, '_')+1:]); err != nil {
			t.Fatalf("%s is not a uuid: %v", id, err)
		}
	}
	for _, bad := range []string{"ses_nope", "ses_0123456g-0000-7000-8000-000000000000", "ses_-1234567-0000-7000-8000-000000000000", "ses"} {
		if _, ok := TagOf(bad); ok {
			t.Errorf("TagOf accepted the malformed id %q", bad)
		}
	}
	if got, ok := TagOf("ses_ABCDEF01-0000-7000-8000-000000000000"); !ok || got != "ABCDEF01" {
		t.Errorf("TagOf refused an upper-case tag: %q, %v", got, ok)
	}
}

// Package ids makes the identifiers chatrelay hands out.
package ids

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"strings"

	"github.com/google/uuid"
)

// Prefixes of the identifiers, as docs/design.md §1 shapes them.
const (
	SessionPrefix  = "ses_"
	MessagePrefix  = "msg_"
	ListenerPrefix = "cr_"
	DeliveryPrefix = "dl_"
)

// Session returns a new session id, ses_<uuid>.
func Session() string { return SessionPrefix + uuid.NewString() }

// Listener returns a new ChatReceive conversation id, cr_<uuid>.
func Listener() string { return ListenerPrefix + uuid.NewString() }

// Delivery returns a new delivery id, dl_<uuid>.
func Delivery() string { return DeliveryPrefix + uuid.NewString() }

// Tag returns 8 hex digits derived from parts. Backends that shard by key use
// it to place related records together; TaggedSession and TaggedListener
// embed it in ids so the records can be found from the id alone.
func Tag(parts ...string) string {
	h := fnv.New32a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	var b [4]byte
	sum := h.Sum32()
	b[0], b[1], b[2], b[3] = byte(sum>>24), byte(sum>>16), byte(sum>>8), byte(sum)
	return hex.EncodeToString(b[:])
}

// TaggedSession returns a session id whose uuid starts with tag (8 hex
// digits). The uuid stays a valid random (v4) uuid with 90 random bits.
func TaggedSession(tag string) string { return SessionPrefix + tagged(tag) }

// TaggedListener is TaggedSession for listener ids.
func TaggedListener(tag string) string { return ListenerPrefix + tagged(tag) }

func tagged(tag string) string {
	s := uuid.NewString()
	return tag + s[8:]
}

// TagOf returns the tag embedded in a session or listener id, and whether
// the id has the expected shape.
func TagOf(id string) (string, bool) {
	_, rest, ok := strings.Cut(id, "_")
	if !ok || len(rest) != 36 {
		return "", false
	}
	for _, c := range []byte(rest[:8]) {
		if !isHex(c) {
			return "", false
		}
	}
	return rest[:8], true
}

// Issued reports whether id has the shape of the ids with prefix this
// package hands out (SessionPrefix, ListenerPrefix): one that does not
// names nothing, and is refused before any backend is asked.
func Issued(prefix, id string) bool {
	_, ok := TagOf(id)
	return ok && strings.HasPrefix(id, prefix)
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// Message returns the id of the seq-th message of a session, appended at
// ms (Unix milliseconds). The id is a uuidv7: 48 bits of ms, then seq as
// the RFC 9562 counter (42 bits, in rand_a and the top of rand_b), then 32
// random bits. If ms never decreases within a session — callers pass the
// larger of now and the previous message's ms — ids sort, as strings, in
// append order, and the sequence number can be read back from the id.
func Message(ms int64, seq uint64) string { return MessageWithRandom(ms, seq, MessageRandom()) }

// MessageRandom returns the 8 random hex digits that end a message id. They
// only tell apart ids of different sessions that share a millisecond and a
// sequence number, so they need no cryptographic strength (crypto/rand can
// cost a system call per message).
func MessageRandom() string {
	var r [4]byte
	binary.BigEndian.PutUint32(r[:], rand.Uint32())
	return hex.EncodeToString(r[:])
}

// MessageWithRandom is Message with the 8 random hex digits given; the Redis
// backend's scripts build the same layout.
func MessageWithRandom(ms int64, seq uint64, rnd8 string) string {
	const digits = "0123456789abcdef"
	var b strings.Builder
	b.Grow(len(MessagePrefix) + 36)
	b.WriteString(MessagePrefix)
	put := func(v uint64, n int) {
		for i := n - 1; i >= 0; i-- {
			b.WriteByte(digits[(v>>(4*uint(i)))&0xf])
		}
	}
	m := uint64(ms) & (1<<48 - 1)
	put(m>>16, 8)
	b.WriteByte('-')
	put(m&0xffff, 4)
	b.WriteByte('-')
	b.WriteByte('7')
	put(seq>>30&0xfff, 3)
	b.WriteByte('-')
	put(8|seq>>28&0x3, 1)
	put(seq>>16&0xfff, 3)
	b.WriteByte('-')
	put(seq&0xffff, 4)
	b.WriteString(rnd8)
	return b.String()
}

var errNotMessageID = errors.New("not a message id")

// MessageSeq reads the sequence number back from a message id.
func MessageSeq(id string) (uint64, error) {
	u, ok := strings.CutPrefix(id, MessagePrefix)
	if !ok || len(u) != 36 || u[14] != '7' {
		return 0, errNotMessageID
	}
	parsed, err := uuid.Parse(u)
	if err != nil || parsed.Variant() != uuid.RFC4122 {
		return 0, errNotMessageID
	}
	hi := uint64(parsed[6]&0x0f)<<8 | uint64(parsed[7])
	v := uint64(parsed[8] & 0x30 >> 4)
	mid := uint64(parsed[8]&0x0f)<<8 | uint64(parsed[9])
	lo := uint64(parsed[10])<<8 | uint64(parsed[11])
	return hi<<30 | v<<28 | mid<<16 | lo, nil
}

// MessageMs reads back the Unix milliseconds a message id was made at.
func MessageMs(id string) (int64, error) {
	if _, err := MessageSeq(id); err != nil {
		return 0, err
	}
	u, _ := uuid.Parse(id[len(MessagePrefix):])
	var ms int64
	for _, b := range u[:6] {
		ms = ms<<8 | int64(b)
	}
	return ms, nil
}

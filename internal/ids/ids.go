// Package ids makes the identifiers chatrelay hands out.
package ids

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/google/uuid"
)

// Prefixes of the identifiers, as DESIGN §1 shapes them.
const (
	SessionPrefix  = "ses_"
	MessagePrefix  = "msg_"
	ListenerPrefix = "cr_"
)

// Session returns a new session id, ses_<uuid>.
func Session() string { return SessionPrefix + uuid.NewString() }

// Listener returns a new ChatReceive conversation id, cr_<uuid>.
func Listener() string { return ListenerPrefix + uuid.NewString() }

// Message returns a message id msg_<uuidv7> for time now that sorts, as a
// string, strictly after prev (another id from this function, or ""). Within
// one session ids therefore increase in append order even when the clock
// steps back or two messages share a millisecond.
func Message(now time.Time, prev string) string {
	var u [16]byte
	ms := uint64(now.UnixMilli())
	binary.BigEndian.PutUint64(u[0:8], ms<<16)
	_, _ = rand.Read(u[6:])
	u[6] = 0x70 | u[6]&0x0f // version 7
	u[8] = 0x80 | u[8]&0x3f // RFC 9562 variant
	id := format(u)
	if prev == "" || id > prev {
		return id
	}
	// Same millisecond or a clock step back: take prev's successor. The
	// random bits leave ample room, so the version nibble is never reached.
	p, err := parse(prev)
	if err != nil {
		return id
	}
	for i := 15; i >= 0; i-- {
		if i == 8 {
			// Keep the variant bits: carry over them.
			if p[i]&0x3f == 0x3f {
				p[i] &^= 0x3f
				continue
			}
		}
		if i == 6 {
			if p[i]&0x0f == 0x0f {
				p[i] &^= 0x0f
				continue
			}
		}
		p[i]++
		if p[i] != 0 {
			break
		}
	}
	return format(p)
}

func format(u [16]byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return MessagePrefix + string(b[:])
}

func parse(id string) ([16]byte, error) {
	var u [16]byte
	parsed, err := uuid.Parse(id[len(MessagePrefix):])
	if err != nil {
		return u, err
	}
	return parsed, nil
}

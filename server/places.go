package server

import (
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/store"
)

// place is where a session lives: its platform, channel and user, which
// never change; and, for WhatsApp, when its reply window is known to stay
// open until (Unix ms; 0 when not known to be open). A window only ever
// moves later, so a cached one still in the future is open for certain.
type place struct {
	platform, channel, user string
	window                  int64
}

// placeCache remembers each session's place, so that PostMessage can choose
// how to deliver without reading the session first, and an ingest into a
// named session can tell the store its channel (store.InboundMessage's
// hint): each is then one store call (one Redis round trip). It learns a
// place from every session a call returns (learn), so only a session this
// replica has never seen costs one more read. Entries are keyed by tenant
// too, so a cached entry never stands in for another tenant's check; the
// store still checks the session on every call.
type placeCache struct {
	mu sync.RWMutex
	m  map[[2]string]place
}

// placeCacheSize bounds the cache; past it the cache starts over, which
// costs one extra read per session and nothing else.
const placeCacheSize = 100_000

func (c *placeCache) get(tenant, sessionID string) (place, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p, ok := c.m[[2]string{tenant, sessionID}]
	return p, ok
}

// learn remembers the place of a session a store call returned (none, if
// it returned no session).
func (c *placeCache) learn(ses *store.Session) {
	if ses.ID == "" {
		return
	}
	c.put(ses.Tenant, ses.ID, sessionPlace(ses))
}

// sessionPlace is ses's place as ses shows it.
func sessionPlace(ses *store.Session) place {
	p := place{platform: ses.Platform, channel: ses.Channel, user: ses.User}
	if w := windowCloses(ses); !w.IsZero() {
		p.window = w.UnixMilli()
	}
	return p
}

// open reports whether p's reply window is known to be open at now.
func (p place) open(now time.Time) bool { return now.UnixMilli() < p.window }

func (c *placeCache) put(tenant, sessionID string, p place) {
	if cur, ok := c.get(tenant, sessionID); ok {
		// A session read before the user's last message shows an older
		// window.
		if p.window = max(p.window, cur.window); cur == p {
			return // the common case, under the read lock only
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= placeCacheSize {
		c.m = make(map[[2]string]place)
	}
	k := [2]string{tenant, sessionID}
	p.window = max(p.window, c.m[k].window)
	c.m[k] = p
}

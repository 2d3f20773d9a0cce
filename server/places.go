package server

import (
	"sync"

	"github.com/chatrelay/chatrelay/store"
)

// place is where a session lives: its platform, channel and user, which
// never change.
type place struct{ platform, channel, user string }

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
	c.put(ses.Tenant, ses.ID, place{ses.Platform, ses.Channel, ses.User})
}

func (c *placeCache) put(tenant, sessionID string, p place) {
	if cur, ok := c.get(tenant, sessionID); ok && cur == p {
		return // the common case, under the read lock only
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= placeCacheSize {
		c.m = make(map[[2]string]place)
	}
	c.m[[2]string{tenant, sessionID}] = p
}

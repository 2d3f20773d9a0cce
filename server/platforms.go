package server

import "sync"

// platformCache remembers each session's platform, which never changes, so
// that PostMessage can choose how to deliver without reading the session
// first: a post is then one store call (one Redis round trip). Entries are
// keyed by tenant too, so a cached entry never stands in for another
// tenant's check; the store still checks the session on every post.
type platformCache struct {
	mu sync.RWMutex
	m  map[[2]string]string
}

// platformCacheSize bounds the cache; past it the cache starts over, which
// costs one extra read per session and nothing else.
const platformCacheSize = 100_000

func (c *platformCache) get(tenant, sessionID string) (string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	pf, ok := c.m[[2]string{tenant, sessionID}]
	return pf, ok
}

func (c *platformCache) put(tenant, sessionID, platform string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= platformCacheSize {
		c.m = make(map[[2]string]string)
	}
	c.m[[2]string{tenant, sessionID}] = platform
}

package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/chatrelay/chatrelay/store"
)

type tenantKey struct{}

// tenantFrom returns the caller's tenant, set by the auth step.
func tenantFrom(ctx context.Context) string {
	if t, ok := ctx.Value(tenantKey{}).(string); ok {
		return t
	}
	return defaultTenant
}

// keyring authenticates API keys. Keys are kept as SHA-256 digests and
// compared in constant time, so neither memory dumps nor timing reveal them.
// Rate budgets live in the store (store.Limiter), so on Redis every replica
// draws a key's calls from one budget. Failed authentications are budgeted
// per client address.
type keyring struct {
	keys    []keyEntry
	lim     store.Limiter
	failed  store.Rate
	blocked blockList
	// proxies are the trusted proxies: their X-Forwarded-For entries are
	// read past to the client's.
	proxies []netip.Prefix
}

type keyEntry struct {
	digest [32]byte
	name   string
	tenant string
	// id names the key's budget without revealing the key.
	id   string
	rate store.Rate // zero: unlimited
}

func newKeyring(keys []APIKey, lim Limits, limiter store.Limiter, proxies []string) (*keyring, error) {
	kr := &keyring{lim: limiter, failed: store.Rate{PerSecond: float64(lim.FailedAuthsPerMinute) / 60, Burst: lim.FailedAuthsPerMinute}}
	for _, p := range proxies {
		prefix, err := netip.ParsePrefix(p)
		if err != nil {
			addr, aerr := netip.ParseAddr(p)
			if aerr != nil {
				return nil, fmt.Errorf("config: trusted_proxies: %q is neither an IP address nor a CIDR", p)
			}
			prefix = netip.PrefixFrom(addr, addr.BitLen())
		}
		kr.proxies = append(kr.proxies, prefix.Masked())
	}
	chk := checker{lim: lim}
	seen := map[[32]byte]bool{}
	for i, k := range keys {
		field := fmt.Sprintf("api_keys[%d]", i)
		chk.id(field+".tenant", k.Tenant, true)
		if len(k.Key) < minKeyLength {
			chk.add(field+".key", "must be at least %d characters", minKeyLength)
		}
		if k.RatePerSecond < 0 || k.Burst < 0 {
			chk.add(field+".rate_per_second", "must not be negative")
		}
		d := sha256.Sum256([]byte(k.Key))
		if seen[d] {
			chk.add(field+".key", "is the same as another key")
		}
		seen[d] = true
		e := keyEntry{digest: d, name: k.Name, tenant: k.Tenant, id: hex.EncodeToString(d[:8])}
		if k.RatePerSecond > 0 {
			e.rate = store.Rate{PerSecond: k.RatePerSecond, Burst: max(k.Burst, 1)}
		}
		kr.keys = append(kr.keys, e)
	}
	if err := chk.err(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return kr, nil
}

// minKeyLength is the shortest API key accepted.
const minKeyLength = 16

var errMissingKey = &codedError{code: codes.Unauthenticated, reason: reasonUnauthenticated,
	msg: "missing API key: send the header `authorization: Bearer <key>`"}
var errBadKey = &codedError{code: codes.Unauthenticated, reason: reasonUnauthenticated, msg: "invalid API key"}

func rateLimited(msg string, wait time.Duration) error {
	return &codedError{code: codes.ResourceExhausted, reason: reasonRateLimited,
		msg: fmt.Sprintf("%s; retry in %s", msg, wait.Round(time.Millisecond)), retryAfter: wait}
}

// authenticate returns ctx carrying the caller's tenant.
func (kr *keyring) authenticate(ctx context.Context) (context.Context, error) {
	if len(kr.keys) == 0 {
		return context.WithValue(ctx, tenantKey{}, defaultTenant), nil
	}
	addr := kr.clientAddr(ctx)
	if wait := kr.blocked.until(addr, time.Now()); wait > 0 {
		return nil, rateLimited("too many failed authentications from this address", wait)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return nil, errMissingKey
	}
	token, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok {
		token, ok = strings.CutPrefix(vals[0], "bearer ")
	}
	if !ok || token == "" {
		return nil, errMissingKey
	}
	found := kr.find(token)
	if found == nil {
		return nil, kr.failedFrom(ctx, addr)
	}
	if found.rate != (store.Rate{}) {
		wait, err := kr.lim.Take(ctx, "key:"+found.id, found.rate, 1)
		if err != nil {
			return nil, err
		}
		if wait > 0 {
			return nil, rateLimited(fmt.Sprintf("rate limit of API key %q exceeded", found.name), wait)
		}
	}
	return context.WithValue(ctx, tenantKey{}, found.tenant), nil
}

// tenantOf is the tenant of the key in an authorization header, or "" (no
// key, or not one of ours): for logs, without a rate budget's cost.
func (kr *keyring) tenantOf(authorization string) string {
	if len(kr.keys) == 0 {
		return defaultTenant
	}
	token, ok := strings.CutPrefix(authorization, "Bearer ")
	if !ok || token == "" {
		return ""
	}
	if k := kr.find(token); k != nil {
		return k.tenant
	}
	return ""
}

// find is the key token is, compared against every key in constant time,
// so timing does not tell which matched; nil for none.
func (kr *keyring) find(token string) *keyEntry {
	d := sha256.Sum256([]byte(token))
	var found *keyEntry
	for i := range kr.keys {
		if subtle.ConstantTimeCompare(d[:], kr.keys[i].digest[:]) == 1 {
			found = &kr.keys[i]
		}
	}
	return found
}

// failedFrom takes a failed authentication from addr's budget. Once it is
// spent the address is refused before any key is checked, on this replica
// until the budget would allow one again; other replicas learn it from
// the shared budget at the address's next failure there.
func (kr *keyring) failedFrom(ctx context.Context, addr string) error {
	wait, err := kr.lim.Take(ctx, "auth:"+addr, kr.failed, 1)
	if err != nil || wait == 0 {
		return errBadKey
	}
	kr.blocked.block(addr, time.Now().Add(wait))
	return rateLimited("too many failed authentications from this address", wait)
}

// blockList is the client addresses this replica refuses for failed
// authentications, each until a time.
type blockList struct {
	mu sync.Mutex
	m  map[string]time.Time
}

// maxBlocked bounds the list; past it, addresses whose time is up go.
const maxBlocked = 10_000

func (b *blockList) until(addr string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.m[addr]
	if !ok {
		return 0
	}
	if !now.Before(t) {
		delete(b.m, addr)
		return 0
	}
	return t.Sub(now)
}

func (b *blockList) block(addr string, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = make(map[string]time.Time)
	}
	if len(b.m) >= maxBlocked {
		now := time.Now()
		for a, t := range b.m {
			if !now.Before(t) {
				delete(b.m, a)
			}
		}
	}
	b.m[addr] = until
}

// clientAddr is the caller's IP address: the gRPC peer's, or for a call
// through the REST gateway (in process, or over its loopback connection)
// the HTTP client's, which the gateway appends to x-forwarded-for. Behind
// a trusted proxy (the peer, or the HTTP client) it is the entry that
// proxy appended, and so on past every trusted proxy; the entries before
// come from the client and are not trusted.
func (kr *keyring) clientAddr(ctx context.Context) string {
	var host string
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		host, _, _ = net.SplitHostPort(p.Addr.String())
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() && !kr.trusted(ip) {
			return host
		}
	}
	// The entries from the last, each line's from its end, as far as the
	// first that is not a trusted proxy's.
	md, _ := metadata.FromIncomingContext(ctx)
	lines := md.Get("x-forwarded-for")
	for l := len(lines) - 1; l >= 0; l-- {
		rest := lines[l]
		for {
			i := strings.LastIndexByte(rest, ',')
			ip, ok := hopAddr(strings.TrimSpace(rest[i+1:]))
			if !ok {
				return host // not an address: the last trusted hop's word ends here
			}
			host = ip.String()
			if !kr.trusted(ip) {
				return host
			}
			if i < 0 {
				break
			}
			rest = rest[:i]
		}
	}
	return host
}

// hopAddr reads an X-Forwarded-For entry: an IP address, perhaps with a
// port or in brackets (IPv6), as the address alone, unmapped and without a
// zone, so that one client has one budget however its entry is written.
func hopAddr(h string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(strings.Trim(h, "[]"))
	if err != nil {
		ap, perr := netip.ParseAddrPort(h)
		if perr != nil {
			return netip.Addr{}, false
		}
		ip = ap.Addr()
	}
	return ip.Unmap().WithZone(""), true
}

func (kr *keyring) trusted(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range kr.proxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

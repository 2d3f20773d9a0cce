package redistest

import (
	"bytes"

	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a TCP relay in front of a redis-server that a test can cut, to
// partition one client from Redis while others keep working, or break at
// one command, to fail a write path in the middle.
type Proxy struct {
	Addr string

	target  string
	ln      net.Listener
	mu      sync.Mutex
	cut     bool
	links   map[*link]struct{}
	arm     *armed        // nil until Break
	stalled chan struct{} // closed by Restore: stalled replies give up
}

// armed is a fault waiting for its command: the next one containing match,
// on any of the proxies it is armed on, gets fault.
type armed struct {
	mu      sync.Mutex
	match   []byte
	fault   Fault
	tripped chan struct{}
}

// Fault is what Break does to the command it catches.
type Fault int

const (
	// DropRequest breaks the connection before the command reaches
	// Redis: it never runs.
	DropRequest Fault = iota + 1
	// DropReply lets Redis run the command and breaks the connection
	// before its reply: the client cannot tell whether it ran.
	DropReply
	// StallReply lets Redis run the command and holds its reply until
	// Restore: the client times out, not knowing whether it ran.
	StallReply
)

func (f Fault) String() string {
	return map[Fault]string{DropRequest: "request dropped", DropReply: "reply dropped", StallReply: "reply stalled"}[f]
}

// link is one client connection and its connection to Redis.
type link struct {
	client, server net.Conn
	// breakReply is set when the command just relayed must lose its reply.
	breakReply atomic.Int32 // a Fault, or 0
}

func (l *link) close() {
	l.client.Close()
	l.server.Close()
}

// NewProxy relays a free loopback port to target until the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, links: map[*link]struct{}{}, stalled: make(chan struct{})}
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.Restore()
	})
	return p
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close() // partitioned: refuse
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		l := &link{client: c, server: up}
		p.links[l] = struct{}{}
		p.mu.Unlock()
		go p.requests(l)
		go p.replies(l)
	}
}

// requests relays what the client sends, watching for the armed command.
func (p *Proxy) requests(l *link) {
	defer p.forget(l)
	buf := make([]byte, 32<<10)
	var tail []byte // the end of the last chunk, for a match split across two
	for {
		n, err := l.client.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			switch p.catch(append(tail, chunk...)) {
			case DropRequest:
				return
			case DropReply:
				l.breakReply.Store(int32(DropReply))
			case StallReply:
				l.breakReply.Store(int32(StallReply))
			}
			if _, err := l.server.Write(chunk); err != nil {
				return
			}
			tail = append(tail[:0], chunk[max(0, n-64):]...)
		}
		if err != nil {
			return
		}
	}
}

// replies relays what Redis answers, unless the command before broke it.
func (p *Proxy) replies(l *link) {
	defer p.forget(l)
	buf := make([]byte, 32<<10)
	for {
		n, err := l.server.Read(buf)
		if n > 0 {
			switch Fault(l.breakReply.Load()) {
			case DropReply:
				return
			case StallReply:
				p.mu.Lock()
				stalled := p.stalled
				p.mu.Unlock()
				<-stalled
				return
			}
			if _, err := l.client.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) forget(l *link) {
	l.close()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// catch reports the armed fault, disarming it, when data holds its match.
func (p *Proxy) catch(data []byte) Fault {
	p.mu.Lock()
	a := p.arm
	p.mu.Unlock()
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.match == nil || !bytes.Contains(data, a.match) {
		return 0
	}
	a.match = nil
	close(a.tripped)
	return a.fault
}

// Break arms f for the next command whose bytes contain match (a script's
// SHA, a key), on whichever connection sends it, once. The returned channel
// is closed when it strikes.
func (p *Proxy) Break(match string, f Fault) <-chan struct{} {
	return BreakOne([]*Proxy{p}, match, f)
}

// BreakOne is Break on several proxies (a Cluster's nodes) at once: the
// first of them to see the command breaks it, and no other does.
func BreakOne(proxies []*Proxy, match string, f Fault) <-chan struct{} {
	a := &armed{match: []byte(match), fault: f, tripped: make(chan struct{})}
	for _, p := range proxies {
		p.mu.Lock()
		p.arm = a
		p.mu.Unlock()
	}
	return a.tripped
}

// Cut drops every relayed connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for l := range p.links {
		l.close()
	}
}

// Restore accepts connections again, and lets stalled replies go (their
// connections close: their clients gave up on them).
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	close(p.stalled)
	p.stalled = make(chan struct{})
}

package web

import (
	"errors"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// departures notices taken-over connections end, with one goroutine for
// all of them: an idle stream has nothing to read, and a goroutine blocked
// in a read per connection would be a third of what an idle widget costs
// (docs/design.md §12). Every connection is registered in one epoll set
// of ours (beside the runtime's), one-shot, for input, a hang-up or an
// error; whichever comes first is the client going away, as a read
// returning would be.
type departures struct {
	epfd int
	mu   sync.Mutex
	next int32
	// gone is keyed by a token carried in the epoll event, not by file
	// descriptor: a descriptor number is reused as soon as it is closed,
	// so an event read just before a stream ends must not reach the
	// stream that gets the number next.
	gone map[int32]func()
}

var sharedDepartures = sync.OnceValues(func() (*departures, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	d := &departures{epfd: epfd, gone: make(map[int32]func())}
	go d.loop()
	return d, nil
})

// watchDeparture calls gone, once, when conn's peer goes away or sends
// anything. The returned stop must be called before conn is closed; gone
// may still run once, just after a stop that raced it, so it must be
// harmless then (a context's cancel). Where conn has no descriptor to
// watch, it falls back to a goroutine blocked in a read.
func watchDeparture(conn net.Conn, gone func()) (stop func()) {
	d, err := sharedDepartures()
	sc, ok := conn.(syscall.Conn)
	if err != nil || !ok {
		return readDeparture(conn, gone)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return readDeparture(conn, gone)
	}
	d.mu.Lock()
	token := d.token()
	d.gone[token] = gone
	d.mu.Unlock()
	var added error
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: token}
	if err := rc.Control(func(fd uintptr) { added = unix.EpollCtl(d.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev) }); err != nil || added != nil {
		d.forget(token)
		return readDeparture(conn, gone)
	}
	return func() {
		if d.forget(token) {
			// Control runs while the descriptor cannot be closed; one
			// already closed has left the set by itself.
			_ = rc.Control(func(fd uintptr) { _ = unix.EpollCtl(d.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
		}
	}
}

// token is an unused token, under d.mu.
func (d *departures) token() int32 {
	for {
		d.next++
		if _, used := d.gone[d.next]; !used {
			return d.next
		}
	}
}

// forget drops token's entry, reporting whether it was still there.
func (d *departures) forget(token int32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.gone[token]
	delete(d.gone, token)
	return ok
}

func (d *departures) loop() {
	var events [128]unix.EpollEvent
	for {
		n, err := unix.EpollWait(d.epfd, events[:], -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			panic("chatrelay: waiting for widget connections to end: " + err.Error())
		}
		for _, ev := range events[:n] {
			d.mu.Lock()
			gone := d.gone[ev.Fd]
			delete(d.gone, ev.Fd)
			d.mu.Unlock()
			if gone != nil {
				gone()
			}
		}
	}
}

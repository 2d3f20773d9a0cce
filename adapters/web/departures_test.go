package web

import (
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// pair is a connected TCP pair on loopback: the server's end (what a
// stream takes over) and the client's.
func pair(t *testing.T, ln net.Listener) (server, client net.Conn) {
	t.Helper()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if server, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	return server, client
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Each connection's departure reaches its own callback, once, whatever the
// order the clients leave in; a client that sends something counts as
// leaving, as a read returning would.
func TestEachDepartureReachesItsOwnStream(t *testing.T) {
	ln := listen(t)
	const n = 40
	gone := make(chan int, 2*n)
	servers, clients := make([]net.Conn, n), make([]net.Conn, n)
	for i := range n {
		servers[i], clients[i] = pair(t, ln)
		defer servers[i].Close()
		defer watchDeparture(servers[i], func() { gone <- i })() // stopped before the close
	}
	seen := make(map[int]bool)
	for _, i := range []int{7, 0, 39, 12, 3} {
		if i == 3 {
			_, _ = clients[i].Write([]byte("x"))
		} else {
			clients[i].Close()
		}
		select {
		case got := <-gone:
			if got != i || seen[got] {
				t.Fatalf("client %d left, and stream %d heard (seen before: %v)", i, got, seen[got])
			}
			seen[got] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("client %d left unnoticed", i)
		}
	}
	select {
	case got := <-gone:
		t.Fatalf("stream %d heard of a departure that did not happen", got)
	default:
	}
}

// A stream that stopped watching hears nothing more, even of its client
// leaving while the connection is still open, and a connection that gets
// its descriptor number next is not confused with it. (The last departure
// is heard after the earlier ones would have been: one goroutine hears
// them all, in order.)
func TestAStoppedWatchHearsNothing(t *testing.T) {
	ln := listen(t)
	var stale atomic.Int32
	for i := range 40 {
		s, c := pair(t, ln)
		stop := watchDeparture(s, func() { stale.Add(1) })
		stop()
		c.Close()
		if i%2 == 0 {
			s.Close() // its number is free for the next one
		} else {
			defer s.Close() // still open when its client's leaving is heard
		}
	}
	s, c := pair(t, ln) // likely on a descriptor number used above
	defer s.Close()
	gone := make(chan struct{})
	watchDeparture(s, func() { close(gone) })
	c.Close()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the last client left unnoticed")
	}
	if n := stale.Load(); n != 0 {
		t.Fatalf("%d stopped watches heard a departure", n)
	}
}

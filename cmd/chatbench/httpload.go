package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// httpLoad is the REST load generator: keep-alive HTTP/1.1 connections,
// each sending a prepared request and reading the answer with net/http's
// response parser. Like wrk, it spends little CPU of its own, so the shared
// cores go to the server under test. net/http's Client, with its two
// goroutines per connection and its pool, cost about as much CPU per call
// as the server's whole REST path (see BENCHMARKS.md), and so measured the
// client as much as the server.
type httpLoad struct {
	addr string
	req  []byte
	free chan *httpConn
}

type httpConn struct {
	c net.Conn
	r *bufio.Reader
}

// newHTTPLoad prepares method path with a JSON body, for up to conns
// connections to addr.
func newHTTPLoad(addr, method, path string, body []byte, conns int) *httpLoad {
	req := fmt.Appendf(nil, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		method, path, addr, len(body))
	return &httpLoad{addr: addr, req: append(req, body...), free: make(chan *httpConn, conns)}
}

// do sends the request once and reads the whole answer; anything but 200
// is an error. A connection that failed is closed, not reused.
func (h *httpLoad) do() error {
	var hc *httpConn
	select {
	case hc = <-h.free:
	default:
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			return err
		}
		hc = &httpConn{c: c, r: bufio.NewReaderSize(c, 4096)}
	}
	_ = hc.c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := h.roundTrip(hc)
	if err != nil {
		hc.c.Close()
		return err
	}
	h.free <- hc
	if resp != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp)
	}
	return nil
}

func (h *httpLoad) roundTrip(hc *httpConn) (int, error) {
	if _, err := hc.c.Write(h.req); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(hc.r, nil)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, err
}

// close closes the idle connections.
func (h *httpLoad) close() {
	for {
		select {
		case hc := <-h.free:
			hc.c.Close()
		default:
			return
		}
	}
}

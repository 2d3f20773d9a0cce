package web_test

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/adapters/web"
	"github.com/chatrelay/chatrelay/internal/clock"
)

// On HTTP/1.1 the stream takes the connection over: the handler returns,
// events still arrive, a heartbeat comes with the clock, the client
// leaving is noticed, and Close ends the response.
func TestStreamTakesTheConnectionOver(t *testing.T) {
	clk := clock.NewFake(epoch)
	streams := make(chan *web.Stream, 1)
	gone := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "r1")
		s := web.NewStream(w, clk, 15*time.Second, func() { close(gone) })
		if err := s.Open(); err != nil || !s.TakenOver() {
			t.Errorf("Open = %v, taken over %v", err, s.TakenOver())
		}
		streams <- s // and return: the stream has the connection
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" ||
		resp.Header.Get("X-Request-Id") != "r1" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("response %d %v", resp.StatusCode, resp.Header)
	}
	s := <-streams
	body := bufio.NewReader(resp.Body)
	want := func(lines ...string) {
		t.Helper()
		for _, w := range lines {
			got, err := body.ReadString('\n')
			if err != nil || got != w+"\n" {
				t.Fatalf("read %q, %v; want %q", got, err, w)
			}
		}
	}
	want("retry: 2000", "")
	if err := s.Event("msg_1", "", []byte(`{"id":"msg_1"}`)); err != nil {
		t.Fatal(err)
	}
	want("id: msg_1", `data: {"id":"msg_1"}`, "")
	if err := s.Event("", "ended", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	want("event: ended", "data: {}", "")
	clk.Advance(15 * time.Second)
	want(":", "")

	resp.Body.Close() // the client leaves
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the client leaving was not noticed")
	}
	s.Close()
	if err := s.Event("msg_2", "", []byte(`{}`)); err == nil {
		t.Fatal("an event after Close was written")
	}
}

// Where the connection cannot be taken over, the stream writes through
// the ResponseWriter.
func TestStreamWritesThroughTheResponseWhenItCannotTakeTheConnection(t *testing.T) {
	rec := httptest.NewRecorder() // cannot hijack
	s := web.NewStream(rec, clock.NewFake(epoch), time.Minute, func() { t.Error("gone without a connection taken") })
	if err := s.Open(); err != nil || s.TakenOver() {
		t.Fatalf("Open = %v, taken over %v", err, s.TakenOver())
	}
	if err := s.Event("msg_1", "", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	body, _ := io.ReadAll(rec.Result().Body)
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/event-stream; charset=utf-8" ||
		string(body) != "retry: 2000\n\nid: msg_1\ndata: {}\n\n" || !rec.Flushed {
		t.Fatalf("%d %v %q", rec.Code, rec.Header(), body)
	}
}

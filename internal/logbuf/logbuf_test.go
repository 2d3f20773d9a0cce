package logbuf

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	n  int // writes
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Lines are batched into few writes, reach the output within the interval,
// and nothing is lost on Close.
func TestWriterBatchesFlushesAndCloses(t *testing.T) {
	out := &syncBuffer{}
	w := New(out, 4096, 20*time.Millisecond)
	for range 100 {
		_, _ = w.Write([]byte("a line\n"))
	}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String(), "\n") < 100 {
		if time.Now().After(deadline) {
			t.Fatalf("after the interval, %d lines out", strings.Count(out.String(), "\n"))
		}
		time.Sleep(5 * time.Millisecond) // polling for the ticker's flush, with a deadline
	}
	out.mu.Lock()
	writes := out.n
	out.mu.Unlock()
	if writes > 2 {
		t.Fatalf("100 lines took %d writes", writes)
	}
	_, _ = w.Write([]byte("last\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out.String(), "last\n") {
		t.Fatal("Close lost the buffered line")
	}
	_, _ = w.Write([]byte("after\n"))
	if !strings.HasSuffix(out.String(), "after\n") {
		t.Fatal("a write after Close was not written through")
	}
}

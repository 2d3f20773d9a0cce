package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseGCTrace(t *testing.T) {
	for _, tc := range []struct {
		line string
		took time.Duration
		ok   bool
	}{
		{"gc 13 @22.581s 8%: 8.3+1075+0.092 ms clock, 16+858/547/26+0.18 ms cpu, 1244->1311->533 MB, 1400 MB goal, 420 MB stacks, 0 MB globals, 2 P\n", 1083392 * time.Microsecond, true},
		{"gc 1 @0.012s 2%: 0.010+0.50+0.002 ms clock, 0.020+0.1/0.2/0+0.004 ms cpu, 3->3->0 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 2 P (forced)\n", 512 * time.Microsecond, true},
		{"time=2026-11-21T22:25:56.936Z level=ERROR msg=\"gc of something\"\n", 0, false},
		{"gc 2 @1s 1%: x+1+1 ms clock\n", 0, false},
		{"gc\n", 0, false},
	} {
		took, ok := parseGCTrace(tc.line)
		if ok != tc.ok || (ok && (took-tc.took).Abs() > time.Microsecond) {
			t.Errorf("parseGCTrace(%q) = %v, %v; want %v, %v", tc.line, took, ok, tc.took, tc.ok)
		}
	}
}

// gcLog keeps trace lines split across writes, counts only the
// collections that overlap a window, and passes other lines on.
func TestGCLogCountsCollectionsInAWindow(t *testing.T) {
	g := &gcLog{}
	before := time.Now()
	trace := "gc 7 @3.0s 5%: 0.1+40+0.1 ms clock, 0 ms cpu, 10->11->5 MB, 12 MB goal, 0 MB stacks, 0 MB globals, 2 P\n"
	half := len(trace) / 2
	for _, chunk := range []string{trace[:half], trace[half:]} {
		if _, err := g.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	after := time.Now()
	if got := g.during(before, after); !strings.HasPrefix(got, "1 GC on A") || !strings.Contains(got, "40ms") {
		t.Errorf("a collection inside the window: %q", got)
	}
	if got := g.during(after.Add(time.Second), after.Add(2*time.Second)); got != "no GC on A in the window" {
		t.Errorf("a window after the collection: %q", got)
	}
	if len(g.ends) != 1 || len(g.partial) != 0 {
		t.Errorf("%d collections noted and %d bytes left over, want 1 and 0", len(g.ends), len(g.partial))
	}
}

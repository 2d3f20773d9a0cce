package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"
)

// recorder collects latencies from many goroutines.
type recorder struct {
	mu     sync.Mutex
	lat    []time.Duration
	errors int
	first  error
}

func (r *recorder) add(d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errors++
		if r.first == nil {
			r.first = err
		}
		return
	}
	r.lat = append(r.lat, d)
}

// row is one line of a result table.
type row struct {
	name       string
	n          int // the scenario's size parameter, when it has one
	ops        int
	elapsed    time.Duration
	p50, p90   time.Duration
	p99, max   time.Duration
	errors     int
	firstErr   error
	rssBytes   int64
	cpu        time.Duration // the server's CPU time over the measured calls, when measured
	extra      string        // scenario-specific figure, e.g. RSS per listener
	ratio      float64
	ratioLabel string
}

func (r *recorder) row(name string, n int, elapsed time.Duration) row {
	r.mu.Lock()
	defer r.mu.Unlock()
	lat := slices.Clone(r.lat)
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	out := row{name: name, n: n, ops: len(lat), elapsed: elapsed, errors: r.errors, firstErr: r.first,
		p50: q(0.50), p90: q(0.90), p99: q(0.99)}
	if len(lat) > 0 {
		out.max = lat[len(lat)-1]
	}
	return out
}

// cpuPerOp is the server's CPU time per measured call, or 0.
func (r row) cpuPerOp() time.Duration {
	if r.ops == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.ops)
}

func (r row) throughput() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ops) / r.elapsed.Seconds()
}

// printTable writes one scenario's rows.
func printTable(w io.Writer, title string, rows []row) {
	fmt.Fprintf(w, "\n## %s\n\n", title)
	fmt.Fprintln(w, "| case | N | ops/s | p50 | p90 | p99 | max | errors | server RSS | notes |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		n := "-"
		if r.n > 0 {
			n = fmt.Sprint(r.n)
		}
		notes := r.extra
		if r.ratioLabel != "" {
			notes = strings.TrimSpace(fmt.Sprintf("%s %s = %.2f", notes, r.ratioLabel, r.ratio))
		}
		if r.firstErr != nil {
			notes = strings.TrimSpace(notes + " first error: " + r.firstErr.Error())
		}
		fmt.Fprintf(w, "| %s | %s | %.0f | %s | %s | %s | %s | %d | %s | %s |\n",
			r.name, n, r.throughput(), dur(r.p50), dur(r.p90), dur(r.p99), dur(r.max), r.errors, mib(r.rssBytes), notes)
	}
}

func dur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	default:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
}

func mib(b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

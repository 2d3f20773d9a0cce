// Package browsertest runs a real headless Chromium for tests, driven over
// the DevTools protocol with chromedp. Like redistest with Redis, a test
// skips where Chromium is not installed, except under CI=true (as .ci/run
// runs), where it fails: CI installs Debian's chromium.
package browsertest

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Browser is one Chromium process with a fresh profile.
type Browser struct {
	t     testing.TB
	alloc context.Context
}

// executables are the names Chromium is installed under.
var executables = []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"}

// New starts Chromium for t, headless, with a user-data directory of its
// own; it is stopped when t ends.
func New(t testing.TB) *Browser {
	t.Helper()
	var path string
	for _, name := range executables {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is required in CI (CI=true) but not installed: apt-get install -y chromium")
		}
		t.Skip("chromium is not installed; install it (apt-get install chromium) to run the browser tests")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(900, 760),
	}
	alloc, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	return &Browser{t: t, alloc: alloc}
}

// Tab is one page of the browser, for test t. It records what the page
// reports as an error: uncaught exceptions, console errors and security
// (Content-Security-Policy) violations.
type Tab struct {
	t   testing.TB
	ctx context.Context

	mu       sync.Mutex
	problems []string
}

// Tab opens a tab, closed when t ends.
func (b *Browser) Tab(t testing.TB) *Tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.alloc)
	t.Cleanup(cancel)
	tab := &Tab{t: t, ctx: ctx}
	// The first action starts the browser and the tab; the console is
	// read from then on, before any page loads.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			tab.note(m)
		}
	}()
	return tab
}

// note keeps a console message that is a problem. The network's errors are
// expected where a test cuts the connection; an exception, a script's
// error or a policy violation never is.
func (tab *Tab) note(m chromedp.ConsoleMessage) {
	switch {
	case m.IsException(),
		m.Source == "" && m.Type == chromedp.ConsoleError,
		m.Source == "security",
		strings.Contains(m.Text, "Content Security Policy"),
		m.Source == "javascript" && m.Type == chromedp.ConsoleError:
	default:
		return
	}
	tab.mu.Lock()
	defer tab.mu.Unlock()
	tab.problems = append(tab.problems, m.String())
}

// Problems are the errors the page reported so far.
func (tab *Tab) Problems() []string {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	return append([]string(nil), tab.problems...)
}

// Run runs actions in the tab, failing the test after 30 s.
func (tab *Tab) Run(actions ...chromedp.Action[chromedp.Void]) {
	tab.t.Helper()
	ctx, cancel := context.WithTimeout(tab.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		tab.t.Fatalf("browser: %v (page problems: %v)", err, tab.Problems())
	}
}

// WaitFor polls the JavaScript expression in the page until it is true,
// failing after 30 s with what.
func (tab *Tab) WaitFor(what, expr string) {
	tab.t.Helper()
	ctx, cancel := context.WithTimeout(tab.ctx, 30*time.Second)
	defer cancel()
	ok, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(20*time.Millisecond)))
	if err != nil || !ok {
		tab.t.Fatalf("browser: waiting for %s (%s): %v (page problems: %v)", what, expr, err, tab.Problems())
	}
}

// Eval is the value of the expression in the page.
func Eval[T any](tab *Tab, expr string) T {
	tab.t.Helper()
	ctx, cancel := context.WithTimeout(tab.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		tab.t.Fatalf("browser: evaluating %s: %v (page problems: %v)", expr, err, tab.Problems())
	}
	return v
}

// Screenshot writes the page as it shows now to name.png in the test's
// temporary directory (and to $CHATRELAY_SCREENSHOTS, when set, to keep),
// and fails the test if the picture is blank: one colour, or nearly.
func (tab *Tab) Screenshot(dir, name string) string {
	tab.t.Helper()
	ctx, cancel := context.WithTimeout(tab.ctx, 30*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		tab.t.Fatalf("browser: screenshot: %v", err)
	}
	file := filepath.Join(dir, name+".png")
	if err := os.WriteFile(file, buf, 0o644); err != nil {
		tab.t.Fatal(err)
	}
	if keep := os.Getenv("CHATRELAY_SCREENSHOTS"); keep != "" {
		if err := os.WriteFile(filepath.Join(keep, name+".png"), buf, 0o644); err != nil {
			tab.t.Fatal(err)
		}
	}
	if colours, err := distinctColours(buf); err != nil || colours < 16 {
		tab.t.Fatalf("screenshot %s is blank: %d colours (%v)", file, colours, err)
	}
	tab.t.Logf("screenshot: %s", file)
	return file
}

// distinctColours counts the colours of a PNG, up to 1000.
func distinctColours(data []byte) (int, error) {
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		return 0, err
	}
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			if seen[[4]uint32{r, g, bl, a}] = true; len(seen) >= 1000 {
				return len(seen), nil
			}
		}
	}
	return len(seen), nil
}

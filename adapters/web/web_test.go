package web_test

import (
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/adapters/web"
	"github.com/chatrelay/chatrelay/internal/clock"
)

const secret = "0123456789abcdef0123456789abcdef"

var epoch = time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)

func TestTokensMintAndVerify(t *testing.T) {
	clk := clock.NewFake(epoch)
	tokens, err := web.NewTokens([]byte(secret), clk)
	if err != nil {
		t.Fatal(err)
	}
	claims := web.Claims{Tenant: "acme", SessionID: "ses_1", Expires: epoch.Add(time.Hour)}
	tok := tokens.Mint(claims)
	got, err := tokens.Verify(tok)
	if err != nil || got != (web.Claims{Tenant: "acme", SessionID: "ses_1", Expires: time.UnixMilli(epoch.Add(time.Hour).UnixMilli())}) {
		t.Fatalf("Verify = %+v, %v", got, err)
	}
	// Another replica with the same secret accepts it.
	twin, _ := web.NewTokens([]byte(secret), clk)
	if _, err := twin.Verify(tok); err != nil {
		t.Fatalf("a replica with the same secret: %v", err)
	}

	parts := strings.Split(tok, ".")
	forge := func(claims string) string {
		return parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(claims)) + "." + parts[2]
	}
	// The signature's last character carries two bits that are not the
	// signature's: flipped, a lax decoder reads the same bytes.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, parts[2][len(parts[2])-1])
	respelled := parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-1] + string(alphabet[last^1])
	other, _ := web.NewTokens([]byte(strings.Repeat("z", 32)), clk)
	for name, bad := range map[string]string{
		"signature respelled":     respelled,
		"another secret's":        other.Mint(claims),
		"claims changed":          forge(`{"tenant":"acme","session_id":"ses_2","exp":1777626000000}`),
		"signature cut":           parts[0] + "." + parts[1] + "." + parts[2][:10],
		"no signature":            parts[0] + "." + parts[1],
		"another version":         "v2." + parts[1] + "." + parts[2],
		"empty":                   "",
		"oversized":               tok + strings.Repeat("A", web.MaxTokenBytes),
		"signature not base64url": parts[0] + "." + parts[1] + ".!!!",
	} {
		if _, err := tokens.Verify(bad); !errors.Is(err, web.ErrForged) {
			t.Errorf("%s token: %v, want ErrForged", name, err)
		}
	}

	clk.Advance(time.Hour - time.Millisecond)
	if _, err := tokens.Verify(tok); err != nil {
		t.Fatalf("a millisecond before expiry: %v", err)
	}
	clk.Advance(time.Millisecond)
	if _, err := tokens.Verify(tok); !errors.Is(err, web.ErrExpired) {
		t.Fatalf("at expiry: %v, want ErrExpired", err)
	}
}

func TestTokensNeedALongSecret(t *testing.T) {
	if _, err := web.NewTokens([]byte(secret[:31]), clock.Real{}); err == nil {
		t.Fatal("a 31-byte secret was accepted")
	}
}

func get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	web.Assets().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Result(), string(body)
}

func TestWidgetScriptIsSmallAndCSPSafe(t *testing.T) {
	resp, js := get(t, "/widget.js")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") ||
		resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("ETag") == "" {
		t.Fatalf("GET /widget.js: %d %v", resp.StatusCode, resp.Header)
	}
	if len(js) >= 15<<10 {
		t.Fatalf("widget.js is %d bytes; the budget is 15 KiB unminified", len(js))
	}
	// What a strict CSP forbids, or what would let a message's text run as
	// markup.
	for _, banned := range []string{"eval(", "new Function", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "setAttribute('style'", ".style."} {
		if strings.Contains(js, banned) {
			t.Errorf("widget.js uses %s", banned)
		}
	}
	if regexp.MustCompile(`setTimeout\(\s*['"]`).MatchString(js) {
		t.Error("widget.js passes a string to setTimeout")
	}
}

func TestDemoPageHasAStrictCSPAndNoInlineScript(t *testing.T) {
	resp, page := get(t, `/widget/demo?token=v1.abc"><script>alert(1)</script>`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Security-Policy") != web.DemoCSP || resp.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("GET /widget/demo: %d %v", resp.StatusCode, resp.Header)
	}
	for _, directive := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'"} {
		if !strings.Contains(web.DemoCSP, directive) {
			t.Errorf("the CSP lacks %s", directive)
		}
	}
	if strings.Contains(web.DemoCSP, "unsafe") {
		t.Errorf("the CSP allows something unsafe: %s", web.DemoCSP)
	}
	// Every script has a src and an empty body; nothing has a style
	// attribute or an inline handler.
	for _, m := range regexp.MustCompile(`(?s)<script([^>]*)>(.*?)</script>`).FindAllStringSubmatch(page, -1) {
		if !strings.Contains(m[1], `src="/widget.js"`) || strings.TrimSpace(m[2]) != "" {
			t.Errorf("inline script: %s", m[0])
		}
	}
	if regexp.MustCompile(`(?i)\son[a-z]+=|\sstyle=|<style`).MatchString(page) {
		t.Errorf("inline style or handler in the page:\n%s", page)
	}
	if !strings.Contains(page, `data-token="v1.abc&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"`) {
		t.Errorf("the token is not escaped into its attribute:\n%s", page)
	}

	_, bare := get(t, "/widget/demo")
	if strings.Contains(bare, "<script") || !strings.Contains(bare, "widget-tokens") {
		t.Errorf("without a token the page should say how to get one:\n%s", bare)
	}
	if resp, css := get(t, "/widget/demo.css"); resp.StatusCode != 200 || !strings.Contains(css, "body") {
		t.Errorf("GET /widget/demo.css: %d", resp.StatusCode)
	}
}

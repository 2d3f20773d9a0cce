// Package web is the built-in web widget (docs/design.md §12): the script a
// site embeds with one tag (/widget.js), a demo page that embeds it
// (/widget/demo), the tokens that bind a visitor's page to one web session,
// and the Server-Sent Events stream the page listens on. The server serves
// the widget's endpoints (/widget/v1/…) with these, on its own session
// machinery: web sessions need no platform account.
package web

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"html/template"
	"net/http"
	"time"
)

// The files are embedded, so the binary serves them as built.
var (
	//go:embed widget.js
	widgetJS []byte
	//go:embed demo.css
	demoCSS []byte
	//go:embed demo.html
	demoHTML string
)

var demoPage = template.Must(template.New("demo").Parse(demoHTML))

// DemoCSP is the demo page's Content-Security-Policy: nothing inline,
// nothing from elsewhere. The widget works under it, as it must on any
// site with a strict policy.
const DemoCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Assets serves GET /widget.js, /widget/demo and /widget/demo.css.
func Assets() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /widget.js", static("text/javascript; charset=utf-8", widgetJS))
	mux.Handle("GET /widget/demo.css", static("text/css; charset=utf-8", demoCSS))
	mux.HandleFunc("GET /widget/demo", demo)
	return mux
}

// static serves a file that changes only with the binary: cacheable for a
// few minutes, revalidated by its hash. Any site may load it (a script tag
// with crossorigin, or a page that requires CORP).
func static(contentType string, body []byte) http.Handler {
	sum := sha256.Sum256(body)
	etag := `"` + hex.EncodeToString(sum[:8]) + `"`
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Cache-Control", "public, max-age=300")
		h.Set("ETag", etag)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Cross-Origin-Resource-Policy", "cross-origin")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	})
}

// demo is a page that embeds the widget for the session of ?token=; it has
// no inline script or style, and says so in its Content-Security-Policy.
// The token is in the page's address, so the page sends no Referer.
func demo(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", DemoCSP)
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	token := r.URL.Query().Get("token")
	if len(token) > MaxTokenBytes {
		token = ""
	}
	_ = demoPage.Execute(w, struct{ Token string }{token})
}

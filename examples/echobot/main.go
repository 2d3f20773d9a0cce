// Command echobot is a chatbot that runs on a webhook (docs/design.md
// §9), in a few dozen lines: it checks each delivery's Standard Webhooks
// signature, answers every message with its echo, and ends the
// conversation on "bye". It logs each delivery it takes, headers and body,
// and its answer.
//
//	ECHOBOT_SECRET=whsec_... go run ./examples/echobot -addr 127.0.0.1:9810
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9810", "listen address")
	flag.Parse()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(os.Getenv("ECHOBOT_SECRET"), "whsec_"))
	if err != nil || len(key) == 0 {
		log.Fatal("ECHOBOT_SECRET must be the chatbot's secret, whsec_<base64>")
	}
	http.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if !verified(key, r.Header, body) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		log.Printf("webhook-id: %s\nwebhook-timestamp: %s\nwebhook-signature: %s\n%s", r.Header.Get("webhook-id"),
			r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body)
		var ev struct {
			Type    string `json:"type"`
			Message struct {
				Text string `json:"text"`
			} `json:"message"`
		}
		if json.Unmarshal(body, &ev) != nil || ev.Type != "message.received" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		answer, _ := json.Marshal(map[string]any{
			"replies": []map[string]string{{"text": "echo: " + ev.Message.Text}},
			"end":     strings.EqualFold(strings.TrimSpace(ev.Message.Text), "bye"),
		})
		log.Printf("answered 200 %s", answer)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(answer)
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}

// verified checks a Standard Webhooks signature: a `v1,` base64
// HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}" among those
// listed, and a timestamp within 5 minutes.
func verified(key []byte, h http.Header, body []byte) bool {
	id, ts := h.Get("webhook-id"), h.Get("webhook-timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if id == "" || err != nil || time.Since(time.Unix(sec, 0)).Abs() > 5*time.Minute {
		return false
	}
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "%s.%s.%s", id, ts, body)
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	for _, sig := range strings.Fields(h.Get("webhook-signature")) {
		if hmac.Equal([]byte(sig), []byte(want)) {
			return true
		}
	}
	return false
}

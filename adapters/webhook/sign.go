package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The Standard Webhooks headers (https://www.standardwebhooks.com).
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// Tolerance is how far a webhook's timestamp may be from the receiver's
// clock, either way, before it is refused as a replay.
const Tolerance = 5 * time.Minute

// Why Verify refused a webhook.
var (
	ErrUnsigned     = errors.New("webhook: missing webhook-id, webhook-timestamp or webhook-signature")
	ErrStale        = errors.New("webhook: timestamp outside the tolerance")
	ErrBadSignature = errors.New("webhook: no valid signature")
)

// Keys are the secrets of one integration: one, or while it is rotated,
// the new and the old. A sender signs with each (the webhook-signature
// header lists every signature); a receiver accepts a signature by any.
type Keys [][]byte

// ParseKeys reads secrets written `whsec_<base64>`, several separated by
// spaces while rotating. An empty or short key is refused: an HMAC under
// an empty key is a signature anyone can make.
func ParseKeys(s string) (Keys, error) {
	var ks Keys
	for _, f := range strings.Fields(s) {
		b64, ok := strings.CutPrefix(f, "whsec_")
		if !ok {
			return nil, errors.New("webhook: a secret is written whsec_<base64>")
		}
		k, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return nil, fmt.Errorf("webhook: a secret's base64: %w", err)
		}
		if len(k) < 16 {
			return nil, fmt.Errorf("webhook: a secret of %d bytes; at least 16 (Standard Webhooks recommends 24 to 64)", len(k))
		}
		ks = append(ks, k)
	}
	if len(ks) == 0 {
		return nil, errors.New("webhook: the secret is empty")
	}
	return ks, nil
}

// signature is `v1,` and the base64 HMAC-SHA256 under key of
// `{id}.{timestamp}.{body}`.
func signature(key []byte, id, ts string, body []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Sign sets the three headers of a webhook with id, sent at at, on h: one
// signature per key, separated by spaces.
func (ks Keys) Sign(h http.Header, id string, at time.Time, body []byte) {
	ts := strconv.FormatInt(at.Unix(), 10)
	sigs := make([]string, len(ks))
	for i, k := range ks {
		sigs[i] = signature(k, id, ts, body)
	}
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, ts)
	h.Set(HeaderSignature, strings.Join(sigs, " "))
}

// Verify checks a webhook's headers against its raw body at now: the
// timestamp within Tolerance, and one of the listed signatures made by one
// of ks. It answers the webhook's id.
func (ks Keys) Verify(h http.Header, body []byte, now time.Time) (string, error) {
	id, ts, sigs := h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature)
	if id == "" || ts == "" || sigs == "" {
		return "", ErrUnsigned
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", ErrStale
	}
	if d := now.Sub(time.Unix(sec, 0)); d > Tolerance || d < -Tolerance {
		return "", ErrStale
	}
	for _, k := range ks {
		if len(k) == 0 {
			continue
		}
		want := []byte(signature(k, id, ts, body))
		for _, got := range strings.Fields(sigs) {
			if hmac.Equal([]byte(got), want) {
				return id, nil
			}
		}
	}
	return "", ErrBadSignature
}

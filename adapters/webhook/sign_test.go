package webhook

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/adapters"
)

// The example of the Standard Webhooks specification: its secret, id,
// timestamp and body sign to its signature.
func TestSignatureMatchesTheSpecification(t *testing.T) {
	ks, err := ParseKeys("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	body := []byte(`{"test": 2432232314}`)
	ks.Sign(h, "msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), body)
	if got, want := h.Get(HeaderSignature), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("signature %s, want %s", got, want)
	}
	if id, err := ks.Verify(h, body, time.Unix(1614265330+299, 0)); err != nil || id != "msg_p5jXN8AQM9LWM0D4loKWxJek" {
		t.Fatalf("Verify: %q %v", id, err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	now := time.Now()
	old, _ := ParseKeys("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	cur, _ := ParseKeys("whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0")
	body := []byte(`{"text":"hi"}`)
	signed := func(ks Keys, at time.Time) http.Header {
		h := http.Header{}
		ks.Sign(h, "msg_1", at, body)
		return h
	}
	for name, c := range map[string]struct {
		h    http.Header
		body []byte
		want error
	}{
		"unsigned":                 {http.Header{}, body, ErrUnsigned},
		"by another secret":        {signed(old, now), body, ErrBadSignature},
		"stale":                    {signed(cur, now.Add(-Tolerance-time.Second)), body, ErrStale},
		"from the future":          {signed(cur, now.Add(Tolerance+time.Second)), body, ErrStale},
		"with a changed body":      {signed(cur, now), []byte(`{"text":"ho"}`), ErrBadSignature},
		"with a timestamp not int": {func() http.Header { h := signed(cur, now); h.Set(HeaderTimestamp, "soon"); return h }(), body, ErrStale},
	} {
		if _, err := cur.Verify(c.h, c.body, now); err != c.want {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	// Rotation: the sender signs with both; a receiver holding either
	// accepts, and one holding both accepts either sender.
	both := Keys{cur[0], old[0]}
	h := signed(both, now)
	if n := len(strings.Fields(h.Get(HeaderSignature))); n != 2 {
		t.Fatalf("%d signatures with two secrets", n)
	}
	for _, ks := range []Keys{old, cur} {
		if _, err := ks.Verify(h, body, now); err != nil {
			t.Errorf("a receiver with one of the secrets: %v", err)
		}
		if _, err := both.Verify(signed(ks, now), body, now); err != nil {
			t.Errorf("a receiver with both: %v", err)
		}
	}
	// An empty key signs nothing anyone could not.
	if _, err := (Keys{{}}).Verify(signed(Keys{{}}, now), body, now); err != ErrBadSignature {
		t.Errorf("an empty key verified: %v", err)
	}
}

func TestParseKeys(t *testing.T) {
	for _, bad := range []string{"", "  ", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_!!!", "whsec_c2hvcnQ="} {
		if _, err := ParseKeys(bad); err == nil {
			t.Errorf("%q was taken", bad)
		}
	}
	ks, err := ParseKeys("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0")
	if err != nil || len(ks) != 2 {
		t.Fatalf("two secrets: %d, %v", len(ks), err)
	}
}

// Retry-After is read as seconds or an HTTP date, and holds a delivery at
// most adapters.MaxRetryAfter.
func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"120":                           2 * time.Minute,
		"0":                             0,
		"-5":                            0,
		"86400":                         adapters.MaxRetryAfter,
		"Fri, 01 May 2026 09:30:00 GMT": 30 * time.Minute,
		"Fri, 01 May 2026 08:00:00 GMT": 0,
	} {
		if got, ok := retryAfter(v, now); !ok || got != want {
			t.Errorf("Retry-After %q: %v %v, want %v", v, got, ok, want)
		}
	}
	for _, v := range []string{"", "soon", "1.5"} {
		if _, ok := retryAfter(v, now); ok {
			t.Errorf("Retry-After %q was read", v)
		}
	}
}

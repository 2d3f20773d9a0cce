package web

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/internal/clock"
)

// A widget token is "v1.<claims>.<signature>": the claims are JSON,
// base64url without padding, readable by the widget (it learns its
// session from them); the signature is HMAC-SHA256 over "v1.<claims>" with
// the deployment's secret, so any replica that shares the secret accepts
// what another minted, and nobody without it can make one.

const tokenVersion = "v1"

// MinSecretBytes is the shortest secret accepted: 256 bits, as the HMAC.
const MinSecretBytes = 32

// MaxTokenBytes bounds a token the server will look at; a minted one is
// far shorter.
const MaxTokenBytes = 1024

// Errors of Verify. Both are the caller's to answer 401.
var (
	ErrForged  = errors.New("the widget token is not one this deployment signed")
	ErrExpired = errors.New("the widget token has expired")
)

// Claims are what a token grants: one session of one tenant, until Expires
// (millisecond precision).
type Claims struct {
	Tenant    string
	SessionID string
	Expires   time.Time
}

type wireClaims struct {
	Tenant    string `json:"tenant"`
	SessionID string `json:"session_id"`
	Expires   int64  `json:"exp"` // Unix milliseconds
}

// Tokens mints and verifies widget tokens. It is safe for concurrent use.
type Tokens struct {
	secret []byte
	clock  clock.Clock
}

// NewTokens signs with secret, at least MinSecretBytes long, and judges
// expiry by clk.
func NewTokens(secret []byte, clk clock.Clock) (*Tokens, error) {
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("the widget secret is %d bytes; it must be at least %d", len(secret), MinSecretBytes)
	}
	return &Tokens{secret: append([]byte(nil), secret...), clock: clk}, nil
}

// Mint signs c.
func (t *Tokens) Mint(c Claims) string {
	payload, _ := json.Marshal(wireClaims{Tenant: c.Tenant, SessionID: c.SessionID, Expires: c.Expires.UnixMilli()})
	signed := tokenVersion + "." + base64.RawURLEncoding.EncodeToString(payload)
	return signed + "." + base64.RawURLEncoding.EncodeToString(t.sign(signed))
}

// Verify checks token's signature, then its expiry, and returns its
// claims: ErrForged for anything this deployment did not sign (a bad
// signature, a malformed or oversized token, another version), ErrExpired
// for a genuine token past its time.
func (t *Tokens) Verify(token string) (Claims, error) {
	if len(token) > MaxTokenBytes {
		return Claims{}, ErrForged
	}
	version, rest, ok1 := strings.Cut(token, ".")
	payload, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || version != tokenVersion {
		return Claims{}, ErrForged
	}
	got, err := base64.RawURLEncoding.Strict().DecodeString(sig)
	if err != nil || !hmac.Equal(got, t.sign(version+"."+payload)) {
		return Claims{}, ErrForged
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(payload)
	if err != nil {
		return Claims{}, ErrForged
	}
	var w wireClaims
	if err := json.Unmarshal(raw, &w); err != nil || w.Tenant == "" || w.SessionID == "" {
		return Claims{}, ErrForged
	}
	c := Claims{Tenant: w.Tenant, SessionID: w.SessionID, Expires: time.UnixMilli(w.Expires)}
	if !t.clock.Now().Before(c.Expires) {
		return Claims{}, ErrExpired
	}
	return c, nil
}

func (t *Tokens) sign(s string) []byte {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte(s))
	return m.Sum(nil)
}

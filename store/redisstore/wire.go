package redisstore

import (
	"encoding/json"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/chatrelay/chatrelay/internal/jsonw"
	"github.com/chatrelay/chatrelay/store"
)

// messageSuffix is the JSON of wireBody without its opening brace, for a
// script to complete. It writes what encoding/json writes for wireBody,
// byte for byte (TestMessageSuffixIsEncodingJSON), without reflection: it
// runs for every message, and encoding/json was 3% of the server's CPU on
// a Redis post. A raw payload, which encoding/json validates and
// compacts, is left to encoding/json.
func messageSuffix(m *store.Message) (string, error) {
	if len(m.Raw) > 0 {
		return marshalSuffix(m)
	}
	b := make([]byte, 0, 48+len(m.Text)+len(m.FromUser))
	b = append(b, `"dir":`...)
	b = strconv.AppendInt(b, int64(m.Direction), 10)
	b = append(b, `,"text":`...)
	b = appendJSONString(b, m.Text)
	if m.FromUser != "" {
		b = append(b, `,"from":`...)
		b = appendJSONString(b, m.FromUser)
	}
	b = append(b, `,"st":`...)
	b = strconv.AppendInt(b, int64(m.Status), 10)
	if len(m.Metadata) > 0 {
		b = append(b, `,"md":{`...)
		keys := make([]string, 0, len(m.Metadata))
		for k := range m.Metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, m.Metadata[k])
		}
		b = append(b, '}')
	}
	if m.Error != nil {
		if m.Error.Code != "" {
			b = append(b, `,"ec":`...)
			b = appendJSONString(b, m.Error.Code)
		}
		if m.Error.Message != "" {
			b = append(b, `,"em":`...)
			b = appendJSONString(b, m.Error.Message)
		}
	}
	return string(append(b, '}')), nil
}

// marshalSuffix is messageSuffix through encoding/json.
func marshalSuffix(m *store.Message) (string, error) {
	w := wireBody{Direction: int(m.Direction), Text: m.Text, FromUser: m.FromUser, Status: int(m.Status), Metadata: m.Metadata, Raw: m.Raw}
	if m.Error != nil {
		w.ErrCode, w.ErrMsg = m.Error.Code, m.Error.Message
	}
	b, err := json.Marshal(w)
	if err != nil {
		return "", err
	}
	return string(b[1:]), nil
}

// appendJSONString quotes s as encoding/json does: '"', '\\', control
// characters, and (HTML-safe) '<', '>', '&', U+2028 and U+2029 escaped, and
// each byte of invalid UTF-8 written as U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= ' ' && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			b = jsonw.AppendEscapedASCII(b, c) // '<', '>' and '&' as \u00XX
			i++
			start = i
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', "0123456789abcdef"[r&0xf])
		default:
			i += n
			continue
		}
		i += n
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

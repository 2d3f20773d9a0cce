// Package jsonw quotes JSON strings byte for byte as protojson or
// encoding/json does, for the hand-written encoders on hot paths: the REST
// codec's, which writes what protojson writes, and the Redis store's, which
// writes what encoding/json writes.
package jsonw

import "unicode/utf8"

// Style is the encoder whose quoting AppendString reproduces.
type Style uint8

const (
	// Protojson escapes '"', '\\' and control characters only, and
	// refuses invalid UTF-8.
	Protojson Style = iota
	// EncodingJSON (with its default HTML escaping) also escapes '<', '>',
	// '&', U+2028 and U+2029, and writes each byte of invalid UTF-8 as
	// U+FFFD.
	EncodingJSON
)

// AppendString appends s quoted in style st. valid is false if s holds
// invalid UTF-8 that st refuses (Protojson); b then holds it as it is, and
// the caller must not use it.
func AppendString(b []byte, s string, st Style) (_ []byte, valid bool) {
	html, safe := st == EncodingJSON, &safeASCII[st]
	valid = true
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if safe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			b = appendEscapedASCII(b, c)
			i++
			start = i
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1 && !html:
			valid = false
		case r == utf8.RuneError && n == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			start = i + n
		case (r == '\u2028' || r == '\u2029') && html:
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			start = i + n
		}
		i += n
	}
	b = append(b, s[start:]...)
	return append(b, '"'), valid
}

// safeASCII[st][c] says whether style st writes the ASCII byte c as it is.
var safeASCII = func() (t [EncodingJSON + 1][utf8.RuneSelf]bool) {
	for c := byte(' '); c < utf8.RuneSelf; c++ {
		t[Protojson][c] = c != '"' && c != '\\'
		t[EncodingJSON][c] = t[Protojson][c] && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendEscapedASCII appends the escape of the ASCII byte c, which both
// protojson and encoding/json write the same way: '"' and '\\' with a
// backslash, \b \f \n \r \t by name, and any other byte as \u00XX.
func appendEscapedASCII(b []byte, c byte) []byte {
	switch c {
	case '"', '\\':
		return append(b, '\\', c)
	case '\b':
		return append(b, '\\', 'b')
	case '\f':
		return append(b, '\\', 'f')
	case '\n':
		return append(b, '\\', 'n')
	case '\r':
		return append(b, '\\', 'r')
	case '\t':
		return append(b, '\\', 't')
	}
	return append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
}

const hex = "0123456789abcdef"

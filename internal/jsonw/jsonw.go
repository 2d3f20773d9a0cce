// Package jsonw holds what the hand-written JSON encoders share (the
// REST codec's, which writes what protojson writes, and the Redis store's,
// which writes what encoding/json writes): the escape for an ASCII byte.
package jsonw

// AppendEscapedASCII appends the escape of the ASCII byte c, which both
// protojson and encoding/json write the same way: '"' and '\\' with a
// backslash, \b \f \n \r \t by name, and any other byte as \u00XX.
func AppendEscapedASCII(b []byte, c byte) []byte {
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

package server

// UndecodedRequests is how many requests' decoding errors the codec still
// holds: each is forgotten when its call is refused or answered.
func (s *Server) UndecodedRequests() int {
	n := 0
	s.ic.codec.failed.Range(func(any, any) bool { n++; return true })
	return n
}

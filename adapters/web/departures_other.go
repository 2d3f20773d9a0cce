//go:build !linux

package web

import "net"

// watchDeparture calls gone, once, when conn's peer goes away or sends
// anything: here with a goroutine blocked in a read (on Linux, one epoll
// set watches every stream's connection).
func watchDeparture(conn net.Conn, gone func()) (stop func()) {
	return readDeparture(conn, gone)
}

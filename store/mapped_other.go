//go:build !linux

package store

// dropMapped does nothing off Linux: brokerd runs on Linux only, the store elsewhere serves the
// offline brokerctl commands.
func dropMapped(addr, n uintptr) {}

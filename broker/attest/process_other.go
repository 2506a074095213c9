//go:build !linux

package attest

import (
	"context"
	"fmt"
)

// Pinned is a pinned caller; attestation needs Linux (pidfds, /proc), so elsewhere there is none.
type Pinned struct{}

// Pin refuses: brokerd attests callers on Linux only.
func Pin(int32, uint64, uint64) (*Pinned, error) {
	return nil, fmt.Errorf("%w: workload attestation needs Linux", ErrUnidentified)
}

// Close does nothing.
func (*Pinned) Close() {}

// InspectContext is never reached (Pin refuses).
func (*Pinned) InspectContext(context.Context, uint32, uint32, []uint32) (*Process, error) {
	return nil, fmt.Errorf("%w: workload attestation needs Linux", ErrUnidentified)
}

// Watch is never reached (Pin refuses).
func (*Pinned) Watch(<-chan struct{}, func()) (<-chan struct{}, error) {
	return nil, fmt.Errorf("%w: workload attestation needs Linux", ErrUnidentified)
}

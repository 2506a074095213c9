package store

import "unsafe"

// AlignedBuf returns n bytes (n a multiple of 4096) whose first byte is 4096-aligned, as a
// DurableFile's O_DIRECT writes need (offsets, lengths and buffers aligned to the device's logical
// block, 512 or 4096 bytes). Go's heap does not move objects, so the alignment holds.
func AlignedBuf(n int) []byte {
	b := make([]byte, n+journalBlock)
	skip := 0
	if a := int(uintptr(unsafe.Pointer(&b[0])) % journalBlock); a != 0 {
		skip = journalBlock - a
	}
	return b[skip : skip+n : skip+n]
}

package upstream

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestReadBodySizing: readBody allocates an announced length up front only up to sizedBodyMax.
// An upstream that announces more and sends little (or stalls) gets a buffer the size of what
// arrived, not of what it announced; a small announced body is read into one exact buffer.
func TestReadBodySizing(t *testing.T) {
	const max = 4 << 20
	sent := bytes.Repeat([]byte("x"), 100)
	for _, tc := range []struct {
		name     string
		length   int64
		maxCap   int // the returned slice's capacity is at most this
		wantErr  error
		wantBody bool // the 100 bytes come back
	}{
		{"exact small", 100, 100, nil, true},
		{"announced at the sized limit, short", sizedBodyMax, sizedBodyMax, io.ErrUnexpectedEOF, true},
		{"announced past the sized limit, short", sizedBodyMax + 1, 64 << 10, nil, true},
		{"announced megabytes, short", 3 << 20, 64 << 10, nil, true},
		{"unannounced", -1, 64 << 10, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := readBody(bytes.NewReader(sent), tc.length, max)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if tc.wantBody && !bytes.Equal(b, sent) {
				t.Errorf("body %d bytes, want the %d sent", len(b), len(sent))
			}
			if cap(b) > tc.maxCap {
				t.Errorf("capacity %d for %d bytes (announced %d), want at most %d", cap(b), len(b), tc.length, tc.maxCap)
			}
		})
	}
}

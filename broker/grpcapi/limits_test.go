package grpcapi

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/broker"
)

// rawH2 is an HTTP/2 client on the harness socket that writes frames by hand, so a test can send
// what a gRPC client would refuse to (an oversized header block, one that never ends).
type rawH2 struct {
	conn     net.Conn
	fr       *http2.Framer
	settings map[http2.SettingID]uint32
}

func dialRawH2(t *testing.T, sock string) *rawH2 {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second)) // bounds every wait below
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	r := &rawH2{conn: c, fr: http2.NewFramer(c, c), settings: map[http2.SettingID]uint32{}}
	if err := r.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	f, err := r.fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok {
		t.Fatalf("first server frame %T, want SETTINGS", f)
	}
	sf.ForeachSetting(func(s http2.Setting) error { r.settings[s.ID] = s.Val; return nil })
	if err := r.fr.WriteSettingsAck(); err != nil {
		t.Fatal(err)
	}
	return r
}

// headerBlock encodes a gRPC call's headers plus junk bytes of padding in one header.
func headerBlock(junk int) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", "/grpc.health.v1.Health/Check"}, {":authority", "localhost"},
		{"content-type", "application/grpc"}, {"te", "trailers"}, {"x-junk", strings.Repeat("j", junk)},
	} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return buf.Bytes()
}

// outcome reads frames until the server answers stream 1 or ends the connection and says which:
// "answered" (response HEADERS), "refused" (RST_STREAM for it, GOAWAY or EOF).
func (r *rawH2) outcome(t *testing.T) string {
	t.Helper()
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("no answer from the server within 30s")
			}
			return "refused"
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			if f.StreamID == 1 {
				return "answered"
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return "refused"
			}
		case *http2.GoAwayFrame:
			return "refused"
		}
	}
}

// The server advertises its per-connection bounds, answers a call with a normal header block, and
// refuses one whose headers are over MaxHeaderListSize (resetting the stream or, far over it,
// closing the connection), or whose header block never ends: gRPC's default let a client make
// brokerd hold 16 MiB per stream.
func TestHeaderListSizeIsBounded(t *testing.T) {
	h := newHarness(t)
	r := dialRawH2(t, h.sock)
	if got := r.settings[http2.SettingMaxHeaderListSize]; got != MaxHeaderListSize {
		t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE %d, want %d", got, MaxHeaderListSize)
	}
	if got := r.settings[http2.SettingMaxConcurrentStreams]; got != MaxConcurrentStreams {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d, want %d", got, MaxConcurrentStreams)
	}
	for _, c := range []struct {
		name string
		junk int
		want string
	}{
		{"a few KiB", 4 << 10, "answered"},
		{"just over the bound", MaxHeaderListSize + 1<<10, "refused"},
		{"15 MB", 15 << 20, "refused"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := dialRawH2(t, h.sock)
			block := headerBlock(c.junk)
			// Frames of at most the default SETTINGS_MAX_FRAME_SIZE; the writes go on in the
			// background, since the server may stop reading them.
			go func() {
				const max = 16 << 10
				first := min(len(block), max)
				if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:first], EndHeaders: first == len(block)}); err != nil {
					return
				}
				for off := first; off < len(block); off += max {
					end := min(len(block), off+max)
					if r.fr.WriteContinuation(1, end == len(block), block[off:end]) != nil {
						return
					}
				}
				r.fr.WriteData(1, true, make([]byte, 5)) // an empty request message
			}()
			if got := r.outcome(t); got != c.want {
				t.Fatalf("header block with %d junk bytes: %s, want %s", c.junk, got, c.want)
			}
		})
	}
	t.Run("never ends", func(t *testing.T) {
		// Under the bound but unfinished: the connection has no call yet, so the idle timeout
		// closes it.
		h := newHarnessOpts(t, func(c *broker.Config) { c.Economics.DefaultCacheTTL = -1 }, func(o *Options) { o.IdleTimeout = 200 * time.Millisecond })
		r := dialRawH2(t, h.sock)
		block := headerBlock(4 << 10)
		if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:2<<10]}); err != nil {
			t.Fatal(err)
		}
		// ...and the CONTINUATION with END_HEADERS never comes.
		if got := r.outcome(t); got != "refused" {
			t.Fatalf("unfinished header block: %s, want refused", got)
		}
	})
}

// A connection with no call in flight is closed after the idle timeout (the client sees it go
// idle, and reconnects for its next call).
func TestIdleConnectionIsClosed(t *testing.T) {
	h := newHarnessOpts(t, func(c *broker.Config) { c.Economics.DefaultCacheTTL = -1 }, func(o *Options) { o.IdleTimeout = 200 * time.Millisecond })
	conn, err := grpc.NewClient("unix://"+h.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for s := conn.GetState(); s == connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			t.Fatal("connection still open 30s after it went idle; the idle timeout is 200ms")
		}
	}
	// The next call reconnects.
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
}

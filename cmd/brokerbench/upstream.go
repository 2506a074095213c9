package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
)

// benchQuery starts every benchmark query.
const benchQuery = "credbroker benchmark query"

var queryCounter atomic.Uint64

// uniqueQuery returns a query no earlier call in this process sent, so a broker-side result cache
// never answers it: every call pays the upstream hop being measured.
func uniqueQuery() string {
	return benchQuery + " " + strconv.FormatUint(queryCounter.Add(1), 36)
}

// cannedBody returns the contract-A response the fake Scavio (scaviotest) gives for benchQuery with
// five results, so the benchmark upstream answers with exactly the bytes the tests' fake would.
func cannedBody(key string) ([]byte, error) {
	fake := scaviotest.NewUnstartedHandler(key)
	req := httptest.NewRequest(http.MethodPost, scaviotest.SearchPath, strings.NewReader(`{"query":"`+benchQuery+`","num_results":5}`))
	req.Header.Set("x-api-key", key)
	rec := httptest.NewRecorder()
	fake.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return nil, fmt.Errorf("scaviotest answered %d to the canned request", rec.Code)
	}
	return rec.Body.Bytes(), nil
}

// benchUpstream is a fast fake Scavio for load tests: it checks the key and the body's shape like
// scaviotest does, waits the configured delay, and answers with a canned body. Unlike scaviotest it
// records nothing, so a million calls cost no memory and the upstream stays cheap next to what is
// measured.
type benchUpstream struct {
	key   []byte
	body  []byte
	delay atomic.Int64 // nanoseconds
}

func (u *benchUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/_bench/delay": // control: set the artificial delay for the following calls
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil || d < 0 {
			http.Error(w, "bad d", http.StatusBadRequest)
			return
		}
		u.delay.Store(int64(d))
		w.WriteHeader(http.StatusNoContent)
		return
	case scaviotest.SearchPath:
	default:
		writeUpstreamError(w, http.StatusNotFound, "not_found")
		return
	}
	if r.Method != http.MethodPost {
		writeUpstreamError(w, http.StatusMethodNotAllowed, "method_not_allowed")
		return
	}
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("x-api-key")), u.key) != 1 {
		writeUpstreamError(w, http.StatusUnauthorized, "unauthorized")
		return
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var req struct {
		Query      string `json:"query"`
		NumResults int    `json:"num_results"`
	}
	if err != nil || json.Unmarshal(raw, &req) != nil || req.Query == "" {
		writeUpstreamError(w, http.StatusBadRequest, "bad_request")
		return
	}
	if d := time.Duration(u.delay.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-r.Context().Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(u.body)))
	h.Set("X-RateLimit-Limit", "10")
	h.Set("X-RateLimit-Remaining", "9")
	h.Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Unix()+60, 10))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(u.body)
}

func writeUpstreamError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":{"code":%q,"message":%q}}`, code, http.StatusText(status))
}

// serveUpstream is the "serve-upstream" child mode: the fake upstream in its own process, so its
// CPU is accounted apart from the servers under test.
func serveUpstream(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve-upstream", flag.ContinueOnError)
	keyFile := fs.String("key-file", "", "file holding the accepted test key")
	listen := fs.String("listen", "127.0.0.1:0", "loopback address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	key, err := readKeyFile(*keyFile)
	if err != nil {
		return err
	}
	body, err := cannedBody(key)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: &benchUpstream{key: []byte(key), body: body}, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	fmt.Printf("ready http://%s\n", lis.Addr())
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func readKeyFile(path string) (string, error) {
	if path == "" {
		return "", errors.New("--key-file is required")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(raw)), nil
}

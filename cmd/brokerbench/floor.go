package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/grpcapi"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// floorServer is the minimal gRPC broker on this machine, the floor brokerd is measured against:
// the same SearchService over a Unix socket with the same gRPC server options
// (grpcapi.TransportOptions), one plain net/http POST to the upstream with a key held in memory,
// the JSON decoded and converted to a response byte-identical to brokerd's for the same answer,
// and nothing else (no token, no decrypt, no audit, no metrics, no retries). No brokerd code runs
// on its request path: it is what any gRPC broker must at least spend, so brokerd/floor is what
// brokerd's own work costs.
type floorServer struct {
	pb.UnimplementedSearchServiceServer
	hc     *http.Client
	target string // the upstream's search URL, built once
	key    string
	// durable, when set, is one durable operation (a bbolt commit, or brokerd's journal write) made
	// after the answer is built and before it is returned, as brokerd's audit record is: the
	// floor+commit and floor+write modes (see timedOps).
	durable func() error
}

func (f *floorServer) Search(ctx context.Context, req *pb.SearchRequest) (*pb.SearchResponse, error) {
	n := int(req.GetNumResults())
	if n == 0 {
		n = broker.DefaultNumResult
	}
	payload, err := json.Marshal(struct {
		Query      string `json:"query"`
		NumResults int    `json:"num_results"`
	}{req.GetQuery(), n})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, f.target, bytes.NewReader(payload))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("x-api-key", f.key)
	resp, err := f.hc.Do(hreq)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if resp.StatusCode != http.StatusOK {
		return nil, status.Errorf(codes.Unavailable, "upstream: %s", resp.Status)
	}
	out, err := searchResponse(body)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if len(out.Results) > n {
		out.Results = out.Results[:n]
	}
	if f.durable != nil {
		if err := f.durable(); err != nil {
			return nil, status.Error(codes.Unavailable, err.Error())
		}
	}
	return out, nil
}

// searchResponse converts an upstream body to the response message brokerd sends for it on a
// cache miss (same fields, same values: a fresh credential at version 1, one credit), so the floor
// pays the same decoding and serialisation cost and brokerbench can check the bytes are equal.
func searchResponse(body []byte) (*pb.SearchResponse, error) {
	var top map[string]any
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, err
	}
	raw, _ := top["results"].([]any)
	delete(top, "results")
	out := &pb.SearchResponse{Tool: broker.DefaultTool, Credential: broker.DefaultCredential, CredentialVersion: 1, Credits: 1,
		Results: make([]*pb.SearchResult, 0, len(raw))}
	for i, item := range raw {
		obj, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("result %d is not an object", i)
		}
		s, err := structpb.NewStruct(obj)
		if err != nil {
			return nil, err
		}
		r := &pb.SearchResult{Position: int32(i + 1), Raw: s,
			Title: firstString(obj, "title"), Url: firstString(obj, "url", "link"), Snippet: firstString(obj, "snippet", "description", "content")}
		if p, ok := obj["position"].(float64); ok && p >= 1 && p <= 1e6 {
			r.Position = int32(p)
		}
		out.Results = append(out.Results, r)
	}
	if len(top) > 0 {
		var err error
		if out.Metadata, err = structpb.NewStruct(top); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func firstString(obj map[string]any, keys ...string) string {
	for _, k := range keys {
		if s, ok := obj[k].(string); ok {
			return s
		}
	}
	return ""
}

// serveFloor is the "serve-floor" child mode.
func serveFloor(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve-floor", flag.ContinueOnError)
	keyFile := fs.String("key-file", "", "file holding the upstream key")
	socket := fs.String("socket", "", "Unix socket to serve on")
	upURL := fs.String("upstream-url", "", "upstream base URL")
	commitDB := fs.String("commit-db", "", "bbolt database to commit one small put to per call (the floor+commit mode)")
	writeFile := fs.String("write-file", "", "file to make one durable 4 KiB write to per call, as the audit journal does (the floor+write mode)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *commitDB != "" && *writeFile != "" {
		return errTwoDurableOps // before anything is read or made
	}
	key, err := readKeyFile(*keyFile)
	if err != nil {
		return err
	}
	if *upURL == "" {
		return errors.New("--upstream-url is required")
	}
	// The same connection pool bounds as brokerd's upstream transport, without anything else.
	hc := &http.Client{Transport: &http.Transport{
		DialContext:  (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns: 64, MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64, IdleConnTimeout: 90 * time.Second,
	}}
	// The durable file first: if it cannot be made, nothing was listening.
	op, closeOp, err := durableOp(*commitDB, *writeFile)
	if err != nil {
		return err
	}
	defer closeOp()
	os.Remove(*socket)
	lis, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	g := grpc.NewServer(grpcapi.TransportOptions(0)...)
	fl := &floorServer{hc: hc, target: *upURL + scaviotest.SearchPath, key: key}
	ready := "ready unix://" + *socket
	if op != nil {
		tc := &timedOps{op: op}
		fl.durable = tc.do
		// The operations' own latencies, for the report: brokerbench reads them around each window.
		hl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		hs := &http.Server{Handler: tc, ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(hl)
		defer hs.Close()
		ready += " http://" + hl.Addr().String() + opsPath
	}
	pb.RegisterSearchServiceServer(g, fl)
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	fmt.Println(ready)
	return g.Serve(lis)
}

var errTwoDurableOps = errors.New("--commit-db and --write-file: one durable operation per call, not two")

// durableOp is serve-floor's one durable operation per call: a bbolt commit into commitDB
// (floor+commit), brokerd's journal write into writeFile (floor+write), or none (the floor).
func durableOp(commitDB, writeFile string) (op func() error, closeOp func() error, err error) {
	switch {
	case commitDB != "" && writeFile != "":
		return nil, nil, errTwoDurableOps
	case commitDB != "":
		c, err := openCommitter(commitDB)
		if err != nil {
			return nil, nil, err
		}
		return c.commit, c.close, nil
	case writeFile != "":
		w, err := openJournalWriter(writeFile)
		if err != nil {
			return nil, nil, err
		}
		return w.write, w.close, nil
	}
	return nil, func() error { return nil }, nil
}

// opsPath is the timed floor child's (floor+write, floor+commit) endpoint that hands out its
// durable operations' latencies.
const opsPath = "/_bench/ops"

// timedOps times each durable operation (commit or write) of a timed floor child and serves
// the latencies recorded since its previous request (GET: a JSON array of nanoseconds), so that
// brokerbench can read the operations of one window: a GET as the window opens drops the
// warm-up's, one as it closes returns the window's.
type timedOps struct {
	op   func() error
	mu   sync.Mutex
	lats []time.Duration
}

func (t *timedOps) do() error {
	t0 := time.Now()
	if err := t.op(); err != nil {
		return err // its call fails: not a commit to time
	}
	d := time.Since(t0)
	t.mu.Lock()
	t.lats = append(t.lats, d)
	t.mu.Unlock()
	return nil
}

func (t *timedOps) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != opsPath || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	t.mu.Lock()
	lats := t.lats
	t.lats = nil
	t.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(lats)
}

// opsURL is the operations' endpoint in a timed floor child's ready line (after "ready "):
// "unix://SOCKET http://ADDR/_bench/ops".
func opsURL(ready string) (string, error) {
	f := strings.Fields(ready)
	if len(f) != 2 || !strings.HasPrefix(f[0], "unix://") || !strings.HasPrefix(f[1], "http://127.0.0.1:") || !strings.HasSuffix(f[1], opsPath) {
		return "", fmt.Errorf("ready line %q has no commits URL", ready) // the caller names the child
	}
	return f[1], nil
}

// opLatencies reads a timed floor child's operation latencies since the previous read, sorted.
func opLatencies(ctx context.Context, url string) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second) // as scrapeAudit: a hung child fails the run
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	var lats []time.Duration
	if err := json.NewDecoder(resp.Body).Decode(&lats); err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	slices.Sort(lats)
	return lats, nil
}

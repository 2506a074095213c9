package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/token"
	"github.com/credbroker/credbroker/client"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

// scaleResult is brokerd on a database holding many live tokens and credentials.
type scaleResult struct {
	Tokens      int           `json:"tokens"`
	Credentials int           `json:"credentials"`
	SeedTime    time.Duration `json:"seed_ns"`
	DBBytes     int64         `json:"db_bytes"`
	// Ready is exec-to-SERVING for each start; ReadyMedian their median.
	Ready       []time.Duration `json:"ready_ns"`
	ReadyMedian time.Duration   `json:"ready_median_ns"`
	ReadyMax    time.Duration   `json:"ready_max_ns"`
	// Idle is the memory a second after ready (after the supervisor's first status scan).
	Idle memInfo `json:"idle"`
	// Load is c=64 zero-delay Search cycling through the seeded tokens (each new token is a cache
	// miss: a bbolt read, then cached for good).
	Load           loadResult `json:"load"`
	DistinctTokens int        `json:"distinct_tokens"`
	// TouchAll is Search at c=64 with every remaining token once, so every token is cached;
	// TouchAllMem is the largest memory sampled meanwhile.
	TouchAllTime time.Duration `json:"touch_all_ns,omitempty"`
	TouchAllMem  *memInfo      `json:"touch_all_mem_max,omitempty"`
	TouchAllErrs int           `json:"touch_all_errors,omitempty"`
	// Paged ListTokens over everything (page size 1000, the server maximum).
	ListPages      int           `json:"list_pages"`
	ListTotal      int           `json:"list_total"`
	ListTime       time.Duration `json:"list_time_ns"`
	ListPageP50    time.Duration `json:"list_page_p50_ns"`
	ListPageMax    time.Duration `json:"list_page_max_ns"`
	ListPageBytes  int           `json:"list_page_max_bytes"`
	ListDefaultLen int           `json:"list_default_page_len"`
	OversizeCode   string        `json:"oversize_page_code"`
	StatusTime     time.Duration `json:"status_rpc_ns"`
}

// seed writes credentials and tokens straight into a database through the store package, without
// fsync (far faster than RPCs); brokerd then opens the file as it would after a long life.
func (e *env) seed(db string, tokens, creds int) ([]string, error) {
	kek, err := store.LoadMasterKeyset(e.keyset)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(db, kek, store.Options{NoSync: true})
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if _, err := st.PutCredential(broker.DefaultCredential, []byte(e.key), now); err != nil {
		st.Close()
		return nil, err
	}
	val := make([]byte, 40)
	for i := 1; i < creds; i++ {
		rand.Read(val)
		if _, err := st.PutCredential(fmt.Sprintf("bench_credential_%05d", i), []byte(fmt.Sprintf("sk_%x", val)), now); err != nil {
			st.Close()
			return nil, err
		}
	}
	toks := make([]string, 0, tokens)
	for range tokens {
		tok, id, hash, err := token.New()
		if err != nil {
			st.Close()
			return nil, err
		}
		err = st.PutToken(store.Token{ID: id, SecretHash: hash[:], Tools: []string{broker.DefaultTool}, CreatedAt: now,
			ExpiresAt: now.Add(24 * time.Hour), Label: "brokerbench scale"})
		if errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			st.Close()
			return nil, err
		}
		toks = append(toks, tok)
	}
	if err := st.Close(); err != nil {
		return nil, err
	}
	// Flush what NoSync left in the page cache now, not during a measurement.
	f, err := os.Open(db)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return toks, f.Sync()
}

func (e *env) scale(ctx context.Context) (*scaleResult, error) {
	if err := e.setDelay(0); err != nil {
		return nil, err
	}
	s := &scaleResult{Tokens: e.cfg.scaleTokens, Credentials: e.cfg.scaleCredentials}
	db := filepath.Join(e.dir, "scale.db")
	progress("scale: seeding %d tokens and %d credentials", s.Tokens, s.Credentials)
	t0 := time.Now()
	toks, err := e.seed(db, s.Tokens, s.Credentials)
	if err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	s.SeedTime = time.Since(t0)
	if fi, err := os.Stat(db); err == nil {
		s.DBBytes = fi.Size()
	}
	progress("scale: seeded in %s (%d MiB)", s.SeedTime.Round(time.Millisecond), s.DBBytes>>20)

	var bd *child
	var sock string
	for i := range max(e.cfg.scaleStarts, 1) {
		if bd != nil {
			if err := bd.stop(); err != nil {
				progress("scale: brokerd stop: %v", err)
			}
		}
		var ready time.Duration
		if bd, sock, ready, err = e.startBrokerd(ctx, "scale-brokerd", db); err != nil {
			return nil, err
		}
		s.Ready = append(s.Ready, ready)
		progress("scale: start %d ready in %s", i+1, ready.Round(time.Microsecond))
	}
	defer bd.stop()
	sorted := slices.Clone(s.Ready)
	slices.Sort(sorted)
	s.ReadyMedian, s.ReadyMax = sorted[len(sorted)/2], sorted[len(sorted)-1]

	sleepCtx(ctx, time.Second)
	if s.Idle, err = procMem(bd.pid()); err != nil {
		return nil, err
	}

	// Search load cycling through every seeded token, set per call by hand: WithToken("") keeps the
	// client from fetching a token of its own by attestation (it would be refused: no workload).
	conn, err := client.New(sock, client.WithToken(""))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	sc := pb.NewSearchServiceClient(conn.Conn())
	var next atomic.Int64
	do := func(ctx context.Context, _ int) error {
		tok := toks[int(next.Add(1)-1)%len(toks)]
		req := &pb.SearchRequest{Tool: broker.DefaultTool, Query: uniqueQuery()}
		_, err := sc.Search(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), req)
		return err
	}
	s.Load = runLoad(ctx, loadSpec{conc: 64, warmup: e.cfg.warmup, window: e.cfg.scaleDuration,
		procs: []watched{{role: "server", pid: bd.pid(), metrics: bd.metrics}, {role: "upstream", pid: e.up.pid()}, {role: "loadgen"}}, do: do})
	s.DistinctTokens = min(int(next.Load()), len(toks))
	progress("scale: c=64 over %d distinct tokens: %.0f req/s p50 %s; RSS idle %d MiB, under load max %d MiB",
		s.DistinctTokens, s.Load.RPS, round(s.Load.P50), s.Idle.RSS>>20, s.Load.ServerMem.RSS>>20)

	if e.cfg.scaleTouchAll {
		progress("scale: searching with each of the remaining %d tokens once", max(0, len(toks)-int(next.Load())))
		t0 := time.Now()
		var errs atomic.Int64
		var m memInfo
		done := make(chan struct{})
		go func() {
			defer close(done)
			var wg sync.WaitGroup
			for range 64 {
				wg.Go(func() {
					for ctx.Err() == nil {
						i := int(next.Add(1) - 1)
						if i >= len(toks) {
							return
						}
						req := &pb.SearchRequest{Tool: broker.DefaultTool, Query: uniqueQuery()}
						if _, err := sc.Search(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+toks[i]), req); err != nil {
							errs.Add(1)
						}
					}
				})
			}
			wg.Wait()
		}()
		for waiting := true; waiting; {
			select {
			case <-done:
				waiting = false
			case <-time.After(100 * time.Millisecond):
			}
			if cur, err := procMem(bd.pid()); err == nil {
				m.maxWith(cur)
			}
		}
		s.TouchAllTime, s.TouchAllMem, s.TouchAllErrs = time.Since(t0), &m, int(errs.Load())
		progress("scale: every token used in %s; memory max %s", s.TouchAllTime.Round(time.Millisecond), memString(m))
	}

	// Paged ListTokens.
	var pages []time.Duration
	lreq := &pb.ListTokensRequest{PageSize: broker.MaxPageSize}
	t0 = time.Now()
	for {
		p0 := time.Now()
		resp, err := conn.ListTokens(ctx, lreq)
		if err != nil {
			return nil, fmt.Errorf("list tokens: %w", err)
		}
		pages = append(pages, time.Since(p0))
		s.ListTotal += len(resp.GetTokens())
		s.ListPageBytes = max(s.ListPageBytes, proto.Size(resp))
		if resp.GetNextPageToken() == "" {
			break
		}
		lreq.PageToken = resp.GetNextPageToken()
	}
	s.ListTime = time.Since(t0)
	s.ListPages = len(pages)
	slices.Sort(pages)
	s.ListPageP50, s.ListPageMax = quantile(pages, 0.5), pages[len(pages)-1]
	if resp, err := conn.ListTokens(ctx, &pb.ListTokensRequest{}); err == nil {
		s.ListDefaultLen = len(resp.GetTokens())
	}
	_, err = conn.ListTokens(ctx, &pb.ListTokensRequest{PageSize: broker.MaxPageSize + 1})
	s.OversizeCode = codeOf(err).String()
	t0 = time.Now()
	if _, err := conn.Status(ctx); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	s.StatusTime = time.Since(t0)
	progress("scale: listed %d tokens in %d pages in %s; page_size %d -> %s", s.ListTotal, s.ListPages,
		s.ListTime.Round(time.Millisecond), broker.MaxPageSize+1, s.OversizeCode)
	return s, nil
}

// codeOf returns the gRPC code behind a client error.
func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var ce *client.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	return status.Code(err)
}

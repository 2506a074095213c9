package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

// refusalRecords returns the audit records with event ev from uid, and the sum of their counts.
func refusalRecords(t *testing.T, st *store.Store, ev string, uid uint32) ([]store.AuditRecord, uint64) {
	t.Helper()
	recs, err := st.ListAudit(0, time.Time{}, 100000)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.AuditRecord
	var sum uint64
	for _, r := range recs {
		if r.Event == ev && r.UID == uid {
			out = append(out, r)
			sum += r.Count
		}
	}
	return out, sum
}

// A flood of calls without a token leaves brokerd's audit log with a record at once and one count
// record written at shutdown, not a record per call; the chain verifies.
func TestTokenlessFloodIsCoalescedAcrossShutdown(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t)
	conn, err := grpc.NewClient("unix://"+e.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sc := pb.NewSearchServiceClient(conn)
	const n = 1000
	for range n {
		if _, err := sc.Search(context.Background(), &pb.SearchRequest{Query: "q"}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("search without a token: %v", err)
		}
	}
	conn.Close()
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("brokerd exit: %v\n%s", err, e.stderr.String())
	}
	st := e.openStore(t)
	defer st.Close()
	got, sum := refusalRecords(t, st, broker.RefusedNoToken, uint32(os.Getuid()))
	if len(got) != 2 || sum != n {
		t.Fatalf("%d tokenless calls left %d records counting %d, want 2 counting %d: %+v", n, len(got), sum, n, got)
	}
	checkStoreConsistent(t, st)
}

// TestHelperHoldConnections is not a test: TestConnectionCapKeepsAdminsIn runs this binary as
// another uid to open connections and hold them until its stdin closes.
func TestHelperHoldConnections(t *testing.T) {
	sock := os.Getenv("CREDBROKER_HOLD_SOCKET")
	if sock == "" {
		t.Skip("helper process for TestConnectionCapKeepsAdminsIn")
	}
	n, _ := strconv.Atoi(os.Getenv("CREDBROKER_HOLD_N"))
	var held []net.Conn
	refused, why := 0, map[string]int{} // why: how the refused ones ended, for a failure message
	for range n {
		c, err := net.Dial("unix", sock)
		if err != nil {
			why["dial: "+err.Error()]++
			refused++
			continue
		}
		// The HTTP/2 preface and an empty SETTINGS frame: an accepted connection is answered
		// with the server's SETTINGS, a refused one is closed.
		c.Write(append([]byte(http2.ClientPreface), 0, 0, 0, byte(http2.FrameSettings), 0, 0, 0, 0, 0))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		hdr := make([]byte, 9)
		_, err = io.ReadFull(c, hdr)
		if err == nil && hdr[3] == byte(http2.FrameSettings) {
			c.SetReadDeadline(time.Time{})
			held = append(held, c)
			continue
		}
		if err != nil {
			why[strings.ReplaceAll(err.Error(), sock, "SOCKET")]++
		} else {
			why[fmt.Sprintf("first frame type %d", hdr[3])]++
		}
		c.Close()
		refused++
	}
	fmt.Printf("HOLD accepted=%d refused=%d (%v)\n", len(held), refused, why)
	io.Copy(io.Discard, os.Stdin)
}

// A non-admin uid that opens connections until something gives gets --max-conns-per-uid of them;
// the rest are closed at accept, counted and audited, and root's admin calls still work. Once it
// lets go, its places are free again.
func TestConnectionCapKeepsAdminsIn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to hold connections as uid 65534 (CI runs as root)")
	}
	e := newEnv(t)
	for _, d := range []string{binDir, e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	holder := filepath.Join(e.dir, "holder")
	if b, err := os.ReadFile(self); err != nil || os.WriteFile(holder, b, 0o755) != nil {
		t.Fatalf("copy the test binary for uid 65534: %v", err)
	}
	const perUID, tries = 4, 12
	e.startDaemon(t, "--socket-group", "65534", "--max-conns-per-uid", strconv.Itoa(perUID), "--max-conns", "64",
		"--metrics-listen", "127.0.0.1:0")
	murl := e.metricsURL(t)

	cmd := exec.Command(holder, "-test.run=^TestHelperHoldConnections$")
	cmd.Env = []string{"CREDBROKER_HOLD_SOCKET=" + e.socket, "CREDBROKER_HOLD_N=" + strconv.Itoa(tries)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	var line string
	for sc := bufio.NewScanner(stdout); sc.Scan(); {
		if strings.HasPrefix(sc.Text(), "HOLD ") {
			line = sc.Text()
			break
		}
	}
	var accepted, refused int
	if _, err := fmt.Sscanf(line, "HOLD accepted=%d refused=%d", &accepted, &refused); err != nil || accepted != perUID || refused != tries-perUID {
		t.Fatalf("uid 65534 holding connections: %q, want accepted=%d refused=%d", line, perUID, tries-perUID)
	}

	// While uid 65534 holds its share: root's admin calls work, and uid 65534 gets no more.
	e.ctl(t, "", "status").ok(t)
	e.ctl(t, "", "token", "mint", "--tools", "web_search").ok(t)
	e.asUID(t, nobody, "", "--timeout", "2s", "status").fails(t, "")
	m, err := scrape(murl, `credbroker_refusals_total{reason="conn-limit-uid"}`, "credbroker_connections_open")
	if err != nil {
		t.Fatal(err)
	}
	if got := m[`credbroker_refusals_total{reason="conn-limit-uid"}`]; got < tries-perUID {
		t.Errorf("credbroker_refusals_total{conn-limit-uid} = %v, want at least %d", got, tries-perUID)
	}
	if got := m["credbroker_connections_open"]; got < perUID {
		t.Errorf("credbroker_connections_open = %v, want at least %d", got, perUID)
	}

	// Let go: brokerd sees the closes and uid 65534 is let in again (refused as a non-admin,
	// which proves it got a connection). Bounded wait for brokerd to notice the closes.
	stdin.Close()
	cmd.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := e.asUID(t, nobody, "", "--timeout", "2s", "status")
		if strings.Contains(r.stderr, "permission denied: uid 65534") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("uid 65534 not let in after closing its connections: %s", r.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}

	e.asUID(t, nobody, "", "token", "revoke", "tok123").fails(t, "permission denied: uid 65534")

	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("brokerd exit: %v", err)
	}
	st := e.openStore(t)
	defer st.Close()
	got, sum := refusalRecords(t, st, broker.RefusedConnUID, nobody)
	if len(got) == 0 || len(got) > 2 || sum < tries-perUID {
		t.Fatalf("conn-limit-uid records for uid 65534: %d counting %d, want 1-2 counting at least %d: %+v", len(got), sum, tries-perUID, got)
	}
	if got[0].Code != "ResourceExhausted" || got[0].Method != "connection" || !got[0].PeerKnown {
		t.Errorf("refused connection record: %+v", got[0])
	}
	// Refused admin calls of uid 65534 left no "Started" record.
	recs, _ := st.ListAudit(0, time.Time{}, 100000)
	for _, r := range recs {
		if r.UID == nobody && r.Code == "Started" {
			t.Errorf("uid 65534 left a Started record: %+v", r)
		}
	}
	checkStoreConsistent(t, st)
}

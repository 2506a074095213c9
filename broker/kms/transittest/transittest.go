// Package transittest fakes a Vault/OpenBao server from request/response pairs recorded against a
// real OpenBao 2.6.2 (shared/kms/openbao-transit.json, copied to testdata).
//
// Two fakes, because the recording's plaintexts are fixed while brokerd wraps random keysets:
//
//   - Replay answers only requests equal to a recorded one (method, path, JSON body) with the
//     recorded status and body, and fails the test on any other request. It proves brokerd's
//     Transit client speaks exactly what the real server was spoken to with, and reads its real
//     answers, including the wrong-AAD refusal and a rotation.
//   - Sim serves requests of the recorded shapes (same paths, same body fields, nothing else;
//     any other request fails the test) with real AES-GCM over random plaintexts, answering in
//     the recorded response shapes and error texts. It is for brokerd processes.
//
// Neither can speak for what the recording does not hold. Sim's one modelled behaviour that was not
// recorded, `context` ignored for a key without derivation, is off unless SetIgnoreContext(true);
// it is documented by Vault and by tink-go-hcvault's NewClient and was measured on a real
// OpenBao by the author, and exists so a test can show the self-test refusing such an
// AEAD.
package transittest

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Token is the token the fakes accept; any other gets the recorded 403.
const Token = "s.fake-test-token-not-a-secret"

// Recording is the file's shape.
type Recording struct {
	Server    string     `json:"server"`
	Exchanges []Exchange `json:"exchanges"`
}

// Exchange is one recorded request and answer.
type Exchange struct {
	Name    string `json:"name"`
	Request struct {
		Method string          `json:"method"`
		Path   string          `json:"path"`
		Body   json.RawMessage `json:"body"`
	} `json:"request"`
	Status   int             `json:"status"`
	Response json.RawMessage `json:"response"`
}

// Load reads the recording kept next to this package (testdata/openbao-transit.json).
func Load(tb testing.TB) Recording {
	tb.Helper()
	_, file, _, _ := runtime.Caller(0)
	data, err := os.ReadFile(filepath.Join(filepath.Dir(file), "testdata", "openbao-transit.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var r Recording
	if err := json.Unmarshal(data, &r); err != nil {
		tb.Fatal(err)
	}
	return r
}

// Find returns the exchange with the given name.
func (r Recording) Find(tb testing.TB, name string) Exchange {
	for _, e := range r.Exchanges {
		if e.Name == name {
			return e
		}
	}
	tb.Fatalf("no recorded exchange %q", name)
	return Exchange{}
}

// permissionDenied is the recorded answer to a request with a bad token.
func (r Recording) permissionDenied(tb testing.TB) Exchange {
	return r.Find(tb, "kv2 read with bad token")
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if len(bytes.TrimSpace(a)) == 0 {
		a = []byte("null")
	}
	if len(bytes.TrimSpace(b)) == 0 {
		b = []byte("null")
	}
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func requestPath(r *http.Request) string {
	p := r.URL.Path
	if r.URL.RawQuery != "" {
		p += "?" + r.URL.RawQuery
	}
	return p
}

// The Vault client sends writes as PUT; the recording used POST. Transit treats them alike.
func sameMethod(recorded, got string) bool {
	return recorded == got || (recorded == http.MethodPost && got == http.MethodPut)
}

// Replay is a strict replaying fake.
type Replay struct {
	*httptest.Server
	rec Recording
	tb  testing.TB

	mu    sync.Mutex
	phase int // rotations replayed so far
	seen  []string
}

// NewReplay starts a replaying fake; it is closed with the test.
func NewReplay(tb testing.TB) *Replay {
	r := &Replay{rec: Load(tb), tb: tb}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	tb.Cleanup(r.Close)
	return r
}

// Seen lists the names of the exchanges replayed, in order.
func (r *Replay) Seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

func (r *Replay) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if req.Header.Get("X-Vault-Token") != Token {
		e := r.rec.permissionDenied(r.tb)
		r.answer(w, e)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// An exchange's phase is the number of rotations recorded before it. A request is answered by
	// the equal exchange of the highest phase not after the current one: the encrypt recorded
	// after the rotation answers only once a rotation was replayed.
	best, bestPhase, phase := -1, -1, 0
	for i, e := range r.rec.Exchanges {
		if sameMethod(e.Request.Method, req.Method) && e.Request.Path == requestPath(req) && jsonEqual(e.Request.Body, body) &&
			phase <= r.phase && phase >= bestPhase {
			best, bestPhase = i, phase
		}
		if strings.HasSuffix(e.Request.Path, "/rotate") {
			phase++
		}
	}
	if best < 0 {
		// Not recorded at or before this phase: an exchange recorded once, later, whose answer
		// does not depend on the key's versions (an unknown key) is still the server's answer.
		only := -1
		for i, e := range r.rec.Exchanges {
			if sameMethod(e.Request.Method, req.Method) && e.Request.Path == requestPath(req) && jsonEqual(e.Request.Body, body) {
				if only >= 0 {
					only = -2
					break
				}
				only = i
			}
		}
		if only >= 0 && !strings.HasPrefix(r.rec.Exchanges[only].Request.Path, "/v1/transit/encrypt/") {
			best = only
		}
	}
	if best < 0 {
		r.tb.Errorf("transittest.Replay: unrecorded request %s %s %s", req.Method, requestPath(req), body)
		http.Error(w, `{"errors":["unrecorded request"]}`, http.StatusTeapot)
		return
	}
	e := r.rec.Exchanges[best]
	if strings.HasSuffix(e.Request.Path, "/rotate") {
		r.phase++
	}
	r.seen = append(r.seen, e.Name)
	r.answer(w, e)
}

func (r *Replay) answer(w http.ResponseWriter, e Exchange) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	w.Write(e.Response)
}

// Sim is a Transit simulator restricted to the recorded request shapes.
type Sim struct {
	*httptest.Server
	rec Recording
	tb  testing.TB

	// ignoreContext: see SetIgnoreContext.
	ignoreContext atomic.Bool

	mu    sync.Mutex
	keys  map[string][][]byte // name -> AES-256 key per version (index 0 = v1)
	calls int
}

// NewSim starts a simulator with one key, name; it is closed with the test. Use Listener to serve
// on a given address (NewSimAt).
func NewSim(tb testing.TB, name string) *Sim {
	s := newSim(tb, name)
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	tb.Cleanup(s.Close)
	return s
}

func newSim(tb testing.TB, name string) *Sim {
	s := &Sim{rec: Load(tb), tb: tb, keys: map[string][][]byte{}}
	s.keys[name] = [][]byte{newAESKey()}
	return s
}

// SetIgnoreContext makes the simulator answer a `context` field in place of associated_data by
// ignoring it, as Transit does for a key without derivation (not in the recording; see the
// package doc). Without it such a request fails the test.
func (s *Sim) SetIgnoreContext(on bool) { s.ignoreContext.Store(on) }

// Handler returns the simulator's handler (to serve it on a listener of one's own).
func (s *Sim) Handler() http.Handler { return http.HandlerFunc(s.serve) }

// NewSimHandler builds a simulator without a server (serve it with Handler).
func NewSimHandler(tb testing.TB, name string) *Sim { return newSim(tb, name) }

func newAESKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// Rotate adds a key version, as `POST transit/keys/NAME/rotate` does.
func (s *Sim) Rotate(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[name] = append(s.keys[name], newAESKey())
	return len(s.keys[name])
}

// Calls counts the requests served.
func (s *Sim) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// fieldsOf returns the sorted top-level field names of a recorded body.
func fieldsOf(raw json.RawMessage) map[string]bool {
	var m map[string]any
	json.Unmarshal(raw, &m)
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}

// shape finds the recorded exchange of the same kind (path template and body fields) as req,
// preferring one whose status is want.
func (s *Sim) shape(method, op string, fields map[string]bool, want int) (Exchange, bool) {
	var found Exchange
	ok := false
	for _, e := range s.rec.Exchanges {
		parts := strings.Split(strings.TrimPrefix(e.Request.Path, "/v1/"), "/")
		if len(parts) < 3 || parts[0] != "transit" || !sameMethod(e.Request.Method, method) {
			continue
		}
		eop := parts[1]
		if len(parts) == 4 {
			eop = parts[1] + "/" + parts[3]
		}
		if eop != op || !reflect.DeepEqual(fieldsOf(e.Request.Body), fields) {
			continue
		}
		if !ok || e.Status == want {
			found, ok = e, true
		}
	}
	return found, ok
}

func (s *Sim) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if req.Header.Get("X-Vault-Token") != Token {
		answer(w, s.rec.permissionDenied(s.tb).Status, s.rec.permissionDenied(s.tb).Response)
		return
	}
	var in map[string]any
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &in); err != nil {
			s.fail(w, req, body)
			return
		}
	}
	fields := map[string]bool{}
	for k := range in {
		fields[k] = true
	}
	usedContext := false
	if s.ignoreContext.Load() && fields["context"] && !fields["associated_data"] {
		delete(fields, "context")
		fields["associated_data"] = true
		usedContext = true
	}
	parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/v1/"), "/")
	if len(parts) < 3 || parts[0] != "transit" || req.URL.RawQuery != "" {
		s.fail(w, req, body)
		return
	}
	op, name := parts[1], parts[2]
	if len(parts) == 4 {
		op = parts[1] + "/" + parts[3]
	}
	keys := s.keys[name]
	switch op {
	case "encrypt":
		e, ok := s.shape(req.Method, op, fields, 200)
		if !ok {
			s.fail(w, req, body)
			return
		}
		if keys == nil {
			answer(w, 400, s.recorded("transit decrypt, unknown key").Response)
			return
		}
		pt, err1 := base64.StdEncoding.DecodeString(str(in["plaintext"]))
		ad, err2 := base64.StdEncoding.DecodeString(str(in["associated_data"]))
		if err1 != nil || err2 != nil {
			s.fail(w, req, body)
			return
		}
		if usedContext {
			ad = nil
		}
		v := len(keys)
		ct := seal(keys[v-1], pt, ad)
		answer(w, 200, withData(e.Response, map[string]any{
			"ciphertext": "vault:v" + strconv.Itoa(v) + ":" + base64.StdEncoding.EncodeToString(ct), "key_version": v}))
	case "decrypt":
		e, ok := s.shape(req.Method, op, fields, 200)
		if !ok {
			s.fail(w, req, body)
			return
		}
		if keys == nil {
			answer(w, 400, s.recorded("transit decrypt, unknown key").Response)
			return
		}
		bad := s.recorded("transit decrypt, wrong associated_data")
		ctText := str(in["ciphertext"])
		ad, err := base64.StdEncoding.DecodeString(str(in["associated_data"]))
		if err != nil {
			s.fail(w, req, body)
			return
		}
		if usedContext {
			ad = nil
		}
		rest, ok := strings.CutPrefix(ctText, "vault:v")
		vs, b64, ok2 := strings.Cut(rest, ":")
		v, err := strconv.Atoi(vs)
		raw, err2 := base64.StdEncoding.DecodeString(b64)
		if !ok || !ok2 || err != nil || err2 != nil || v < 1 || v > len(keys) {
			answer(w, 400, []byte(`{"errors":["invalid ciphertext"]}`)) // shape not recorded: fail loudly below
			s.tb.Errorf("transittest.Sim: decrypt of a malformed ciphertext %q (no recorded answer)", ctText)
			return
		}
		pt, err := open(keys[v-1], raw, ad)
		if err != nil {
			answer(w, bad.Status, bad.Response)
			return
		}
		answer(w, 200, withData(e.Response, map[string]any{"plaintext": base64.StdEncoding.EncodeToString(pt)}))
	case "keys/rotate":
		e, ok := s.shape(req.Method, op, fields, 200)
		if !ok || keys == nil {
			s.fail(w, req, body)
			return
		}
		s.keys[name] = append(keys, newAESKey())
		answer(w, 200, s.keyInfo(e.Response, name))
	default:
		s.fail(w, req, body)
	}
}

func (s *Sim) recorded(name string) Exchange { return s.rec.Find(s.tb, name) }

func (s *Sim) keyInfo(tmpl json.RawMessage, name string) []byte {
	ks := map[string]any{}
	for i := range s.keys[name] {
		ks[strconv.Itoa(i+1)] = 1796231524
	}
	return withData(tmpl, map[string]any{"keys": ks, "latest_version": len(s.keys[name]), "name": name})
}

func (s *Sim) fail(w http.ResponseWriter, req *http.Request, body []byte) {
	s.tb.Errorf("transittest.Sim: request of an unrecorded shape: %s %s %s", req.Method, requestPath(req), body)
	http.Error(w, `{"errors":["unrecorded request shape"]}`, http.StatusTeapot)
}

func str(v any) string { s, _ := v.(string); return s }

// withData returns the recorded response with fields of its "data" replaced.
func withData(tmpl json.RawMessage, data map[string]any) []byte {
	var m map[string]any
	json.Unmarshal(tmpl, &m)
	d, _ := m["data"].(map[string]any)
	if d == nil {
		d = map[string]any{}
	}
	for k, v := range data {
		d[k] = v
	}
	m["data"] = d
	out, _ := json.Marshal(m)
	return out
}

func answer(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
}

func seal(key, pt, ad []byte) []byte {
	g := gcm(key)
	nonce := make([]byte, g.NonceSize())
	rand.Read(nonce)
	return g.Seal(nonce, nonce, pt, ad)
}

func open(key, ct, ad []byte) ([]byte, error) {
	g := gcm(key)
	if len(ct) < g.NonceSize() {
		return nil, fmt.Errorf("short")
	}
	return g.Open(nil, ct[:g.NonceSize()], ct[g.NonceSize():], ad)
}

func gcm(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

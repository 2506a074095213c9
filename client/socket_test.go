package client

import "testing"

// Every rule says who chose the path: brokerd logs it when it serves on a default socket.
func TestDefaultSocketSource(t *testing.T) {
	tests := []struct {
		name       string
		env        map[string]string
		euid, uid  int
		wantPath   string
		wantSource string
	}{
		{"explicit", map[string]string{"CREDBROKER_SOCKET": "/x/s.sock"}, 1000, 1000, "/x/s.sock", "$CREDBROKER_SOCKET"},
		{"systemd", map[string]string{"RUNTIME_DIRECTORY": "/run/credbroker"}, 0, 0, "/run/credbroker/broker.sock", "$RUNTIME_DIRECTORY (systemd RuntimeDirectory=)"},
		{"root", map[string]string{"XDG_RUNTIME_DIR": "/run/user/0"}, 0, 0, "/run/credbroker/broker.sock", "the effective uid is 0 (root)"},
		{"user with XDG_RUNTIME_DIR", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, 1000, "/run/user/1000/credbroker/broker.sock", "$XDG_RUNTIME_DIR, as a non-root user"},
		{"user without XDG_RUNTIME_DIR", nil, 1000, 1000, "/run/user/1000/credbroker/broker.sock", "/run/user/UID, as a non-root user without $XDG_RUNTIME_DIR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, src := defaultSocketSource(func(k string) string { return tc.env[k] }, tc.euid, tc.uid)
			if p != tc.wantPath || src != tc.wantSource {
				t.Errorf("defaultSocketSource = %q, %q; want %q, %q", p, src, tc.wantPath, tc.wantSource)
			}
		})
	}
}

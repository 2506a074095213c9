package main

import (
	"testing"
	"time"
)

func TestParseCacheTTL(t *testing.T) {
	cases := []struct {
		in      string
		def     time.Duration
		tools   map[string]time.Duration
		wantErr bool
	}{
		{"10m", 10 * time.Minute, map[string]time.Duration{}, false},
		{"0", -1, map[string]time.Duration{}, false},
		{"5m,google_search=0", 5 * time.Minute, map[string]time.Duration{"google_search": -1}, false},
		{"web_search=30s", 0, map[string]time.Duration{"web_search": 30 * time.Second}, false},
		{"shell=1m", 0, nil, true},
		{"ten", 0, nil, true},
		{"-1m", 0, nil, true},
	}
	for _, tc := range cases {
		e, err := parseCacheTTL(tc.in)
		if (err != nil) != tc.wantErr {
			t.Fatalf("%q: err %v", tc.in, err)
		}
		if err != nil {
			continue
		}
		if e.DefaultCacheTTL != tc.def || len(e.CacheTTL) != len(tc.tools) {
			t.Fatalf("%q: %+v", tc.in, e)
		}
		for k, v := range tc.tools {
			if e.CacheTTL[k] != v {
				t.Fatalf("%q: %s = %s", tc.in, k, e.CacheTTL[k])
			}
		}
	}
}

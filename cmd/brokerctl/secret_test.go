package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadSecret(t *testing.T) {
	max := strings.Repeat("k", maxValueSize)
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr error
	}{
		{name: "no newline", in: "abc", want: "abc"},
		{name: "one newline trimmed", in: "abc\n", want: "abc"},
		{name: "CRLF trimmed", in: "abc\r\n", want: "abc"},
		{name: "only one newline trimmed", in: "abc\n\n", want: "abc\n"},
		{name: "only one CRLF trimmed", in: "abc\r\n\r\n", want: "abc\r\n"},
		{name: "lone CR kept", in: "abc\r", want: "abc\r"},
		{name: "inner newline kept", in: "a\nb\n", want: "a\nb"},
		{name: "spaces kept", in: " abc \n", want: " abc "},
		{name: "binary kept", in: "\x00\xff\n", want: "\x00\xff"},
		{name: "empty", in: "", wantErr: errEmptyValue},
		{name: "newline only", in: "\n", wantErr: errEmptyValue},
		{name: "CRLF only", in: "\r\n", wantErr: errEmptyValue},
		{name: "exactly 8 KiB", in: max, want: max},
		{name: "8 KiB and a newline", in: max + "\n", want: max},
		{name: "8 KiB and CRLF", in: max + "\r\n", want: max},
		{name: "8 KiB + 1", in: max + "k", wantErr: errValueTooLarge},
		{name: "8 KiB + 1 and a newline", in: max + "k\n", wantErr: errValueTooLarge},
		{name: "8 KiB and two newlines", in: max + "\n\n", wantErr: errValueTooLarge},
		{name: "8 KiB + a bit", in: max + strings.Repeat("k", 100), wantErr: errValueTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readSecret(strings.NewReader(tc.in))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReadSecretTooLargeMessage(t *testing.T) {
	_, err := readSecret(strings.NewReader(strings.Repeat("k", maxValueSize+10)))
	if err == nil || !strings.Contains(err.Error(), "larger than 8192 bytes (8 KiB)") {
		t.Fatalf("err = %v, want a message naming the 8 KiB limit", err)
	}
}

// countingReader is an endless input that counts what was read from it.
type countingReader struct{ n int }

func (r *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'k'
	}
	r.n += len(p)
	return len(p), nil
}

func TestReadSecretBoundsWhatItReads(t *testing.T) {
	r := &countingReader{}
	if _, err := readSecret(r); !errors.Is(err, errValueTooLarge) {
		t.Fatalf("err = %v, want errValueTooLarge", err)
	}
	if r.n > maxValueSize+3 {
		t.Errorf("read %d bytes from an endless input, want at most %d", r.n, maxValueSize+3)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestReadValue(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "v")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		stdin    io.Reader
		fromFile string
		want     string
		wantErr  string
	}{
		{name: "stdin", stdin: strings.NewReader("piped\r\n"), want: "piped"},
		{name: "file wins over stdin", stdin: strings.NewReader("piped\n"), fromFile: file, want: "from-file"},
		{name: "empty stdin", stdin: strings.NewReader(""), wantErr: "the value is empty (nothing was stored)"},
		{name: "empty file", stdin: strings.NewReader("x"), fromFile: empty, wantErr: "--from-file " + empty + ": the value is empty"},
		{name: "missing file", stdin: strings.NewReader("x"), fromFile: filepath.Join(dir, "nope"), wantErr: "no such file or directory"},
		{name: "stdin error", stdin: failingReader{}, wantErr: "read value from stdin: unexpected EOF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			a := newApp(tc.stdin, io.Discard, &stderr)
			got, err := a.readValue(t.Context(), tc.fromFile, "prompt: ")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			if stderr.Len() != 0 {
				t.Errorf("prompted %q although stdin is not a terminal", stderr.String())
			}
		})
	}
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
)

// maxValueSize is the broker's limit on a credential value. Checking it here gives a clear message
// before anything is sent.
const maxValueSize = 8 << 10

var (
	errEmptyValue    = errors.New("the value is empty (nothing was stored)")
	errValueTooLarge = fmt.Errorf("the value is larger than %d bytes (8 KiB), the broker's limit; is it the right input? (nothing was stored)", maxValueSize)
)

// readSecret reads a credential value from r. Exactly one trailing "\n" or "\r\n" is removed (what
// `echo` and editors add); anything else is kept byte for byte. Empty and oversized values are
// refused here; brokerd also refuses values that are not visible ASCII on one line.
func readSecret(r io.Reader) ([]byte, error) {
	// Read at most a limit and a newline more, plus one byte to detect "too large" without
	// reading an unbounded input into memory.
	buf, err := io.ReadAll(io.LimitReader(r, int64(maxValueSize+len("\r\n")+1)))
	if err != nil {
		clear(buf)
		return nil, err
	}
	return checkSecret(trimNewline(buf))
}

// trimNewline removes one trailing "\n" or "\r\n".
func trimNewline(b []byte) []byte {
	if v, ok := bytes.CutSuffix(b, []byte("\n")); ok {
		v, _ = bytes.CutSuffix(v, []byte("\r"))
		return v
	}
	return b
}

// checkSecret refuses empty and oversized values, wiping what it refuses.
func checkSecret(v []byte) ([]byte, error) {
	switch {
	case len(v) == 0:
		return nil, errEmptyValue
	case len(v) > maxValueSize:
		clear(v)
		return nil, errValueTooLarge
	}
	return v, nil
}

// fdReader is an input with a file descriptor (an *os.File) that may be a terminal.
type fdReader interface {
	io.Reader
	Fd() uintptr
}

// readValue gets a credential value from --from-file if given, else from stdin: hidden typing with
// a prompt on stderr if stdin is a terminal, otherwise the whole input. The caller clears the
// returned slice when done with it.
func (a *app) readValue(ctx context.Context, fromFile, prompt string) ([]byte, error) {
	if fromFile != "" {
		f, err := os.Open(fromFile)
		if err != nil {
			return nil, fmt.Errorf("--from-file: %w", err)
		}
		defer f.Close()
		v, err := readSecret(f)
		if err != nil {
			return nil, fmt.Errorf("--from-file %s: %w", fromFile, err)
		}
		return v, nil
	}
	if in, ok := a.stdin.(fdReader); ok && term.IsTerminal(int(in.Fd())) {
		fmt.Fprint(a.stderr, prompt)
		v, err := readPassword(ctx, int(in.Fd()))
		fmt.Fprintln(a.stderr) // the user's Enter was not echoed
		if err != nil {
			clear(v)
			return nil, fmt.Errorf("read value from terminal: %w", err)
		}
		return checkSecret(v)
	}
	v, err := readSecret(a.stdin)
	if err != nil {
		if errors.Is(err, errEmptyValue) || errors.Is(err, errValueTooLarge) {
			return nil, err
		}
		return nil, fmt.Errorf("read value from stdin: %w", err)
	}
	return v, nil
}

// readPassword reads a line from the terminal fd without echo. SIGINT is caught by brokerctl to
// cancel ctx rather than killing it, so an interrupted read must put the terminal's echo back
// itself before returning.
func readPassword(ctx context.Context, fd int) ([]byte, error) {
	state, err := term.GetState(fd)
	if err != nil {
		return nil, err
	}
	type result struct {
		v   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := term.ReadPassword(fd)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		term.Restore(fd, state)
		return nil, ctx.Err()
	}
}

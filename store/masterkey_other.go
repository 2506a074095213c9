//go:build !linux

package store

// createKeysetFile gives path the contents data, mode 0600, never overwriting and never leaving a
// partial file at path: through a named temporary file (createKeysetFileNamed), as Linux does
// where O_TMPFILE is missing.
func createKeysetFile(path string, data []byte) error {
	return createKeysetFileNamed(path, data)
}

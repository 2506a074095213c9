//go:build !unix

package client

import "fmt"

// socketDenied explains an EACCES from connecting to path. Without Unix permissions to read,
// it says only what was refused.
func socketDenied(path string, cause error) string {
	return fmt.Sprintf("permission denied on %s (%v); ask an operator who may connect", path, cause)
}

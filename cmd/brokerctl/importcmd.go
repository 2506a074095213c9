package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/importer"
	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// tutorialKeyEnv is where the tutorial keeps its file's key.
const tutorialKeyEnv = "MCP_ENCRYPTION_KEY"

func newImportCmd(a *app) *cobra.Command {
	var fernetFile, gcmFile, keyFile string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "import (--fernet FILE | --aes-gcm-hex FILE) [--key-file F]",
		Short: "Import credentials from the tutorial's encrypted file (mcp_credentials.enc)",
		Long: `Read the tutorial's credential file, decrypt every entry and store each one in brokerd as
version 1 (how=import). --fernet reads the Python version (name -> Fernet token); --aes-gcm-hex the
JavaScript version (name -> ivhex:taghex:cipherhex, AES-256-GCM). The key comes from
$` + tutorialKeyEnv + ` or --key-file. Nothing is stored unless every entry decrypts and no name is
taken already. Values are never printed. Delete the old file afterwards.`,
		Example: `  brokerctl import --fernet mcp_credentials.enc            # key in $MCP_ENCRYPTION_KEY
  brokerctl import --aes-gcm-hex mcp_credentials.enc --key-file key.hex`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, path := importer.FormatFernet, fernetFile
			switch {
			case fernetFile != "" && gcmFile != "":
				return errors.New("give one of --fernet and --aes-gcm-hex, not both")
			case gcmFile != "":
				format, path = importer.FormatAESGCMHex, gcmFile
			case fernetFile == "":
				return errors.New("give the file to import with --fernet FILE (Python tutorial) or --aes-gcm-hex FILE (JavaScript tutorial)")
			}
			key, err := a.importKey(keyFile)
			if err != nil {
				return err
			}
			data, err := readLimited(path, importer.MaxFileSize)
			if err != nil {
				return err
			}
			var entries []importer.Entry
			if format == importer.FormatFernet {
				entries, err = importer.ParseFernet(data, key)
			} else {
				entries, err = importer.ParseAESGCMHex(data, key)
			}
			if err != nil {
				return fmt.Errorf("%s: %w (nothing was imported)", path, err)
			}
			defer importer.Clear(entries)
			names := make([]string, len(entries))
			for i, e := range entries {
				if err := broker.ValidateCredential(e.Name, e.Value); err != nil {
					msg := strings.TrimPrefix(err.Error(), broker.ErrInvalidArgument.Error()+": ")
					return fmt.Errorf("%s: entry %q: %s (nothing was imported)", path, e.Name, msg)
				}
				names[i] = e.Name
			}
			if dryRun {
				fmt.Fprintf(a.stdout, "would import %d credentials: %s\n", len(names), strings.Join(names, ", "))
				return nil
			}
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				return a.importEntries(ctx, c, path, format, entries)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&fernetFile, "fernet", "", "the Python tutorial's file: JSON name -> Fernet token")
	f.StringVar(&gcmFile, "aes-gcm-hex", "", "the JavaScript tutorial's file: JSON name -> ivhex:taghex:cipherhex")
	f.StringVar(&keyFile, "key-file", "", "read the key from this file instead of $"+tutorialKeyEnv)
	f.BoolVar(&dryRun, "dry-run", false, "decrypt and list the names only; store nothing")
	return cmd
}

// importKey returns the file's key from --key-file or the tutorial's environment variable.
func (a *app) importKey(keyFile string) (string, error) {
	if keyFile != "" {
		b, err := readLimited(keyFile, 4096)
		if err != nil {
			return "", fmt.Errorf("--key-file: %w", err)
		}
		defer clear(b)
		return strings.TrimSpace(string(b)), nil
	}
	if k := a.getenv(tutorialKeyEnv); k != "" {
		return k, nil
	}
	return "", fmt.Errorf("no key: set %s (as the tutorial does) or pass --key-file FILE", tutorialKeyEnv)
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		clear(b)
		return nil, fmt.Errorf("%s is larger than %d bytes; is it the right file?", path, limit)
	}
	return b, nil
}

// importAPI is the one-transaction import; *client.Client has it, tests substitute a fake.
type importAPI interface {
	ImportCredentials(ctx context.Context, entries []client.ImportEntry, source string) ([]*credbrokerv1.Credential, error)
}

func (a *app) importEntries(ctx context.Context, c brokerAPI, path, format string, entries []importer.Entry) error {
	imp, ok := c.(importAPI)
	if !ok {
		return errors.New("internal error: this client cannot import")
	}
	existing, err := c.ListCredentials(ctx)
	if err != nil {
		return err
	}
	taken := map[string]bool{}
	for _, e := range existing {
		taken[e.GetName()] = true
	}
	batch := make([]client.ImportEntry, len(entries))
	for i, e := range entries {
		if taken[e.Name] {
			return fmt.Errorf("credential %q already exists in brokerd; nothing was imported (delete it, or rotate it with the value instead)", e.Name)
		}
		batch[i] = client.ImportEntry{Name: e.Name, Value: e.Value}
	}
	// One call, one transaction: brokerd stores every entry or, on any error, none.
	creds, err := imp.ImportCredentials(ctx, batch, format)
	if err != nil {
		if strings.Contains(err.Error(), "nothing was imported") {
			return err
		}
		return fmt.Errorf("%w (nothing was imported)", err)
	}
	done := make([]string, len(creds))
	for i, cred := range creds {
		done[i] = fmt.Sprintf("%s (v%d)", cred.GetName(), cred.GetVersion())
	}
	fmt.Fprintf(a.stdout, "imported %d credentials from %s: %s\n", len(done), path, strings.Join(done, ", "))
	fmt.Fprintf(a.stdout, "brokerd now holds them. Delete the old file, which anyone with %s can decrypt:\n  shred -u %s\nand remove %s from your environment and shell profile.\n",
		tutorialKeyEnv, shellQuote(path), tutorialKeyEnv)
	return nil
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/credbroker/credbroker/store"
)

// MaxImportEntries bounds one ImportAll: the tutorial's file holds a handful of keys, and its
// 1 MiB limit cannot hold many more than this.
const MaxImportEntries = 20000

// ImportEntry is one credential for ImportAll. The caller clears Value when done.
type ImportEntry struct {
	Name  string
	Value []byte
}

// ImportAll stores every entry as version 1 (how=import) in one transaction: all of them, or on
// any error none. Every entry is validated before anything is written; a repeated name is refused
// (InvalidArgument), a name already stored is ErrExists. Errors name the entry, never a value.
func (b *Broker) ImportAll(ctx context.Context, entries []ImportEntry, source string, caller Caller) ([]store.Credential, error) {
	ci := callInfo(ctx)
	ci.Event = "import"
	if len(entries) == 0 {
		return nil, invalid("nothing to import")
	}
	if len(entries) > MaxImportEntries {
		return nil, invalid("%d entries; one import takes at most %d", len(entries), MaxImportEntries)
	}
	if !importSourceRE.MatchString(source) {
		return nil, invalid("import source must match [a-z0-9-]{0,32}")
	}
	if len(entries) == 1 {
		ci.Credential = entries[0].Name
	}
	now, by := b.now(), uidOf(caller)
	detail := "from " + orDefault(source, "another store")
	batch := make([]store.NewCredential, len(entries))
	seen := make(map[string]bool, len(entries))
	for i, e := range entries {
		if err := ValidateCredential(e.Name, e.Value); err != nil {
			msg := strings.TrimPrefix(err.Error(), ErrInvalidArgument.Error()+": ")
			return nil, invalid("entry %d (%s): %s; nothing was imported", i+1, quoteInput(e.Name), msg)
		}
		if seen[e.Name] {
			return nil, invalid("credential %q appears more than once in the import; nothing was imported", e.Name)
		}
		seen[e.Name] = true
		batch[i] = store.NewCredential{Name: e.Name, Value: e.Value,
			Event: &store.CredentialEvent{At: now, Event: "import", Version: 1, ByUID: by, Detail: detail}}
	}
	creds, err := b.store.CreateCredentials(batch, store.VersionMeta{At: now, ByUID: by, How: store.HowImport})
	if err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("%w; nothing was imported (delete it, or rotate it with the value instead)", err)
		}
		return nil, fmt.Errorf("import: %w; nothing was imported", err)
	}
	names := make([]string, len(creds))
	for i, c := range creds {
		names[i] = c.Name
	}
	b.log.Info("credentials imported", "count", len(creds), "credentials", strings.Join(names, ","), "source", source)
	return creds, nil
}

package main

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Every brokerctl command and each of its flags is in the README's command tables: a table row
// that names the command (`PATH …` or `… PATH`) and mentions the flag. The README is where
// operators look; a flag it does not show is one they do not know they have.
func TestReadmeDocumentsEveryCommandAndFlag(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "| `") {
			rows = append(rows, l)
		}
	}
	root := newRootCmd(newApp(strings.NewReader(""), io.Discard, io.Discard))
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			walk(sub)
		}
		if c == root || c.HasAvailableSubCommands() {
			return
		}
		path := subcommandPath(c)
		var mine []string
		for _, r := range rows {
			if strings.Contains(r, "`"+path+" ") || strings.Contains(r, "`"+path+"`") {
				mine = append(mine, r)
			}
		}
		if len(mine) == 0 {
			t.Errorf("README has no table row for `brokerctl %s`", path)
			return
		}
		joined := strings.Join(mine, "\n")
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Name == "help" || f.Hidden {
				return
			}
			if !strings.Contains(joined, "--"+f.Name) {
				t.Errorf("README's row for `brokerctl %s` does not mention --%s", path, f.Name)
			}
		})
	}
	walk(root)
}

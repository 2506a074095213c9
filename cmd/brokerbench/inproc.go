package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/credbroker/credbroker/broker/daemon"
)

// serveBrokerd is the "serve-brokerd" child mode: brokerd's own daemon.Run in this process, so it
// can be profiled (brokerd has no pprof endpoint). SIGUSR1 starts a CPU profile and snapshots the
// allocation profile; SIGUSR2 stops the CPU profile, writes the allocation profile again (diff the
// two with pprof -diff_base) and prints "profiled".
func serveBrokerd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve-brokerd", flag.ContinueOnError)
	var cfg daemon.Config
	fs.StringVar(&cfg.Socket, "socket", "", "Unix socket")
	fs.StringVar(&cfg.DB, "db", "", "bbolt file")
	fs.StringVar(&cfg.MasterKeyset, "master-keyset", "", "master keyset file")
	fs.StringVar(&cfg.UpstreamURL, "upstream-url", "", "upstream base URL")
	cpuOut := fs.String("cpuprofile", "", "CPU profile written between SIGUSR1 and SIGUSR2")
	allocOut := fs.String("allocprofile", "", "allocation profile; FILE.base is the snapshot at SIGUSR1")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.AuditRetention = 30 * 24 * time.Hour // brokerd's default
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.Version = "brokerbench-inproc"
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var f *os.File
		for s := range sig {
			switch s {
			case syscall.SIGUSR1:
				if *allocOut != "" {
					writeProfile("allocs", *allocOut+".base")
				}
				if *cpuOut != "" {
					var err error
					if f, err = os.Create(*cpuOut); err == nil {
						err = pprof.StartCPUProfile(f)
					}
					if err != nil {
						fmt.Fprintln(os.Stderr, "cpu profile:", err)
					}
				}
			case syscall.SIGUSR2:
				if f != nil {
					pprof.StopCPUProfile()
					f.Close()
					f = nil
				}
				if *allocOut != "" {
					writeProfile("allocs", *allocOut)
				}
				fmt.Println("profiled")
			}
		}
	}()
	fmt.Println("ready unix://" + cfg.Socket)
	return daemon.Run(ctx, cfg)
}

func writeProfile(name, path string) {
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, name, "profile:", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		fmt.Fprintln(os.Stderr, name, "profile:", err)
	}
}

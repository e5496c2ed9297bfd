// Command fusionrag is the one binary of the project: the sidecar (serve), the
// small vLLM-style engine (engine), offline fusion (ingest), measurements
// (bench), a direct model runner (generate) and a self-contained demo (demo).
// Each subcommand is a few lines; the logic lives in the packages.
package main

import (
	"fmt"
	"os"
	"sort"
)

// command is one subcommand: a one-line summary and its entry point, which
// receives the arguments after the subcommand name.
type command struct {
	summary string
	run     func(args []string) error
}

// commands is filled by the cmd_*.go files' init functions.
var commands = map[string]command{}

func register(name, summary string, run func(args []string) error) {
	commands[name] = command{summary: summary, run: run}
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: fusionrag <command> [flags]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'fusionrag <command> -h' for the flags of one command.\n")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	c, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "fusionrag: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err := c.run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "fusionrag %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

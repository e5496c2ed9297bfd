// Command fusionrag is the one binary of the project: the sidecar (serve), the
// small vLLM-style engine (engine), offline fusion (ingest), measurements
// (bench), a direct model runner (generate), a GGUF writer (convert) and a
// self-contained demo (demo). Each subcommand is a few lines; the logic lives
// in the packages.
//
// Every command line behaves the same way: -h or --help prints the usage to
// stdout and exits 0; a bad flag or argument prints the error and the usage
// to stderr and exits 2; a failure of the command itself exits 1.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
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

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args (without the program name) and
// returns the exit code: 0 (help included), 1 (the command failed) or 2
// (bad usage).
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		usage(stdout)
		return 0
	case "help": // fusionrag help [command [harness]] = fusionrag command [harness] -h
		if len(args) == 1 {
			usage(stdout)
			return 0
		}
		return run(append(append([]string(nil), args[1:]...), "-h"), stdout, stderr)
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "fusionrag: unknown command %q\n\n", name)
		usage(stderr)
		return 2
	}
	err := c.run(args[1:])
	var help *helpError
	var bad *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &help):
		fmt.Fprint(stdout, help.usage)
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0 // a flag set parsed without parseFlags printed its own usage
	case errors.As(err, &bad):
		fmt.Fprintf(stderr, "fusionrag %s: %v\n\n%s", bad.cmd, bad.err, bad.usage)
		return 2
	default:
		fmt.Fprintf(stderr, "fusionrag %s: %v\n", name, err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: fusionrag <command> [flags]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
		if n == "bench" {
			for _, h := range benchNames() {
				fmt.Fprintf(w, "    %-12s %s\n", h, benchCommands[h].summary)
			}
		}
	}
	fmt.Fprintf(w, "\nRun 'fusionrag <command> -h' or 'fusionrag help <command>' ('fusionrag bench <harness> -h') for the flags of one command.\n")
}

// helpError is what a command returns for -h/--help: run prints usage to
// stdout and exits 0.
type helpError struct{ usage string }

func (e *helpError) Error() string { return "help requested" }

// usageError is a bad command line: run prints err and usage to stderr and
// exits 2.
type usageError struct {
	cmd   string // "serve", "bench ttft"
	err   error
	usage string
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// newFlagSet returns the flag set of `fusionrag <name>` (name: "serve",
// "bench ttft"), whose usage names the command line and its summary. Parse
// it with parseFlags.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: fusionrag %s [flags]\n", name)
		if s := summaryOf(name); s != "" {
			fmt.Fprintf(w, "\n%s\n", s)
		}
		fmt.Fprintf(w, "\nflags:\n")
		fs.PrintDefaults()
	}
	return fs
}

// summaryOf returns the one-line summary of a command ("serve") or of a
// harness ("bench ttft").
func summaryOf(name string) string {
	if h, ok := strings.CutPrefix(name, "bench "); ok {
		return benchCommands[h].summary
	}
	return commands[name].summary
}

// parseFlags parses args into fs, which takes no positional arguments. It
// returns a *helpError for -h/--help and a *usageError for a bad flag or a
// positional argument, both carrying fs's usage, so that run prints them to
// the right stream with the right exit code.
func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard) // the usage goes into the error, not to stderr now
	err := fs.Parse(args)
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err == nil {
		return nil
	}
	var b strings.Builder
	fs.SetOutput(&b)
	fs.Usage()
	fs.SetOutput(nil)
	if errors.Is(err, flag.ErrHelp) {
		return &helpError{usage: b.String()}
	}
	return &usageError{cmd: fs.Name(), err: err, usage: b.String()}
}

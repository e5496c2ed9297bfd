package main

import (
	"os"
	"testing"
	"time"
)

// TestServeFlagsTyped: serve's configuration flags take their field's type:
// a bool needs no value, a duration or a number is parsed as one at once
// (a bad one is a usage error, exit 2).
func TestServeFlagsTyped(t *testing.T) {
	for _, k := range []string{"FUSIONRAG_CONFIG", "FUSIONRAG_UPSTREAM", "FUSIONRAG_FUSION_DISABLED", "FUSIONRAG_FUSION_RATIO", "FUSIONRAG_TIMEOUTS_READ", "FUSIONRAG_LIMITS_MAX_CHUNKS"} {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
	up := []string{"--upstream", "http://127.0.0.1:1"}
	cfg, _, err := parseServe(append(up, "--fusion.ratio", "0.3", "--timeouts.read", "3s", "--limits.max_chunks=9", "--fusion.disabled"))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Fusion.Disabled || cfg.Fusion.Ratio != 0.3 || cfg.Timeouts.Read != 3*time.Second || cfg.Limits.MaxChunks != 9 {
		t.Errorf("got disabled %v, ratio %v, read %v, max_chunks %d; want true, 0.3, 3s, 9",
			cfg.Fusion.Disabled, cfg.Fusion.Ratio, cfg.Timeouts.Read, cfg.Limits.MaxChunks)
	}
	// --fusion.disabled=false after the env said true: flags win.
	t.Setenv("FUSIONRAG_FUSION_DISABLED", "true")
	if cfg, _, err := parseServe(append(up, "--fusion.disabled=false")); err != nil || cfg.Fusion.Disabled {
		t.Errorf("--fusion.disabled=false over FUSIONRAG_FUSION_DISABLED=true: disabled %v, err %v; want false", cfg.Fusion.Disabled, err)
	}
	os.Unsetenv("FUSIONRAG_FUSION_DISABLED")
	for _, tc := range []cliCase{
		{args: []string{"serve", "--timeouts.read", "soon"}, code: 2, errOut: "-timeouts.read"},
		{args: []string{"serve", "--limits.max_chunks", "many"}, code: 2, errOut: "-limits.max_chunks"},
		{args: []string{"serve", "--fusion.disabled", "yes"}, code: 2, errOut: `unexpected arguments ["yes"]`},
		{args: []string{"serve", "-h"}, out: "-fusion.disabled\n"}, // a bool: no type word after the name
		{args: []string{"serve", "-h"}, out: "-timeouts.read duration\n"},
	} {
		runCLI(t, tc)
	}
}

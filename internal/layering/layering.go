// Package layering holds no code: its test checks that the module's
// packages import each other only downwards, as docs/architecture.md
// draws them (go list over the whole module, non-test imports).
package layering

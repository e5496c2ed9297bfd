package kvstore

import (
	"strings"
	"testing"
)

// FuzzOpenClusterURL: any store spec, cluster seeds and commas included,
// opens or fails with an error; it never panics. Opening does not dial.
func FuzzOpenClusterURL(f *testing.F) {
	for _, s := range []string{
		"redis-cluster://a:1,b:2/?ttl=1h&part=2MiB&spread=0",
		"mem://?max=1MiB,redis-cluster://a:1,b:2,redis://c:3/0",
		"redis-cluster://a:1?addr=b:2&max_redirects=2",
		"redis-cluster://,/",
		"rediss-cluster://u:p@a:1,,b:2/x",
		"redis-cluster://a:1/?spread=maybe&part=-1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		if strings.Contains(strings.ToLower(spec), "disk") {
			t.Skip() // a disk tier would create directories on this machine
		}
		s, err := Open(spec)
		if err == nil {
			s.Close()
		}
	})
}

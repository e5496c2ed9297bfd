package kvstore

import (
	"errors"
	"strings"
	"testing"
)

func TestOpenURLs(t *testing.T) {
	dir := t.TempDir()
	good := []struct {
		url   string
		tiers []string
		max   []int64
	}{
		{"mem://?max=2GiB", []string{"mem"}, []int64{2 << 30}},
		{"mem://", []string{"mem"}, []int64{1 << 30}},
		{"mem://?max=1.5MB&policy=heat", []string{"mem"}, []int64{1500000}},
		{"disk://" + dir + "?max=50GiB", []string{"disk"}, []int64{50 << 30}},
		{"redis://127.0.0.1:1/0?ttl=24h&part=8MiB", []string{"redis"}, []int64{0}},
		{"redis://:secret@127.0.0.1:1/2?ttl=0&timeout=1s&pool_size=4", []string{"redis"}, []int64{0}},
		{"mem://?max=1MiB, disk://" + dir + "/b?max=2MiB,redis://127.0.0.1:1", []string{"mem", "disk", "redis"}, []int64{1 << 20, 2 << 20, 0}},
	}
	for _, tc := range good {
		t.Run(tc.url, func(t *testing.T) {
			s, err := Open(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			st := s.Stats()
			if len(st) != len(tc.tiers) {
				t.Fatalf("%d tiers, want %d", len(st), len(tc.tiers))
			}
			for i := range st {
				if st[i].Tier != tc.tiers[i] || st[i].MaxBytes != tc.max[i] {
					t.Errorf("tier %d: %s max %d, want %s max %d", i, st[i].Tier, st[i].MaxBytes, tc.tiers[i], tc.max[i])
				}
				if strings.Contains(st[i].URL, "secret") {
					t.Errorf("password in stats URL %q", st[i].URL)
				}
			}
		})
	}
	bad := []struct{ url, says string }{
		{"", "empty URL"},
		{"mem://?max=1MiB,", "empty URL"},
		{"ftp://host/x", `unknown scheme "ftp"`},
		{"mem://?max=lots", "parameter max"},
		{"mem://?max=-1", "parameter max"},
		{"mem://?maxx=1", "unknown parameter(s) maxx"},
		{"mem://?policy=lfu", "unknown policy"},
		{"mem://host", "no host or path"},
		{"disk://", "needs a directory"},
		{"disk://relative/path", "use disk:///absolute/path"},
		{"disk://" + dir + "?fsync=maybe", "not a boolean"},
		{"disk://" + dir + "?rescan=often", "parameter rescan"},
		{"redis://h:1/0?deadline=soon", "parameter deadline"},
		{"redis-cluster://h:1,h:2/?deadline=soon", "parameter deadline"},
		{"redis://h:1/0?ttl=forever", "parameter ttl"},
		{"redis://h:1/0?part=10", "below 1 KiB"},
		{"redis://h:1/0?bogus=1", "bogus"},
		{"redis://h:1/0?streams=many", "parameter streams"},
		{"redis://h:1/0?streams=100", "streams 100"},
		{"redis://h:1/zero", "database"},
		{"%zz://", "parse"},
	}
	for _, tc := range bad {
		t.Run("bad "+tc.url, func(t *testing.T) {
			s, err := Open(tc.url)
			if err == nil {
				s.Close()
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrBadURL) || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("error %q: want ErrBadURL saying %q", err, tc.says)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"4096", 4096, true},
		{"2GiB", 2 << 30, true},
		{"512MiB", 512 << 20, true},
		{"1.5GB", 1500000000, true},
		{"8M", 8 << 20, true},
		{" 3 KiB ", 3072, true},
		{"", 0, false},
		{"GiB", 0, false},
		{"1XB", 0, false},
		{"1..2MB", 0, false},
		{"1e9", 0, false},
		{"99999999TiB", 0, false},
	}
	for _, tc := range tests {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestRegisterDuplicatePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("duplicate Register did not panic")
		}
	}()
	Register("mem", nil)
}

package bench

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Machine describes where a report was measured.
type Machine struct {
	// CPU is the processor model name (from /proc/cpuinfo where available).
	CPU string `json:"cpu"`
	// Cores is the number of logical CPUs the OS reports; GOMAXPROCS the
	// number Go used.
	Cores      int `json:"cores"`
	GOMAXPROCS int `json:"gomaxprocs"`
	// MemoryGiB is the total memory (0 where unknown).
	MemoryGiB float64 `json:"memory_gib"`
	// LoadAvg is the 1-minute load average when the report was written
	// (0 where unknown): above Cores means the CPUs were shared.
	LoadAvg float64 `json:"load_avg_1m"`
	OS      string  `json:"os"`
	Arch    string  `json:"arch"`
	Go      string  `json:"go"`
}

// Meta is recorded with every report: what was run, on what, when.
type Meta struct {
	// Command is the command line (os.Args joined).
	Command string `json:"command"`
	// Model names the model (or models) measured.
	Model string `json:"model"`
	// Machine is where it ran.
	Machine Machine `json:"machine"`
	// Date is when the report was written (UTC, RFC 3339).
	Date string `json:"date"`
	// Quick is true for a --quick run.
	Quick bool `json:"quick"`
	// Notes are free-form remarks rendered under the header.
	Notes []string `json:"notes,omitempty"`
}

// NewMeta records args as the command line, model, the machine and the
// current time.
func NewMeta(args []string, modelName string, quick bool) Meta {
	return Meta{Command: strings.Join(args, " "), Model: modelName, Machine: ThisMachine(),
		Date: time.Now().UTC().Format(time.RFC3339), Quick: quick}
}

// ThisMachine describes the machine the process runs on. Fields the platform
// cannot tell stay zero.
func ThisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), OS: runtime.GOOS, Arch: runtime.GOARCH,
		Go: runtime.Version(), CPU: cpuModel()}
	if kb := memInfoKB("MemTotal"); kb > 0 {
		m.MemoryGiB = float64(kb) / (1 << 20)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if fs := strings.Fields(string(b)); len(fs) > 0 {
			m.LoadAvg, _ = strconv.ParseFloat(fs[0], 64)
		}
	}
	return m
}

// cpuModel reads the first "model name" of /proc/cpuinfo ("" elsewhere).
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// memInfoKB returns a /proc/meminfo field in kB (0 when absent).
func memInfoKB(field string) int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == field {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// String is a one-line description: "CPU, N cores (GOMAXPROCS M), X GiB, load L".
func (m Machine) String() string {
	var b strings.Builder
	cpu := m.CPU
	if cpu == "" {
		cpu = "unknown CPU"
	}
	b.WriteString(cpu)
	b.WriteString(", " + strconv.Itoa(m.Cores) + " cores")
	if m.GOMAXPROCS != m.Cores {
		b.WriteString(" (GOMAXPROCS " + strconv.Itoa(m.GOMAXPROCS) + ")")
	}
	if m.MemoryGiB > 0 {
		b.WriteString(", " + strconv.FormatFloat(m.MemoryGiB, 'f', 0, 64) + " GiB")
	}
	b.WriteString(", " + m.OS + "/" + m.Arch + ", " + m.Go)
	if m.LoadAvg > 0 {
		b.WriteString(", load average " + strconv.FormatFloat(m.LoadAvg, 'f', 2, 64))
	}
	return b.String()
}

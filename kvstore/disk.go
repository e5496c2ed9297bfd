package kvstore

import (
	"cmp"
	"container/list"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
)

func init() {
	Register("disk", func(u *url.URL) (Store, error) {
		if u.Host != "" {
			return nil, fmt.Errorf("disk URL has host %q; use disk:///absolute/path", u.Host)
		}
		if u.Path == "" || u.Path == "/" {
			return nil, fmt.Errorf("disk URL needs a directory: disk:///path?max=50GiB")
		}
		q, err := newQuery(u)
		if err != nil {
			return nil, err
		}
		c := DiskConfig{Dir: u.Path}
		if c.MaxBytes, err = q.size("max", 0); err != nil {
			return nil, err
		}
		if c.Fsync, err = q.bool("fsync", false); err != nil {
			return nil, err
		}
		if c.Mmap, err = q.bool("mmap", false); err != nil {
			return nil, err
		}
		if r := q.str("rescan", ""); r != "" {
			if c.Rescan, err = time.ParseDuration(r); err != nil {
				return nil, fmt.Errorf("parameter rescan: %v", err)
			}
			if c.Rescan == 0 {
				c.Rescan = -1 // explicit rescan=0: only on open
			}
		}
		if err := q.unknown(); err != nil {
			return nil, err
		}
		d, err := OpenDisk(c)
		if err != nil {
			return nil, err
		}
		d.url = u.Redacted()
		return d, nil
	})
}

// DiskConfig configures a disk tier.
type DiskConfig struct {
	// Dir holds the blobs, one file each: Dir/<2 hex>/<32 hex>.kv, and the
	// files being written, Dir/tmp/. Several stores, in one process or
	// several (serve and ingest, two serves), may share a directory: see
	// Disk.
	Dir string
	// MaxBytes is the budget in on-disk bytes (file sizes rounded up to
	// 4 KiB blocks); default 10 GiB. Processes sharing the directory should
	// give the same budget: each one holds the files it knows of to it.
	MaxBytes int64
	// Fsync syncs each file before its rename. Off by default: a blob torn by
	// a crash fails its checksum and is dropped as a miss, which is all a
	// cache needs.
	Fsync bool
	// Mmap maps each file and copies the blob out of the mapping under a
	// fault guard, instead of reading it. Off by default: both end with the
	// blob in ordinary memory (a mapping must not outlive Get, see read), and
	// reading was as fast at 64 MiB and ~2x faster at 320 KiB
	// (BenchmarkStore get-owned, issue 18). Ignored where mmap is missing.
	Mmap bool
	// Rescan is how often the index is resynchronised with the directory,
	// to learn of the files other processes wrote and removed; default
	// 10 s, negative: only on open. A rescan walks the directory (one stat
	// per file) in the background of a Get or Put that finds it due.
	Rescan time.Duration
}

const (
	diskBlock = 4096
	// defaultRescan is DiskConfig.Rescan's default.
	defaultRescan = 10 * time.Second
	// staleTempAge: a temporary file is removed by a scan only when it is
	// older than this and no writer holds its lock (see cleanTemp).
	staleTempAge = time.Minute
)

func diskAccount(n int64) int64 { return (n + diskBlock - 1) &^ (diskBlock - 1) }

// tempToken makes this process's temporary file names unique among the
// processes sharing a directory (pids are not: two containers sharing a
// volume may both be pid 1).
var tempToken = func() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return strconv.Itoa(os.Getpid())
	}
	return hex.EncodeToString(b[:])
}()

// tempSeq numbers temporary files of this process (every Disk in it).
var tempSeq atomic.Uint64

// Disk is the disk tier: one file per blob, written to a temporary file and
// renamed into place, read into ordinary memory and verified there, least
// recently used files evicted to stay within the budget.
//
// Several processes may share the directory (fusionrag serve while fusionrag
// ingest writes, two serves); nothing in it is process-exclusive. The file
// system is the truth and each store's in-memory index a cache of it:
//   - a blob is written to Dir/tmp/ under a name unique to the process and
//     renamed into place, so a reader in any process sees the old file or
//     the new one, whole, never a partial one; the writer holds an flock on
//     its temporary file until the rename, so that a scan removes only the
//     temporary files of writers that died;
//   - a Get or Has that misses the index looks at the file system, so a blob
//     another process wrote is a hit at once (and indexed); a file that
//     vanished (another process evicted or deleted it) is a miss;
//   - reading is read(2), not a mapping that outlives Get, so a file removed
//     or replaced while it is read is harmless: the reader keeps the inode;
//   - each store evicts from what it knows, least recently used first, where
//     a read marks a file used for every process by advancing its
//     modification time (at most once per Rescan interval); before removing
//     a file it checks that no other process used or rewrote it since, and
//     a file already gone is only forgotten. So two processes over budget
//     remove the same oldest files, never each other's fresh ones;
//   - every Rescan interval the index is resynchronised with the directory.
//
// So Stats (Entries, Bytes) is this process's view, exact for one process
// and approximate for several: between rescans it misses what the others
// wrote. Each process holds what it knows of to MaxBytes; the directory
// stays within processes x MaxBytes at worst, and within MaxBytes plus
// what was written since the last rescan in practice.
type Disk struct {
	cfg DiskConfig
	url string

	mu       sync.Mutex
	index    map[fingerprint.Key]*diskEntry
	gen      uint64    // merges so far
	lru      list.List // front: most recent
	used     int64     // accounted bytes of indexed files plus reservations
	closed   bool
	lastScan atomic.Int64 // unix nanoseconds of the last rescan's start
	scanning atomic.Bool
	scans    sync.WaitGroup // rescans in flight; Close waits for them
	counters
}

type diskEntry struct {
	key  fingerprint.Key
	cost int64
	// last is when the blob was last known used (unix nanoseconds): its
	// file's modification time, or a read or write by this process.
	last int64
	// added is when the entry was indexed; a rescan that started before
	// does not drop it for not having seen its file.
	added int64
	gen   uint64 // the last merge that saw its file
	elem  *list.Element
}

// diskFile is a blob file found by a scan.
type diskFile struct {
	key   fingerprint.Key
	size  int64
	mtime int64 // unix nanoseconds
}

// OpenDisk opens (creating if needed) a disk tier; it validates c, fills
// defaults, removes temporary files left by dead writers and indexes
// existing blobs, least recently used (by modification time) first in line
// for eviction.
func OpenDisk(c DiskConfig) (*Disk, error) {
	if c.Dir == "" {
		return nil, errors.New("disk: no directory")
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = 10 << 30
	}
	if c.MaxBytes < 0 {
		return nil, fmt.Errorf("disk: negative max %d", c.MaxBytes)
	}
	if c.Rescan == 0 {
		c.Rescan = defaultRescan
	}
	if !canMmap {
		c.Mmap = false
	}
	d := &Disk{cfg: c, index: map[fingerprint.Key]*diskEntry{}}
	d.url = fmt.Sprintf("disk://%s?max=%d", c.Dir, c.MaxBytes)
	if err := os.MkdirAll(filepath.Join(c.Dir, "tmp"), 0o755); err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	start := time.Now().UnixNano()
	files, err := d.scan()
	if err != nil {
		return nil, fmt.Errorf("disk: indexing %s: %w", c.Dir, err)
	}
	d.mu.Lock()
	d.merge(files, start)
	d.mu.Unlock()
	d.lastScan.Store(start)
	return d, nil
}

func (d *Disk) path(k fingerprint.Key) string {
	s := k.String()
	return filepath.Join(d.cfg.Dir, s[:2], s+".kv")
}

// scan lists the blob files of the directory and removes the temporary
// files of dead writers.
func (d *Disk) scan() ([]diskFile, error) {
	tmpDir := filepath.Join(d.cfg.Dir, "tmp")
	var files []diskFile
	err := filepath.WalkDir(d.cfg.Dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path != d.cfg.Dir {
				return nil // removed meanwhile
			}
			return err
		}
		if de.IsDir() {
			if path == tmpDir {
				d.cleanTemp(tmpDir)
				return fs.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(de.Name(), ".kv") {
			return nil
		}
		k, perr := fingerprint.ParseKey(strings.TrimSuffix(de.Name(), ".kv"))
		if perr != nil || path != d.path(k) {
			return nil // not ours
		}
		info, ierr := de.Info()
		if ierr != nil {
			return nil // removed meanwhile
		}
		files = append(files, diskFile{k, info.Size(), info.ModTime().UnixNano()})
		return nil
	})
	return files, err
}

// cleanTemp removes the temporary files of writers that died: older than
// staleTempAge and not locked. A live writer holds an exclusive flock on its
// temporary file from just after creating it until after its rename; the
// age covers the instant between the two.
func (d *Disk) cleanTemp(dir string) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	old := time.Now().Add(-staleTempAge)
	for _, de := range des {
		info, err := de.Info()
		if err != nil || !info.Mode().IsRegular() || info.ModTime().After(old) {
			continue
		}
		p := filepath.Join(dir, de.Name())
		f, err := os.OpenFile(p, os.O_RDONLY, 0)
		if err != nil {
			continue
		}
		if ok, _ := tryLockFile(f); ok {
			os.Remove(p)
		}
		f.Close()
	}
}

// merge brings the index in line with files, a scan started at start (unix
// nanoseconds): files it lacks are indexed, sizes are updated, entries
// whose files are gone are forgotten (unless indexed after start: their
// file may have been renamed into place after the walk passed), the order
// of eviction is rebuilt from the last known uses, and the budget is
// enforced; mu held.
func (d *Disk) merge(files []diskFile, start int64) {
	d.gen++
	for _, f := range files {
		cost := diskAccount(f.size)
		if e, ok := d.index[f.key]; ok {
			d.used += cost - e.cost
			e.cost, e.last, e.gen = cost, max(e.last, f.mtime), d.gen
			continue
		}
		e := &diskEntry{key: f.key, cost: cost, last: f.mtime, added: start, gen: d.gen}
		e.elem = d.lru.PushFront(e)
		d.index[f.key] = e
		d.used += cost
	}
	entries := make([]*diskEntry, 0, len(d.index))
	for _, e := range d.index {
		if e.gen != d.gen && e.added < start {
			d.unindex(e) // removed by another process
			continue
		}
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b *diskEntry) int { return cmp.Compare(a.last, b.last) })
	for _, e := range entries { // oldest first, so the newest ends at the front
		d.lru.MoveToFront(e.elem)
	}
	d.evict(0)
}

// maybeRescan starts a rescan in the background when one is due; mu held.
func (d *Disk) maybeRescan(now int64) {
	if d.cfg.Rescan < 0 || d.closed || now-d.lastScan.Load() < int64(d.cfg.Rescan) {
		return
	}
	if !d.scanning.CompareAndSwap(false, true) {
		return
	}
	d.lastScan.Store(now)
	d.scans.Add(1)
	go func() {
		defer d.scans.Done()
		defer d.scanning.Store(false)
		d.Rescan()
	}()
}

// Rescan resynchronises the index with the directory now: files written by
// other processes are indexed, files they removed are forgotten, and the
// budget is enforced over what was found. It runs by itself every
// DiskConfig.Rescan.
func (d *Disk) Rescan() error {
	start := time.Now().UnixNano()
	files, err := d.scan()
	if err != nil {
		d.errors.Add(1)
		return fmt.Errorf("disk: rescanning %s: %w", d.cfg.Dir, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.merge(files, start)
	d.lastScan.Store(start)
	return nil
}

// Get implements Store. The blob is in ordinary memory: the file is read (or
// mapped and copied out under a fault guard) and verified on that copy, so a
// file truncated or rewritten while it is read is a miss, never a fault in a
// later reader (see readFile). A key missing from the index is looked up on
// the file system (another process may have written it) and indexed when
// found. A file that vanished is a miss; one that cannot be read back whole
// is dropped and reported as a miss (*CorruptError): counted as a corruption
// when it was short or faulted, as an error when the read failed.
func (d *Disk) Get(ctx context.Context, key fingerprint.Key, want fingerprint.Check) (*Blob, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := time.Now().UnixNano()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, ErrClosed
	}
	d.maybeRescan(now)
	e, ok := d.index[key]
	if ok {
		d.lru.MoveToFront(e.elem)
		e.last = now
	}
	d.mu.Unlock()
	raw, info, err := d.read(key)
	switch {
	case err == nil:
	case errors.Is(err, fs.ErrNotExist):
		if e != nil {
			d.drop(e) // removed by another process, or behind our back
		}
		d.misses.Add(1)
		return nil, ErrNotFound
	case errors.Is(err, errOpen):
		// Opening failed (descriptors, permissions): the file may be fine,
		// keep it and report the tier's failure.
		d.errors.Add(1)
		return nil, fmt.Errorf("disk: %w", err)
	default:
		// The file shrank under us, faulted while mapped, or its bytes could
		// not be read: it is unusable, a miss.
		var fe *mappedFaultError
		if errors.As(err, &fe) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			d.corruptions.Add(1)
		} else {
			d.errors.Add(1)
		}
		d.misses.Add(1)
		d.dropFile(key, e, info)
		return nil, &CorruptError{Tier: "disk", Key: key, Reason: err.Error()}
	}
	b, drop, err := d.verify("disk", raw, key, want)
	if err != nil {
		if drop {
			d.dropFile(key, e, info)
		}
		return nil, err
	}
	if e == nil {
		d.adopt(key, info)
	}
	return b, nil
}

// errOpen marks a failure to open a blob file, as opposed to one reading it.
var errOpen = errors.New("open")

// read returns the bytes of key's file in ordinary memory, with the file's
// information as opened (info is nil when it could not be opened).
//
// Trap: a blob must never stay backed by a file mapping once Get returns. A
// mapped file that is truncated (or whose page hits an I/O error) raises
// SIGBUS on the next access, wherever that happens; the runtime makes it
// fatal, and issue 18 saw the sidecar die in Blob.Clone that way. Writes
// here are atomic (temporary file + rename), but the directory is a plain
// directory anyone with access can write. So the mapping path copies out of
// the mapping under copyMapped's fault guard and unmaps at once; the
// no-mmap path reads the file (a short read is a miss). Both verify the
// checksum on the copy, so what was verified is what the caller gets.
//
// A read marks the file used for every process sharing the directory by
// advancing its modification time, when that is older than the rescan
// interval (see Disk); failing to (another user's file) is harmless.
func (d *Disk) read(key fingerprint.Key) ([]byte, fs.FileInfo, error) {
	p := d.path(key)
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("%w: %w", errOpen, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if now := time.Now(); now.Sub(info.ModTime()) > d.touchAfter() {
		os.Chtimes(p, now, now)
	}
	size := info.Size()
	if size < HeaderSize || size > HeaderSize+maxPayload {
		// Let Decode report it as corruption.
		buf := make([]byte, min(size, HeaderSize))
		if _, err := io.ReadFull(f, buf); err != nil {
			return nil, info, err
		}
		return buf, info, nil
	}
	buf := make([]byte, size)
	if d.cfg.Mmap {
		m, unmap, err := mapFile(f, int(size))
		if err != nil {
			return nil, info, err
		}
		err = copyMapped(buf, m)
		unmap()
		if err != nil {
			return nil, info, err
		}
		return buf, info, nil
	}
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, info, err
	}
	return buf, info, nil
}

// touchAfter is how stale a file's modification time may get before a read
// advances it.
func (d *Disk) touchAfter() time.Duration {
	if d.cfg.Rescan > 0 {
		return d.cfg.Rescan
	}
	return defaultRescan
}

// adopt indexes key's file, found on the file system by a Get or Has (another
// process wrote it), if it is still the file info describes and the budget
// has room for it (else the next rescan finds it, and eviction weighs it).
func (d *Disk) adopt(key fingerprint.Key, info fs.FileInfo) {
	cur, err := os.Stat(d.path(key))
	if err != nil || !os.SameFile(cur, info) {
		return
	}
	now := time.Now().UnixNano()
	cost := diskAccount(info.Size())
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.index[key]; ok || d.closed || d.used+cost > d.cfg.MaxBytes {
		return
	}
	e := &diskEntry{key: key, cost: cost, last: now, added: now}
	e.elem = d.lru.PushFront(e)
	d.index[key] = e
	d.used += cost
}

// dropFile forgets e (when not nil) and removes key's file if it is still
// the one info describes: another process may have renamed a good blob into
// its place since it was read.
func (d *Disk) dropFile(key fingerprint.Key, e *diskEntry, info fs.FileInfo) {
	if e != nil {
		d.drop(e)
	}
	if info == nil {
		return
	}
	if cur, err := os.Stat(d.path(key)); err == nil && os.SameFile(cur, info) {
		os.Remove(d.path(key))
	}
}

// drop removes e from the index if e is still the indexed entry for its key.
func (d *Disk) drop(e *diskEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if cur, ok := d.index[e.key]; !ok || cur != e {
		return
	}
	d.unindex(e)
}

// unindex forgets e; mu held.
func (d *Disk) unindex(e *diskEntry) {
	d.lru.Remove(e.elem)
	delete(d.index, e.key)
	d.used -= e.cost
}

// evict removes least recently used files until need more bytes fit in the
// budget or nothing is left to remove; mu held.
//
// The index may be stale when other processes share the directory, so the
// oldest entry's file is looked at first: gone (another process removed
// it), it is only forgotten; used or rewritten since (its modification time
// is past the entry's last use), it is moved to the front with that time
// instead of removed. Each entry is given that second chance at most once a
// call, so the loop ends.
func (d *Disk) evict(need int64) {
	spared := 0
	for d.used+need > d.cfg.MaxBytes && d.lru.Len() > 0 {
		e := d.lru.Back().Value.(*diskEntry)
		p := d.path(e.key)
		info, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			d.unindex(e)
			continue
		}
		if err == nil && spared < d.lru.Len() {
			if m := info.ModTime().UnixNano(); m > e.last {
				d.used += diskAccount(info.Size()) - e.cost
				e.cost, e.last = diskAccount(info.Size()), m
				d.lru.MoveToFront(e.elem)
				spared++
				continue
			}
		}
		d.unindex(e)
		// A reader holding the file open keeps its inode: removing it
		// under a reader (in any process) is safe.
		if err := os.Remove(p); err == nil {
			d.evictions.Add(1)
		}
	}
}

// Put implements Store: it writes a temporary file and renames it into place,
// so readers (in any process) see the old blob or the new one, never a
// partial one. The temporary file is reserved against the budget while it is
// written and an old file under the same key stays counted until the rename
// replaces it, so the bytes this store knows of never exceed the budget.
// Renames and evictions happen under one lock and cannot interleave.
func (d *Disk) Put(ctx context.Context, b *Blob) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	raw, err := b.Encode()
	if err != nil {
		return err
	}
	cost := diskAccount(int64(len(raw)))
	if cost > d.cfg.MaxBytes {
		return fmt.Errorf("%w: %d bytes > max %d", ErrTooLarge, cost, d.cfg.MaxBytes)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	d.maybeRescan(time.Now().UnixNano())
	d.evict(cost)
	if d.used+cost > d.cfg.MaxBytes {
		// The rest of the budget is reserved by writes in flight.
		d.mu.Unlock()
		d.errors.Add(1)
		return fmt.Errorf("disk: budget %d taken by writes in flight", d.cfg.MaxBytes)
	}
	d.used += cost // reserved while writing
	d.mu.Unlock()

	f, tmp, err := d.writeTemp(b.Key, raw)
	if f != nil {
		// Closed (and its lock released) after the rename: until then a
		// scan in another process must not take it for a dead writer's.
		defer f.Close()
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	d.used -= cost
	if err == nil && d.closed {
		err = ErrClosed
	}
	final := d.path(b.Key)
	if err == nil {
		err = os.MkdirAll(filepath.Dir(final), 0o755)
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		if tmp != "" {
			os.Remove(tmp)
		}
		if errors.Is(err, ErrClosed) {
			return err
		}
		d.errors.Add(1)
		return fmt.Errorf("disk: %w", err)
	}
	if old, ok := d.index[b.Key]; ok { // its file was just replaced
		d.unindex(old)
	}
	now := time.Now().UnixNano()
	e := &diskEntry{key: b.Key, cost: cost, last: now, added: now}
	e.elem = d.lru.PushFront(e)
	d.index[b.Key] = e
	d.used += cost
	d.puts.Add(1)
	d.bytesWrite.Add(int64(len(raw)))
	return nil
}

// writeTemp writes raw to a new temporary file, locked (see cleanTemp), and
// returns it open with its path; the caller closes it after the rename. On
// error the file is removed and closed, and f is nil.
func (d *Disk) writeTemp(key fingerprint.Key, raw []byte) (f *os.File, tmp string, err error) {
	tmp = filepath.Join(d.cfg.Dir, "tmp", key.String()+"."+tempToken+"."+strconv.FormatUint(tempSeq.Add(1), 10))
	f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		// Another process's operator removed tmp/; make it again.
		if err = os.MkdirAll(filepath.Dir(tmp), 0o755); err == nil {
			f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		}
	}
	if err != nil {
		return nil, "", err
	}
	err = lockFile(f)
	if err == nil {
		_, err = f.Write(raw)
	}
	if err == nil && d.cfg.Fsync {
		err = f.Sync()
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, "", err
	}
	return f, tmp, nil
}

// Has implements Store. A key missing from the index is looked up on the
// file system (another process may have written it).
func (d *Disk) Has(ctx context.Context, key fingerprint.Key) (bool, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return false, ErrClosed
	}
	_, ok := d.index[key]
	d.mu.Unlock()
	if ok {
		return true, nil
	}
	info, err := os.Stat(d.path(key))
	switch {
	case err == nil:
		d.adopt(key, info)
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		d.errors.Add(1)
		return false, fmt.Errorf("disk: %w", err)
	}
}

// Delete implements Store: the file goes for every process sharing the
// directory.
func (d *Disk) Delete(ctx context.Context, key fingerprint.Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if e, ok := d.index[key]; ok {
		d.unindex(e)
	}
	if err := os.Remove(d.path(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		d.errors.Add(1)
		return fmt.Errorf("disk: %w", err)
	}
	return nil
}

// Stats implements Store. Entries and Bytes are this store's view: exact
// for a directory of its own, approximate for a shared one (see Disk).
func (d *Disk) Stats() []TierStats {
	s := TierStats{Tier: "disk", URL: d.url, MaxBytes: d.cfg.MaxBytes}
	d.counters.snapshot(&s)
	d.mu.Lock()
	s.Entries, s.Bytes = int64(len(d.index)), d.used
	d.mu.Unlock()
	return []TierStats{s}
}

// Close implements Store; it waits for a rescan in flight. Files stay on
// disk for the next open and for the other processes.
func (d *Disk) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.scans.Wait()
	return nil
}

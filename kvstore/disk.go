package kvstore

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
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
	// Dir holds the blobs, one file each: Dir/<2 hex>/<32 hex>.kv. One
	// process owns a directory at a time.
	Dir string
	// MaxBytes is the budget in on-disk bytes (file sizes rounded up to
	// 4 KiB blocks); default 10 GiB.
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
}

const diskBlock = 4096

func diskAccount(n int64) int64 { return (n + diskBlock - 1) &^ (diskBlock - 1) }

// Disk is the disk tier: one file per blob, written to a temporary file and
// renamed into place, read into ordinary memory and verified there. It rebuilds its index
// from the directory on open, so it survives restarts; least recently used
// files are evicted to stay within the budget.
type Disk struct {
	cfg    DiskConfig
	url    string
	unlock func() error

	mu     sync.Mutex
	index  map[fingerprint.Key]*diskEntry
	lru    list.List // front: most recent
	used   int64     // accounted bytes of indexed files plus reservations
	closed bool
	tmpSeq atomic.Uint64
	counters
}

type diskEntry struct {
	key  fingerprint.Key
	cost int64
	elem *list.Element
}

// OpenDisk opens (creating if needed) a disk tier; it validates c, fills
// defaults, removes stale temporary files and indexes existing blobs, oldest
// (by modification time) first in line for eviction.
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
	if !canMmap {
		c.Mmap = false
	}
	d := &Disk{cfg: c, index: map[fingerprint.Key]*diskEntry{}}
	d.url = fmt.Sprintf("disk://%s?max=%d", c.Dir, c.MaxBytes)
	if err := os.MkdirAll(filepath.Join(c.Dir, "tmp"), 0o755); err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	unlock, err := lockDir(c.Dir)
	if err != nil {
		return nil, fmt.Errorf("disk: %s: %w", c.Dir, err)
	}
	d.unlock = unlock
	ok := false
	defer func() {
		if !ok {
			unlock()
		}
	}()
	if err := os.RemoveAll(filepath.Join(c.Dir, "tmp")); err != nil {
		return nil, fmt.Errorf("disk: clearing temporary files: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(c.Dir, "tmp"), 0o755); err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	type found struct {
		key   fingerprint.Key
		size  int64
		mtime time.Time
	}
	var files []found
	err = filepath.WalkDir(c.Dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() || !strings.HasSuffix(de.Name(), ".kv") {
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
		files = append(files, found{k, info.Size(), info.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("disk: indexing %s: %w", c.Dir, err)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].mtime.Before(files[j].mtime) })
	for _, f := range files { // oldest first, so the newest ends at the front
		e := &diskEntry{key: f.key, cost: diskAccount(f.size)}
		e.elem = d.lru.PushFront(e)
		d.index[f.key] = e
		d.used += e.cost
	}
	d.mu.Lock()
	for d.used > c.MaxBytes && d.lru.Len() > 0 {
		d.evictOne()
	}
	d.mu.Unlock()
	ok = true
	return d, nil
}

func (d *Disk) path(k fingerprint.Key) string {
	s := k.String()
	return filepath.Join(d.cfg.Dir, s[:2], s+".kv")
}

// Get implements Store. The blob is in ordinary memory: the file is read (or
// mapped and copied out under a fault guard) and verified on that copy, so a
// file truncated or rewritten while it is read is a miss, never a fault in a
// later reader (see readFile). A file that cannot be read back whole is
// dropped and reported as a miss (*CorruptError): counted as a corruption
// when it was short or faulted, as an error when the read failed.
func (d *Disk) Get(ctx context.Context, key fingerprint.Key, want fingerprint.Check) (*Blob, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, ErrClosed
	}
	e, ok := d.index[key]
	if ok {
		d.lru.MoveToFront(e.elem)
	}
	d.mu.Unlock()
	if !ok {
		d.misses.Add(1)
		return nil, ErrNotFound
	}
	raw, err := d.read(key)
	switch {
	case err == nil:
	case errors.Is(err, fs.ErrNotExist):
		d.drop(e, false) // removed behind our back
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
		d.drop(e, true)
		return nil, &CorruptError{Tier: "disk", Key: key, Reason: err.Error()}
	}
	b, drop, err := d.verify("disk", raw, key, want)
	if err != nil {
		if drop {
			d.drop(e, true)
		}
		return nil, err
	}
	return b, nil
}

// errOpen marks a failure to open a blob file, as opposed to one reading it.
var errOpen = errors.New("open")

// read returns the bytes of key's file in ordinary memory.
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
func (d *Disk) read(key fingerprint.Key) ([]byte, error) {
	f, err := os.Open(d.path(key))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", errOpen, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := info.Size()
	if size < HeaderSize || size > HeaderSize+maxPayload {
		// Let Decode report it as corruption.
		buf := make([]byte, min(size, HeaderSize))
		if _, err := io.ReadFull(f, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	buf := make([]byte, size)
	if d.cfg.Mmap {
		m, unmap, err := mapFile(f, int(size))
		if err != nil {
			return nil, err
		}
		err = copyMapped(buf, m)
		unmap()
		if err != nil {
			return nil, err
		}
		return buf, nil
	}
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// drop removes e from the index, and its file when remove is set, if e is
// still the indexed entry for its key.
func (d *Disk) drop(e *diskEntry, remove bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if cur, ok := d.index[e.key]; !ok || cur != e {
		return
	}
	d.unindex(e)
	if remove {
		os.Remove(d.path(e.key))
	}
}

// unindex forgets e; mu held.
func (d *Disk) unindex(e *diskEntry) {
	d.lru.Remove(e.elem)
	delete(d.index, e.key)
	d.used -= e.cost
}

// evictOne removes the least recently used file; mu held.
func (d *Disk) evictOne() {
	e := d.lru.Back().Value.(*diskEntry)
	d.unindex(e)
	os.Remove(d.path(e.key)) // open mappings of it stay valid
	d.evictions.Add(1)
}

// Put implements Store: it writes a temporary file and renames it into place,
// so readers see the old blob or the new one, never a partial one. The
// temporary file is reserved against the budget while it is written and an
// old file under the same key stays counted until the rename replaces it, so
// the bytes on disk never exceed the budget. Renames and evictions happen
// under one lock and cannot interleave.
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
	for d.used+cost > d.cfg.MaxBytes && d.lru.Len() > 0 {
		d.evictOne()
	}
	if d.used+cost > d.cfg.MaxBytes {
		// The rest of the budget is reserved by writes in flight.
		d.mu.Unlock()
		d.errors.Add(1)
		return fmt.Errorf("disk: budget %d taken by writes in flight", d.cfg.MaxBytes)
	}
	d.used += cost // reserved while writing
	d.mu.Unlock()

	tmp, err := d.writeTemp(b.Key, raw)

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
	e := &diskEntry{key: b.Key, cost: cost}
	e.elem = d.lru.PushFront(e)
	d.index[b.Key] = e
	d.used += cost
	d.puts.Add(1)
	d.bytesWrite.Add(int64(len(raw)))
	return nil
}

// writeTemp writes raw to a new temporary file and returns its path.
func (d *Disk) writeTemp(key fingerprint.Key, raw []byte) (string, error) {
	tmp := filepath.Join(d.cfg.Dir, "tmp", key.String()+"."+strconv.FormatUint(d.tmpSeq.Add(1), 10))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	_, err = f.Write(raw)
	if err == nil && d.cfg.Fsync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// Has implements Store.
func (d *Disk) Has(ctx context.Context, key fingerprint.Key) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false, ErrClosed
	}
	_, ok := d.index[key]
	return ok, nil
}

// Delete implements Store.
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

// Stats implements Store.
func (d *Disk) Stats() []TierStats {
	s := TierStats{Tier: "disk", URL: d.url, MaxBytes: d.cfg.MaxBytes}
	d.counters.snapshot(&s)
	d.mu.Lock()
	s.Entries, s.Bytes = int64(len(d.index)), d.used
	d.mu.Unlock()
	return []TierStats{s}
}

// Close implements Store. Files stay on disk for the next open.
func (d *Disk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	return d.unlock()
}

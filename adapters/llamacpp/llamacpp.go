// Package llamacpp is the adapter for an unmodified llama.cpp server
// (llama-server, release b10573 and its slot file format): the sidecar's
// assembled KV reaches it through the server's slot API, with no change to
// the server. Importing the package registers it as "llamacpp".
//
// Publish takes a free slot of the server, writes a sequence state file (a
// "slot file", see slotfile.go) holding the published prefix's tokens and
// KV (K rotated by RoPE as the server stores it, in the server's cache
// type) into the directory the server saves slots in (--slot-save-path,
// shared with the sidecar as Config.SlotDir), and has the server restore it
// (POST /slots/{id}?action=restore). The Lease pins the forwarded request to
// that slot ("id_slot": id, "cache_prompt": true; whatever the client sent
// is overridden): the server finds the restored tokens as the common prefix
// of the request's prompt and prefills only the rest. Release hands the
// slot back when the response has ended.
//
// # What is proved before any KV is injected
//
//   - The model (handshake). At Open, after any sign of a restart and every
//     30 s, the adapter has the server evaluate a short probe prompt in a
//     slot, save that slot, and compares the saved KV with the sidecar
//     model's own KV for the same tokens, every layer and head, within the
//     cache type's rounding (kvTolerance). Injecting KV of another model
//     would silently corrupt every answer: any difference is
//     adapters.ErrMismatch (a *MismatchError naming layer, head and
//     difference), logged and counted, and requests pass through. The same
//     probe teaches the server's layout: stream count (--kv-unified), V
//     transposed or not (flash attention), cache types, layers and row
//     sizes, and whether its K head dims are permuted relative to ours
//     (Hugging Face Llama weights converted to GGUF).
//   - The tokens. The server must run exactly Publication.Prompt: for chat
//     bodies the adapter asks the server for its rendering
//     (/apply-template) and tokenizes it as the chat path does (/tokenize
//     with add_special and parse_special); for completion bodies it
//     tokenizes the prompt the same way (token-id prompts are taken as
//     they are). Any difference is ErrTokenMismatch.
//
// # Restarts
//
// llama-server reports no start time or instance id. The adapter treats as
// a restart, and re-runs the handshake before the next restore: task ids
// going back (GET /slots, read before every restore, reports each slot's
// last task id; ids grow for the life of a process and restart from 0), a
// failed control call (connection refused or reset, 5xx), a refused
// restore, a failed erase, and a change of /props (model path, build, slot
// count, slot context, chat template, BOS/EOS; checked at most once a
// second). A restarted server escapes the task-id check only if it ran
// more tasks than the old one before the adapter's next publish; the
// periodic handshake (every 30 s) bounds even that.
//
// # Erasing the slot on release
//
// The KV the sidecar publishes is approximate (FusionRAG recomputes only a
// fraction of the context). llama-server reuses whatever a slot holds for
// any later request whose prompt shares a prefix with it (cache_prompt is
// on by default; slots are picked by prompt similarity) and may copy idle
// slots into its RAM prompt cache (--cache-ram). Left in place, a fused
// slot would let a plain request, or another tenant's, reuse approximate KV
// without asking for fusion. Release therefore erases the slot
// (action=erase) in the background and only then returns it to the pool,
// and the server must run with --cache-ram 0 (with the RAM prompt cache on,
// the concurrency test got wrong answers for unpinned requests; the flag is
// not visible in /props, so this is on the operator: docs/llamacpp.md).
// Two windows remain, inherent to the server's slot scheduling: between
// the restore and the pinned request's start, and between the response's
// end and the erase, a request sent to the server without id_slot may pick
// the slot. Send all traffic through the sidecar and keep the slots used
// for fusion out of other clients' reach (see docs/llamacpp.md).
//
// # Failures
//
// Every failure on the publish path is an error whose Reason() is one of
// the Reason constants (busy, restore_refused, mismatch, token_mismatch,
// write_error, engine_restarted, engine_error, unsupported, too_long,
// bad_publication), counted in Stats; the proxy forwards the original
// request. A slot whose restore failed is erased before it is reused.
//
// Release is idempotent: a second call does nothing (the proxy may release
// from both a response callback and a deferred cleanup).
package llamacpp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/model"
)

// Name is the registered adapter name.
const Name = "llamacpp"

func init() {
	adapters.Register(Name, func(cfg adapters.Config) (adapters.Engine, error) { return Open(cfg) },
		adapters.Needs{SlotDir: "llama-server's --slot-save-path, as the sidecar sees it"})
}

// Timing defaults.
const (
	// HandshakeEvery bounds the age of the handshake a restore relies on.
	HandshakeEvery = 30 * time.Second
	// PropsEvery is how often the publish path re-reads /props to notice
	// a restart.
	PropsEvery = time.Second
	// retryAfter holds a failed handshake's error before trying again, so
	// that a down or mismatched server costs one control call per interval,
	// not one per request.
	retryAfter = 2 * time.Second
	// controlTimeout bounds a control call without a ctx deadline
	// (handshake, restore).
	controlTimeout = 30 * time.Second
	// eraseTimeout bounds one erase attempt, eraseFor all attempts for a
	// released slot (then the handshake is dropped; the next one retries).
	eraseTimeout = 5 * time.Second
	eraseFor     = 30 * time.Second
	// cleanWait bounds how long Publish waits for a released slot's
	// erase when no slot is free (see takeOrWait).
	cleanWait = 250 * time.Millisecond
	// probeLen is the handshake's probe prompt length.
	probeLen = 8
	// restartMargin: task ids going back by more than this (or by more
	// than half) mean a new server process (see publish).
	restartMargin = 1024
	// probeTries: the probe slot may be taken by a request sent without
	// id_slot between the probe and its save; the probe is run again.
	probeTries = 3
)

type slotState uint8

const (
	slotFree     slotState = iota
	slotLeased             // held by a lease or a handshake
	slotCleaning           // released, erase under way
)

// Adapter is the llamacpp adapter. It is safe for concurrent use.
type Adapter struct {
	fw      *adapters.Forwarder
	cfg     adapters.Config
	m       *model.Model
	rot     *rope
	log     *slog.Logger
	probe   []int32
	probeKV *model.Cache

	// handshakeEvery, propsEvery: the defaults; tests shorten them.
	handshakeEvery, propsEvery time.Duration

	hsMu sync.Mutex // one handshake at a time

	mu      sync.Mutex
	hs      *handshake // nil: none valid
	hsErr   error      // the last handshake's failure, held until retryAt
	retryAt time.Time
	slots   []slotState
	dirty   []bool // a slot that may hold KV of ours: erased before reuse
	closed  bool

	bg       sync.WaitGroup
	nfile    atomic.Uint64
	lastTask atomic.Int64 // the largest task id /slots reported since the handshake
	stats    stats
}

// handshake is what a successful handshake learnt.
type handshake struct {
	lay     Layout
	nSlots  int
	nCtx    int // tokens per slot
	props   string
	at      time.Time
	checked atomic.Int64 // unix nanos of the last /props check
}

// Open validates cfg (Model and SlotDir are required), connects to the
// server at cfg.URL and runs the first handshake. A server that does not
// answer yet is not an error: the handshake runs on the first Publish. A
// server that runs another model is: Open returns an error wrapping
// adapters.ErrMismatch (see the package comment).
func Open(cfg adapters.Config) (*Adapter, error) {
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	if cfg.Model == nil {
		return nil, fmt.Errorf("%w: the llamacpp adapter needs the sidecar's Model (to prove the server runs it and to lay out KV)", adapters.ErrConfig)
	}
	if cfg.SlotDir == "" {
		return nil, fmt.Errorf("%w: the llamacpp adapter needs SlotDir, the server's --slot-save-path as the sidecar sees it", adapters.ErrConfig)
	}
	if st, err := os.Stat(cfg.SlotDir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%w: SlotDir %s is not a directory: %v", adapters.ErrConfig, cfg.SlotDir, err)
	}
	c := cfg.Model.Config
	if c.HeadDim%2 != 0 || c.Layers == 0 {
		return nil, fmt.Errorf("%w: model shape %d layers, head dim %d", ErrUnsupported, c.Layers, c.HeadDim)
	}
	fw, err := adapters.NewForwarder(cfg)
	if err != nil {
		return nil, err
	}
	a := &Adapter{fw: fw, cfg: cfg, m: cfg.Model, rot: newRope(c), log: slog.Default(),
		handshakeEvery: HandshakeEvery, propsEvery: PropsEvery}
	a.probe = probeTokens(c)
	pos := make([]int32, len(a.probe))
	for i := range pos {
		pos[i] = int32(i)
	}
	r, err := a.m.Forward(context.Background(), nil, model.Batch{Tokens: a.probe, Pos: pos}, model.ForwardOptions{ReturnKV: true})
	if err != nil {
		return nil, fmt.Errorf("llamacpp: probe prefill: %w", err)
	}
	a.probeKV = r.KV
	ctx, cancel := context.WithTimeout(context.Background(), min(cfg.Timeout, controlTimeout))
	defer cancel()
	if _, err := a.current(ctx); err != nil {
		if errors.Is(err, adapters.ErrMismatch) || errors.Is(err, ErrUnsupported) {
			fw.Close()
			return nil, err
		}
		a.log.Warn("llamacpp: first handshake failed; retrying on the first publish", "url", cfg.URL, "err", err)
	}
	return a, nil
}

// probeTokens is the handshake's prompt: BOS then ids spread over the
// vocabulary (deterministic, valid for any vocabulary of 16 ids or more).
func probeTokens(c model.Config) []int32 {
	p := []int32{c.BOS}
	for i := 1; len(p) < probeLen; i++ {
		p = append(p, int32(3+(i*7919)%max(c.Vocab-3, 1)))
	}
	return p
}

// Close waits for background erases (bounded by their timeout) and closes
// idle connections.
func (a *Adapter) Close() error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.bg.Wait()
	return a.fw.Close()
}

// Layout returns the server layout of the current handshake; false when
// none is valid.
func (a *Adapter) Layout() (Layout, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hs == nil {
		return Layout{}, false
	}
	return a.hs.lay, true
}

// Publish implements adapters.Engine: restores p's KV into a free slot and
// returns the lease that pins the request to it.
func (a *Adapter) Publish(ctx context.Context, p adapters.Publication) (adapters.Lease, error) {
	l, err := a.publish(ctx, p)
	if err != nil {
		a.stats.fallback(adapters.ReasonOf(err))
		return nil, err
	}
	a.stats.published.Add(1)
	return l, nil
}

func (a *Adapter) publish(ctx context.Context, p adapters.Publication) (*lease, error) {
	if err := adapters.CheckPublication(p); err != nil {
		return nil, fail(ReasonBadPublication, err)
	}
	c := a.m.Config
	if p.KV.Layers != c.Layers || p.KV.KVHeads != c.KVHeads || p.KV.HeadDim != c.HeadDim {
		return nil, fail(ReasonBadPublication, fmt.Errorf("KV shaped [%d layers, %d heads, %d], model [%d, %d, %d]",
			p.KV.Layers, p.KV.KVHeads, p.KV.HeadDim, c.Layers, c.KVHeads, c.HeadDim))
	}
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return nil, fail(ReasonEngineError, errors.New("adapter closed"))
	}
	hs, err := a.current(ctx)
	if err != nil {
		return nil, err
	}
	if len(p.Prompt) > hs.nCtx {
		return nil, fail(ReasonTooLong, fmt.Errorf("prompt of %d tokens, slots hold %d", len(p.Prompt), hs.nCtx))
	}
	// The slot first: when none is free, fail before any round trip (and
	// so bound the control calls in flight by the slot count).
	slot, ok := a.takeOrWait(ctx, hs)
	if !ok {
		return nil, fail(ReasonBusy, adapters.ErrBusy)
	}
	// A slot the server is running a request on (one sent without
	// id_slot) would defer the restore until that request ends, and
	// llama-server re-runs deferred slot actions only when some slot is
	// released, so it may wait for ever: prefer a slot the server reports
	// idle (GET /slots), and report busy when none is.
	busy, lastTask := a.serverBusy(ctx)
	if lastTask >= 0 {
		// Task ids grow for the life of a server process and each slot
		// reports its last task's. The maximum over the slots can go back
		// a little (a deferred task, older, starts on the slot that held
		// the newest), by at most the tasks waiting at once; back by more
		// than half (or restartMargin) is taken for a new process, whatever
		// /props says. A false alarm costs a handshake; a missed restart
		// onto other weights would inject wrong KV.
		if prev := a.lastTask.Load(); lastTask+min(restartMargin, prev/2) < prev {
			a.giveBack(slot, false)
			a.stale(hs)
			a.lastTask.Store(-1)
			return nil, fail(ReasonEngineRestarted, fmt.Errorf("the server's task ids went back from %d to %d: restarted", prev, lastTask))
		}
		a.lastTask.Store(max(lastTask, a.lastTask.Load()))
	}
	if busy[slot] {
		other, ok := a.take(hs, busy)
		a.giveBack(slot, false)
		if !ok {
			return nil, fail(ReasonBusy, fmt.Errorf("%w (the free ones are running requests sent without id_slot)", adapters.ErrBusy))
		}
		slot = other
	}
	ids, err := a.serverTokens(ctx, p.Path, p.Body)
	if err == nil && !slices.Equal(ids, p.Prompt) {
		i := 0
		for i < min(len(ids), len(p.Prompt)) && ids[i] == p.Prompt[i] {
			i++
		}
		err = fail(ReasonTokenMismatch, fmt.Errorf("%w: the server makes %d ids of the body, the publication has %d; first difference at index %d",
			ErrTokenMismatch, len(ids), len(p.Prompt), i))
	}
	if err != nil {
		a.giveBack(slot, false)
		if adapters.ReasonOf(err) == ReasonEngineError && ctxDone(ctx) == nil {
			a.stale(hs) // a failed call may be a restart: prove the model again
		}
		return nil, err
	}
	n := p.KV.Len()
	name, err := a.writeSlotFile(hs.lay, slot, p.Prompt[:n], p.KV)
	if err != nil {
		a.giveBack(slot, false)
		return nil, fail(ReasonWriteError, err)
	}
	defer os.Remove(filepath.Join(a.cfg.SlotDir, name))
	var res struct {
		NRestored *int `json:"n_restored"`
	}
	code, body, err := a.control(ctx, http.MethodPost, "/slots/"+strconv.Itoa(slot)+"?action=restore", map[string]string{"filename": name}, &res)
	if err != nil || code != http.StatusOK || res.NRestored == nil || *res.NRestored != n {
		// The restore may still run later (the server defers it while the
		// slot is busy): erase the slot before reuse in any case.
		a.giveBack(slot, true)
		if cerr := ctxDone(ctx); cerr != nil {
			// The client left: not a sign of a restart.
			return nil, fail(ReasonCanceled, cerr)
		}
		a.stale(hs)
		if err != nil {
			return nil, fail(ReasonEngineError, err)
		}
		got := -1
		if res.NRestored != nil {
			got = *res.NRestored
		}
		return nil, fail(ReasonRestoreRefused, fmt.Errorf("restore into slot %d: %d %s (restored %d of %d tokens)", slot, code, truncate(body), got, n))
	}
	return &lease{a: a, slot: slot}, nil
}

// writeSlotFile writes the slot file under a temporary name and renames it,
// so that the server never reads a partial file; it returns the final name
// (a plain file name, as the server requires).
func (a *Adapter) writeSlotFile(lay Layout, slot int, tokens []int32, kv *model.Cache) (string, error) {
	k := a.nfile.Add(1)
	name := fmt.Sprintf("fusionrag-%d-%d.slot", os.Getpid(), k)
	tmp := filepath.Join(a.cfg.SlotDir, fmt.Sprintf("fusionrag-%d-%d.tmp", os.Getpid(), k))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	err = encodeSlot(lay, a.rot, tokens, kv, int32(slot)).Encode(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(a.cfg.SlotDir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	return name, nil
}

// lease pins requests to one restored slot.
type lease struct {
	a    *Adapter
	slot int
	once sync.Once
}

// Rewrite implements adapters.Lease: "id_slot" and "cache_prompt" set,
// whatever the client sent for them replaced.
func (l *lease) Rewrite(body []byte) ([]byte, error) {
	b, err := adapters.SetMember(body, "id_slot", l.slot)
	if err != nil {
		return nil, err
	}
	return adapters.SetMember(b, "cache_prompt", true)
}

// Release implements adapters.Lease: the slot is erased in the background
// and reusable once erased. A second call does nothing.
func (l *lease) Release() { l.once.Do(func() { l.a.giveBack(l.slot, true) }) }

// Slot is the server slot the lease pins requests to.
func (l *lease) Slot() int { return l.slot }

// serverBusy returns the slots the server is running a request on and the
// largest task id the slots report (GET /slots); nil and -1 when it cannot
// tell (endpoint disabled with --no-slots).
func (a *Adapter) serverBusy(ctx context.Context) (map[int]bool, int64) {
	var slots []struct {
		ID           int    `json:"id"`
		IsProcessing bool   `json:"is_processing"`
		IDTask       *int64 `json:"id_task"`
	}
	code, _, err := a.control(ctx, http.MethodGet, "/slots", nil, &slots)
	if err != nil || code != http.StatusOK {
		return nil, -1
	}
	busy, last := map[int]bool{}, int64(-1)
	for _, s := range slots {
		if s.IsProcessing {
			busy[s.ID] = true
		}
		if s.IDTask != nil {
			last = max(last, *s.IDTask)
		}
	}
	return busy, last
}

// take leases a free slot of the handshake's pool, not one of skip.
func (a *Adapter) take(hs *handshake, skip map[int]bool) (int, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range min(hs.nSlots, len(a.slots)) {
		if a.slots[i] == slotFree && !a.dirty[i] && !skip[i] {
			a.slots[i] = slotLeased
			return i, true
		}
	}
	return 0, false
}

// takeOrWait is take, waiting up to cleanWait for a slot whose erase is
// under way when none is free: a released slot is erased in the
// background (about a millisecond), and a request that arrives right after
// another ended (sequential clients, one slot) should find it, not fall
// back as busy. Slots leased to running requests are not waited for.
func (a *Adapter) takeOrWait(ctx context.Context, hs *handshake) (int, bool) {
	deadline := time.Now().Add(cleanWait)
	for {
		if slot, ok := a.take(hs, nil); ok {
			return slot, true
		}
		if !a.cleaning() || time.Now().After(deadline) {
			return 0, false
		}
		select {
		case <-ctx.Done():
			return 0, false
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// cleaning reports whether some slot's erase is under way.
func (a *Adapter) cleaning() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Contains(a.slots, slotCleaning)
}

// giveBack returns a leased slot: at once when it holds nothing of ours,
// else after an erase in the background. A failed erase leaves the slot
// dirty and the handshake stale; the next handshake erases it.
func (a *Adapter) giveBack(slot int, erase bool) {
	a.mu.Lock()
	if !erase {
		a.slots[slot] = slotFree
		a.mu.Unlock()
		return
	}
	a.slots[slot] = slotCleaning
	a.dirty[slot] = true
	a.bg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.bg.Done()
		err := a.eraseWhenIdle(slot)
		a.mu.Lock()
		a.slots[slot] = slotFree
		if err == nil {
			a.dirty[slot] = false
		}
		hs := a.hs
		a.mu.Unlock()
		if err != nil {
			a.stats.eraseFailed.Add(1)
			a.log.Warn("llamacpp: erasing a released slot failed; it is erased before reuse", "slot", slot, "err", err)
			a.stale(hs)
		}
	}()
}

// eraseWhenIdle erases slot once the server reports it idle, retrying
// with backoff for up to eraseFor. An erase sent to a slot the server is
// running a request on (one sent without id_slot took it) is deferred by
// the server, which re-runs deferred slot actions only when some slot is
// released: it may never run.
func (a *Adapter) eraseWhenIdle(slot int) error {
	deadline := time.Now().Add(eraseFor)
	wait := 20 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), min(a.cfg.Timeout, eraseTimeout))
		busy, _ := a.serverBusy(ctx)
		err := fmt.Errorf("slot %d is running a request on the server", slot)
		if !busy[slot] {
			err = a.erase(ctx, slot)
		}
		cancel()
		a.mu.Lock()
		closed := a.closed
		a.mu.Unlock()
		if err == nil || closed || time.Now().After(deadline) {
			return err
		}
		time.Sleep(wait)
		wait = min(2*wait, time.Second)
	}
}

func (a *Adapter) erase(ctx context.Context, slot int) error {
	code, body, err := a.control(ctx, http.MethodPost, "/slots/"+strconv.Itoa(slot)+"?action=erase", map[string]any{}, nil)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("erase slot %d: %d %s", slot, code, truncate(body))
	}
	return err
}

// stale drops hs (if still current) so that the next publish re-runs the
// handshake.
func (a *Adapter) stale(hs *handshake) {
	a.mu.Lock()
	if a.hs == hs && hs != nil {
		a.hs = nil
	}
	a.mu.Unlock()
}

// control sends a JSON control call to the server and decodes a 200
// answer into out (when not nil).
func (a *Adapter) control(ctx context.Context, method, path string, in, out any) (int, []byte, error) {
	var body []byte
	ct := ""
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return 0, nil, err
		}
		ct = "application/json"
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, min(a.cfg.Timeout, controlTimeout))
		defer cancel()
	}
	code, resp, err := a.fw.Do(ctx, method, path, ct, body)
	if err != nil {
		return 0, nil, err
	}
	if code >= 500 {
		return code, resp, fmt.Errorf("%s %s: %d %s", method, path, code, truncate(resp))
	}
	if code == http.StatusOK && out != nil {
		if err := json.Unmarshal(resp, out); err != nil {
			return code, resp, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return code, resp, nil
}

// ctxDone is ctx.Err(), or DeadlineExceeded once the deadline has passed
// (fasthttp's own deadline can fire before the context's timer).
func ctxDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

func truncate(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

// props is the part of GET /props the adapter relies on.
type props struct {
	TotalSlots int `json:"total_slots"`
	Settings   struct {
		NCtx int `json:"n_ctx"`
	} `json:"default_generation_settings"`
	ModelPath    string `json:"model_path"`
	BuildInfo    string `json:"build_info"`
	ChatTemplate string `json:"chat_template"`
	BOS          string `json:"bos_token"`
	EOS          string `json:"eos_token"`
}

func (p props) digest() string {
	b, _ := json.Marshal(p)
	return string(b)
}

func (a *Adapter) props(ctx context.Context) (props, error) {
	var p props
	code, body, err := a.control(ctx, http.MethodGet, "/props", nil, &p)
	if err != nil {
		return p, err
	}
	if code != http.StatusOK {
		return p, fmt.Errorf("GET /props: %d %s", code, truncate(body))
	}
	if p.TotalSlots <= 0 || p.Settings.NCtx <= 0 {
		return p, fmt.Errorf("GET /props: %d slots of %d tokens", p.TotalSlots, p.Settings.NCtx)
	}
	return p, nil
}

// current returns a valid handshake, checking /props when the last check
// is older than propsEvery and re-running the handshake when it changed,
// when the handshake is older than handshakeEvery or when it was dropped.
func (a *Adapter) current(ctx context.Context) (*handshake, error) {
	a.mu.Lock()
	hs := a.hs
	a.mu.Unlock()
	restarted := false
	if hs != nil && time.Since(hs.at) < a.handshakeEvery {
		if time.Since(time.Unix(0, hs.checked.Load())) < a.propsEvery {
			return hs, nil
		}
		p, err := a.props(ctx)
		if err != nil {
			if cerr := ctxDone(ctx); cerr != nil {
				return nil, fail(ReasonCanceled, cerr)
			}
			a.stale(hs)
			return nil, fail(ReasonEngineError, err)
		}
		if p.digest() == hs.props {
			hs.checked.Store(time.Now().UnixNano())
			return hs, nil
		}
		a.log.Warn("llamacpp: the server's /props changed (restart?); re-running the handshake", "url", a.cfg.URL)
		a.stale(hs)
		restarted = true
	}
	hs, err := a.handshake(ctx, hs)
	if err != nil && restarted && adapters.ReasonOf(err) == ReasonEngineError {
		err = fail(ReasonEngineRestarted, err)
	}
	return hs, err
}

// handshake learns the server's layout and proves it runs the sidecar's
// model (see the package comment). old is the handshake the caller found
// stale: if another goroutine replaced it meanwhile, that one is used.
func (a *Adapter) handshake(ctx context.Context, old *handshake) (*handshake, error) {
	a.hsMu.Lock()
	defer a.hsMu.Unlock()
	a.mu.Lock()
	if a.hs != nil && a.hs != old {
		hs := a.hs
		a.mu.Unlock()
		return hs, nil
	}
	if a.hsErr != nil && time.Now().Before(a.retryAt) {
		err := a.hsErr
		a.mu.Unlock()
		return nil, err
	}
	a.mu.Unlock()
	hs, err := a.runHandshake(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stats.handshakes.Add(1)
	if err != nil {
		if errors.Is(err, adapters.ErrMismatch) || errors.Is(err, ErrUnsupported) {
			a.stats.mismatches.Add(1)
			err = fail(ReasonMismatch, err)
			a.log.Error("llamacpp: HANDSHAKE REFUSED: the server does not run the sidecar's model (or runs it in a layout the adapter cannot write); fusion is off, requests pass through unchanged",
				"url", a.cfg.URL, "err", err)
		} else if adapters.ReasonOf(err) == "" {
			err = fail(ReasonEngineError, err)
		}
		a.hsErr, a.retryAt = err, time.Now().Add(retryAfter)
		return nil, err
	}
	a.hs, a.hsErr = hs, nil
	a.lastTask.Store(-1) // the probe's task is the new floor; the next /slots sets it
	return hs, nil
}

func (a *Adapter) runHandshake(ctx context.Context) (*handshake, error) {
	p, err := a.props(ctx)
	if err != nil {
		return nil, err
	}
	if p.Settings.NCtx <= len(a.probe) {
		return nil, fmt.Errorf("%w: slots of %d tokens", ErrUnsupported, p.Settings.NCtx)
	}
	// Size the pool; leased slots stay leased across handshakes.
	a.mu.Lock()
	for len(a.slots) < p.TotalSlots {
		a.slots = append(a.slots, slotFree)
		a.dirty = append(a.dirty, true) // unknown content: erase before use
	}
	probe := -1
	for i := range p.TotalSlots {
		if a.slots[i] == slotFree {
			probe = i
			a.slots[i] = slotLeased
			break
		}
	}
	a.mu.Unlock()
	if probe < 0 {
		return nil, fail(ReasonBusy, fmt.Errorf("%w (handshake needs one)", adapters.ErrBusy))
	}
	var lay Layout
	for range probeTries {
		if lay, err = a.probeSlot(ctx, probe); !errors.Is(err, errProbeTaken) {
			break
		}
	}
	// Erase every free slot (the probe's included): after a restart or a
	// failed erase, a slot may hold KV nobody asked for. Slots the server
	// is busy with, and failed erases, are left dirty (never leased) and
	// erased in the background once idle.
	a.mu.Lock()
	a.slots[probe] = slotFree
	var toErase []int
	for i := range p.TotalSlots {
		if a.slots[i] == slotFree {
			a.slots[i] = slotLeased
			toErase = append(toErase, i)
		}
	}
	a.mu.Unlock()
	busy, _ := a.serverBusy(ctx)
	for _, i := range toErase {
		if busy[i] || a.erase(ctx, i) != nil {
			a.giveBack(i, true)
			continue
		}
		a.mu.Lock()
		a.slots[i], a.dirty[i] = slotFree, false
		a.mu.Unlock()
	}
	if err != nil {
		return nil, err
	}
	hs := &handshake{lay: lay, nSlots: p.TotalSlots, nCtx: p.Settings.NCtx, props: p.digest(), at: time.Now()}
	hs.checked.Store(time.Now().UnixNano())
	a.log.Info("llamacpp: handshake", "url", a.cfg.URL, "slots", hs.nSlots, "n_ctx", hs.nCtx, "layout", lay.String())
	return hs, nil
}

// probeSlot evaluates the probe in slot, saves the slot and compares.
func (a *Adapter) probeSlot(ctx context.Context, slot int) (Layout, error) {
	req := map[string]any{
		"prompt": a.probe, "n_predict": 1, "id_slot": slot, "cache_prompt": false, // evaluate it all, reuse nothing
		"temperature": 0, "stream": false,
	}
	if eos := a.m.Config.EOS; len(eos) > 0 {
		// The one generated token is EOS: a model that would emit a
		// partial UTF-8 byte makes the server answer 500 after evaluating.
		req["logit_bias"] = [][]any{{eos[0], 1e4}}
	}
	code, body, err := a.control(ctx, http.MethodPost, "/completion", req, nil)
	if err != nil {
		return Layout{}, err
	}
	var probeErr error
	if code != http.StatusOK {
		// The prompt may still have been evaluated: the saved file is the
		// judge, this error is reported if it holds no probe.
		probeErr = fmt.Errorf("probe completion: %d %s", code, truncate(body))
	}
	name := fmt.Sprintf("fusionrag-probe-%d-%d.slot", os.Getpid(), a.nfile.Add(1))
	path := filepath.Join(a.cfg.SlotDir, name)
	defer os.Remove(path)
	code, body, err = a.control(ctx, http.MethodPost, "/slots/"+strconv.Itoa(slot)+"?action=save", map[string]string{"filename": name}, nil)
	if err != nil {
		return Layout{}, err
	}
	if code != http.StatusOK {
		return Layout{}, fmt.Errorf("probe save: %d %s (was the server started with --slot-save-path?)", code, truncate(body))
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return Layout{}, fmt.Errorf("probe slot file not found in SlotDir (is SlotDir the server's --slot-save-path?): %w", err)
	}
	if probeErr != nil {
		if f, err := DecodeSlotFile(raw); err != nil || len(f.Tokens) < len(a.probe) || !slices.Equal(f.Tokens[:len(a.probe)], a.probe) {
			return Layout{}, probeErr
		}
	}
	return a.checkProbe(raw)
}

// checkProbe decodes the server's probe file, learns the layout and
// compares the KV with the model's.
func (a *Adapter) checkProbe(raw []byte) (Layout, error) {
	f, err := DecodeSlotFile(raw)
	if err != nil {
		return Layout{}, err
	}
	lay, err := layoutOf(f, a.m.Config)
	if err != nil {
		return lay, err
	}
	var st *Stream
	for i := range f.Streams {
		if len(f.Streams[i].Cells) > 0 {
			st = &f.Streams[i]
		}
	}
	n := len(a.probe)
	if len(f.Tokens) < n || !slices.Equal(f.Tokens[:n], a.probe) || len(st.Cells) < n {
		// The ids were sent as ids: a server that took them holds them,
		// unless another request took the slot before the save.
		return lay, fmt.Errorf("%w: it holds %d tokens (%d cells), not the probe's %d", errProbeTaken, len(f.Tokens), len(st.Cells), n)
	}
	pos, K, V := decodeStream(lay, st)
	for i := range n {
		if pos[i] != int32(i) {
			return lay, fmt.Errorf("%w: probe cell %d at position %d", adapters.ErrMismatch, i, pos[i])
		}
	}
	for l := range K {
		K[l], V[l] = K[l][:n*lay.kvDim()], V[l][:n*lay.kvDim()]
	}
	var first error
	for _, permuted := range []bool{false, true} {
		if permuted && a.m.Config.RopeInterleaved {
			break // adjacent pairs already: no other candidate
		}
		lay.PermuteK = permuted
		wK, wV := serverKV(lay, a.rot, a.probeKV)
		err := compareKV(lay, K, V, wK, wV)
		if err == nil {
			return lay, nil
		}
		if first == nil {
			first = err
		}
	}
	lay.PermuteK = false
	return lay, first
}

// serverTokens returns the token ids the server will run for body on path,
// asking the server itself (see the package comment).
func (a *Adapter) serverTokens(ctx context.Context, path string, body []byte) ([]int32, error) {
	switch path {
	case "/v1/chat/completions", "/chat/completions":
		var r struct {
			Prompt *string `json:"prompt"`
		}
		code, resp, err := a.fw.Do(ctx, http.MethodPost, "/apply-template", "application/json", body)
		if err != nil {
			return nil, fail(ReasonEngineError, err)
		}
		if code != http.StatusOK || json.Unmarshal(resp, &r) != nil || r.Prompt == nil {
			return nil, fail(ReasonUnsupported, fmt.Errorf("POST /apply-template: %d %s", code, truncate(resp)))
		}
		raw, _ := json.Marshal(*r.Prompt)
		return a.tokenize(ctx, raw)
	case "/v1/completions", "/completions", "/completion":
		var r struct {
			Prompt json.RawMessage `json:"prompt"`
		}
		if err := json.Unmarshal(body, &r); err != nil || len(r.Prompt) == 0 {
			return nil, fail(ReasonUnsupported, fmt.Errorf("completion body without a prompt: %v", err))
		}
		return a.completionTokens(ctx, r.Prompt)
	}
	return nil, fail(ReasonUnsupported, fmt.Errorf("path %q (the adapter proves tokens for chat and completion bodies only)", path))
}

// completionTokens follows the server's tokenize_input_prompts: a string,
// or an array holding any integer, is one prompt (tokenize_mixed, BOS when
// it starts with a string); an array of token ids is taken as it is; an
// array of one string or array is that prompt; several prompts are
// refused (they make several tasks, each on a slot of its own).
func (a *Adapter) completionTokens(ctx context.Context, prompt json.RawMessage) ([]int32, error) {
	var ids []int32
	if json.Unmarshal(prompt, &ids) == nil && ids != nil {
		return ids, nil
	}
	var s string
	if json.Unmarshal(prompt, &s) == nil {
		return a.tokenize(ctx, prompt)
	}
	var arr []json.RawMessage
	if err := json.Unmarshal(prompt, &arr); err != nil {
		return nil, fail(ReasonUnsupported, fmt.Errorf("prompt is neither a string nor an array: %v", err))
	}
	for _, e := range arr {
		var x json.Number
		if json.Unmarshal(e, &x) == nil {
			return a.tokenize(ctx, prompt) // mixed strings and ids
		}
	}
	if len(arr) == 1 {
		return a.completionTokens(ctx, arr[0])
	}
	return nil, fail(ReasonUnsupported, fmt.Errorf("%d prompts in one request", len(arr)))
}

// tokenize asks the server's /tokenize with the flags its completion path
// uses (add_special, parse_special).
func (a *Adapter) tokenize(ctx context.Context, content json.RawMessage) ([]int32, error) {
	in, _ := json.Marshal(map[string]any{"content": content, "add_special": true, "parse_special": true})
	code, resp, err := a.fw.Do(ctx, http.MethodPost, "/tokenize", "application/json", in)
	if err != nil {
		return nil, fail(ReasonEngineError, err)
	}
	var r struct {
		Tokens []int32 `json:"tokens"`
	}
	if code != http.StatusOK || json.Unmarshal(resp, &r) != nil {
		return nil, fail(ReasonEngineError, fmt.Errorf("POST /tokenize: %d %s", code, truncate(resp)))
	}
	return r.Tokens, nil
}

// stats counts publishes and fallbacks.
type stats struct {
	published, handshakes, mismatches, eraseFailed atomic.Int64
	mu                                             sync.Mutex
	fallbacks                                      map[string]int64
}

func (s *stats) fallback(reason string) {
	if reason == "" {
		reason = "other"
	}
	s.mu.Lock()
	if s.fallbacks == nil {
		s.fallbacks = map[string]int64{}
	}
	s.fallbacks[reason]++
	s.mu.Unlock()
}

// Stats are the adapter's counters since Open.
type Stats struct {
	Published   int64            // leases handed out
	Fallbacks   map[string]int64 // Publish failures by reason
	Handshakes  int64            // handshakes run (successful or not)
	Mismatches  int64            // handshakes that found another model or an unsupported layout
	EraseFailed int64            // background erases that failed
}

// Stats returns a snapshot of the counters.
func (a *Adapter) Stats() Stats {
	s := Stats{Published: a.stats.published.Load(), Handshakes: a.stats.handshakes.Load(),
		Mismatches: a.stats.mismatches.Load(), EraseFailed: a.stats.eraseFailed.Load(), Fallbacks: map[string]int64{}}
	a.stats.mu.Lock()
	for k, v := range a.stats.fallbacks {
		s.Fallbacks[k] = v
	}
	a.stats.mu.Unlock()
	return s
}

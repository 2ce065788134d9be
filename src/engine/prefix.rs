//! The prefix cache: the KV of prompt prefixes, as prefill calls wrote it, in a token radix tree
//! per loaded model, so that a prompt sharing its first tokens with an earlier one (an agent's
//! growing conversation, a repeated system prompt, rerank judgements of one query) prefills only
//! the rest.
//!
//! Why it never changes an answer, by construction: every prompt is prefilled in calls that start
//! and end at its prefill boundaries ([`Boundaries`]: every 64 tokens up to 512, then every 128,
//! and where each turn after the first begins), a pure function of the prompt's tokens up to
//! each boundary, so two prompts sharing a prefix share its boundaries, with or without the
//! cache. The cache keeps the KV of whole calls only (never a partial last call, never a
//! generated token's), and a prompt takes from it only whole calls, ending at one of its
//! boundaries at least [`MIN_PREFILL`] tokens before its end. So every position's KV was written
//! by the very call (same tokens, same past, same length) that would have written it without the
//! cache, and every later call of the prompt is the same call too. Cutting calls anywhere would
//! not do: a chunk of 129, 257 or 385 tokens (length 1 modulo 128) gives other bits than the same
//! tokens cut otherwise (measured on the fused SmolLM2, ONNX Runtime 1.31.1, AVX2: by up to 0.42
//! in the logits), as a 1-token chunk does (the decode path), and KV written by decode steps
//! differs from prefill-written KV. What the construction still assumes (a call's bits do not
//! depend on its buffers' capacity or on the sequence it was copied from) [`probe_prefix_reuse`]
//! checks on each model at load; the cache is off for a model that fails it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::engine::backend::{DecoderBackend, Step};
pub use crate::engine::kv_block::{KvBlock, KvPiece};
use crate::error::Result;

/// Prompt tokens always prefilled, even when the cache holds the whole prompt (an exact repeat
/// backs off to the boundary at least this many tokens before its end).
pub const MIN_PREFILL: usize = 2;

/// The boundaries below, for the engine fingerprint (a change changes answers' bits).
pub const BOUNDARIES: &str =
    "every 64 to 512, then 128; after the first newline token 2-8 after an end-of-turn token, 2 or more from either";

/// The most tokens from a turn's end token to the newline that closes the next turn's header
/// (ChatML's `<|im_end|>`, `\n`, `<|im_start|>`, `assistant`, `\n` is 4; a longer role name a few
/// more).
const HEADER_MOST: usize = 8;

/// Tokens between prefill boundaries around position `pos`: small calls early (shared system
/// prompts and rerank instructions are reused at a fine grain), 128 after: a conversation turn
/// re-prefills at most 127 tokens it shares with the last one. Larger calls prefill long prompts
/// only a little faster (on 2 cores a 4,000-token prompt took 17.8 s in calls of 64 tokens, 13.2 s
/// in calls of 128 and 12.4 s in calls of 512), while an agent's turn after a 2,300-token
/// history re-prefilled up to 511 tokens with 512-token calls past 2,048 (the prefix section of
/// `make bench`). Each size divides the position where it starts.
fn block_at(pos: usize) -> usize {
    match pos {
        0..512 => 64,
        _ => 128,
    }
}

/// The first boundary of the fixed grid after position `pos`.
pub fn next_boundary(pos: usize) -> usize {
    let block = block_at(pos);
    (pos / block + 1) * block
}

/// The last boundary of the fixed grid at or before position `pos`.
pub fn boundary_at_or_below(pos: usize) -> usize {
    let block = block_at(pos);
    pos / block * block
}

/// Where a model's prompts are cut into prefill calls: the fixed grid ([`next_boundary`]), and
/// where a turn's text begins after the previous turn's end (the first newline token 2 to
/// [`HEADER_MOST`] tokens after an end-of-turn token: the end of the next turn's header, as
/// ChatML, Llama 3, Gemma and Phi-3 templates write it), when that lies [`MIN_PREFILL`] tokens or
/// more past the previous boundary and before the next grid boundary. A conversation's earlier
/// turns with the next one's header, a system prompt and a rerank query (its judgements' system
/// turn) then end on a boundary, so the next prompt reuses all of them, not only up to the grid;
/// and a prompt that ends with the assistant's header (every chat prompt) ends on a boundary, so
/// its last call is kept too and is no separate call of a few header tokens. Whether a position
/// is a boundary depends on the prompt's tokens before it only (a prefix has its prompt's
/// boundaries), and no call but a prompt's last is shorter than [`MIN_PREFILL`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boundaries {
    /// The model's end-of-turn tokens (its end tokens: a chat template closes each turn with one).
    turn_ends: Vec<u32>,
    /// Whether each token id's text ends with a newline (ids past the end: no).
    newlines: Vec<bool>,
}

impl Boundaries {
    /// The boundaries of a model whose turns end with `turn_ends` and whose tokens that end with
    /// a newline are `newlines` (none: the fixed grid only).
    pub fn new(turn_ends: Vec<u32>, newlines: impl IntoIterator<Item = u32>) -> Self {
        let mut flags = Vec::new();
        for id in newlines {
            let id = id as usize;
            if flags.len() <= id {
                flags.resize(id + 1, false);
            }
            flags[id] = true;
        }
        Boundaries { turn_ends, newlines: flags }
    }

    /// Whether `token`'s text ends with a newline.
    fn is_newline(&self, token: u32) -> bool {
        self.newlines.get(token as usize).copied().unwrap_or(false)
    }

    /// Whether a turn's text begins at `end` (> 0): the token before it is the first newline
    /// token 2 or more tokens after the last end-of-turn token, at most [`HEADER_MOST`] after.
    fn opens_turn(&self, prompt: &[u32], end: usize) -> bool {
        let header_end = end - 1;
        if !self.is_newline(prompt[header_end]) {
            return false;
        }
        let window = header_end.saturating_sub(HEADER_MOST)..header_end;
        let Some(turn_end) = prompt[window.clone()].iter().rposition(|t| self.turn_ends.contains(t)) else {
            return false;
        };
        let turn_end = window.start + turn_end;
        header_end - turn_end >= 2 && !prompt[turn_end + 2..header_end].iter().any(|&t| self.is_newline(t))
    }

    /// The first boundary of `prompt` after `pos`, itself a boundary (0 included); a boundary
    /// past the prompt's end may be one of the grid's only.
    pub fn next(&self, prompt: &[u32], pos: usize) -> usize {
        let grid = next_boundary(pos);
        let last = grid.saturating_sub(MIN_PREFILL).min(prompt.len());
        (pos + MIN_PREFILL..=last).find(|&end| self.opens_turn(prompt, end)).unwrap_or(grid)
    }

    /// The last boundary of `prompt` at or before `pos`.
    pub fn at_or_below(&self, prompt: &[u32], pos: usize) -> usize {
        let mut at = 0;
        loop {
            let next = self.next(prompt, at);
            if next > pos {
                return at;
            }
            at = next;
        }
    }

    /// Tokens of the next prefill call of `prompt` when its first `fed` (a boundary) are in the
    /// KV cache: up to the next boundary or the prompt's end.
    pub fn chunk_len(&self, prompt: &[u32], fed: usize) -> usize {
        self.next(prompt, fed).min(prompt.len()) - fed
    }

    /// The prefill calls of `prompt` after its first `fed` tokens (a boundary), in order.
    pub fn calls<'a>(&'a self, prompt: &'a [u32], mut fed: usize) -> impl Iterator<Item = Range<usize>> + 'a {
        std::iter::from_fn(move || {
            let start = fed;
            fed += self.chunk_len(prompt, fed);
            (start < prompt.len()).then_some(start..fed)
        })
    }
}

/// Which cached prefix a prompt may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReuseRule {
    /// Tokens always left to prefill.
    pub min_prefill: usize,
    /// Whether the prefix ends at a prefill boundary (and only whole calls are kept).
    pub aligned: bool,
}

impl ReuseRule {
    /// The rule that keeps every answer exact.
    pub const EXACT: ReuseRule = ReuseRule { min_prefill: MIN_PREFILL, aligned: true };

    /// Tokens `prompt` takes when the cache holds its first `matched`.
    pub fn reuse(&self, boundaries: &Boundaries, prompt: &[u32], matched: usize) -> usize {
        let most = matched.min(prompt.len().saturating_sub(self.min_prefill));
        if self.aligned {
            boundaries.at_or_below(prompt, most)
        } else {
            most
        }
    }
}

/// The prefix cache's counters, shared with whoever shows them (`status`, `/metrics`).
#[derive(Debug, Default)]
pub struct PrefixStats {
    /// Whether the cache serves this model, or why not.
    state: Mutex<PrefixState>,
    /// Most bytes it may hold.
    pub budget_bytes: AtomicU64,
    /// Prompts that took a cached prefix.
    pub hits: AtomicU64,
    /// Prompts that found none.
    pub misses: AtomicU64,
    /// Prompt tokens whose KV came from the cache.
    pub tokens_reused: AtomicU64,
    /// Prompt tokens prefilled by the model.
    pub tokens_prefilled: AtomicU64,
    /// Bytes of KV it holds.
    pub bytes: AtomicU64,
    /// Blocks dropped to stay within the budget.
    pub evictions: AtomicU64,
}

/// Whether a model's prefix cache serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PrefixState {
    /// It does.
    #[default]
    On,
    /// It does not, for this reason.
    Off(String),
}

impl PrefixStats {
    /// Whether the cache serves, or why not.
    pub fn state(&self) -> PrefixState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_state(&self, state: PrefixState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }
}

/// One edge of the tree: its tokens and their positions' KV.
struct Node {
    /// Tokens of the edge into this node.
    tokens: Vec<u32>,
    /// Their KV (as many positions as tokens).
    kv: KvBlock,
    parent: usize,
    children: HashMap<u32, usize>,
    /// When a lookup or insert last passed through it (a tick of the cache's clock).
    used: u64,
}

/// The root's index; it holds no tokens.
const ROOT: usize = 0;

/// A token radix tree of prefill-written KV, within a byte budget (least recently used leaves go
/// first). Owned by its model's worker: lookups copy the KV out before anything else runs, so an
/// evicted block is never one in use.
pub struct PrefixCache {
    nodes: Vec<Option<Node>>,
    free: Vec<usize>,
    /// Rows of every block (kinds x heads).
    rows: usize,
    budget: usize,
    bytes: usize,
    clock: u64,
    stats: Arc<PrefixStats>,
    /// Which prefix a lookup may give ([`ReuseRule::EXACT`]).
    rule: ReuseRule,
    /// Its model's prefill boundaries.
    boundaries: Boundaries,
}

/// A lookup's result: how many tokens matched and where their KV is.
pub struct PrefixHit<'a> {
    /// Tokens matched.
    pub tokens: usize,
    /// Their KV, in order.
    pub pieces: Vec<KvPiece<'a>>,
}

impl PrefixCache {
    /// An empty cache of blocks with `rows` rows (kinds x heads), holding at most `budget` bytes,
    /// for a model whose prompts are cut at `boundaries`.
    pub fn new(rows: usize, budget: usize, stats: Arc<PrefixStats>, boundaries: Boundaries) -> Self {
        stats.budget_bytes.store(budget as u64, Ordering::Relaxed);
        let root = Node {
            tokens: Vec::new(),
            kv: KvBlock { len: 0, data: Vec::new() },
            parent: ROOT,
            children: HashMap::new(),
            used: 0,
        };
        PrefixCache {
            nodes: vec![Some(root)],
            free: Vec::new(),
            rows,
            budget,
            bytes: 0,
            clock: 0,
            stats,
            rule: ReuseRule::EXACT,
            boundaries,
        }
    }

    /// The rule its lookups follow.
    pub fn rule(&self) -> ReuseRule {
        self.rule
    }

    /// Lets lookups give prefixes by another rule than [`ReuseRule::EXACT`], which breaks the
    /// guarantee (for the tests that show the rule matters).
    #[doc(hidden)]
    pub fn set_rule(&mut self, rule: ReuseRule) {
        self.rule = rule;
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<PrefixStats> {
        &self.stats
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("a live node")
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().expect("a live node")
    }

    /// Walks from the root along `tokens` (at most `limit` of them); returns the path of
    /// `(node, tokens of its edge matched)` and marks it used.
    fn walk(&mut self, tokens: &[u32], limit: usize) -> Vec<(usize, usize)> {
        self.clock += 1;
        let mut path = Vec::new();
        let (mut at, mut done) = (ROOT, 0);
        while done < limit {
            let Some(&child) = self.node(at).children.get(&tokens[done]) else { break };
            let edge = &self.node(child).tokens;
            let matched = edge.iter().zip(&tokens[done..limit]).take_while(|(a, b)| a == b).count();
            path.push((child, matched));
            self.node_mut(child).used = self.clock;
            done += matched;
            if matched < self.node(child).tokens.len() {
                break;
            }
            at = child;
        }
        path
    }

    /// The longest cached prefix of `prompt` its rule allows: whole prefill calls, leaving at
    /// least [`MIN_PREFILL`] tokens to prefill.
    pub fn lookup(&mut self, prompt: &[u32]) -> PrefixHit<'_> {
        let path = self.walk(prompt, prompt.len());
        let matched = path.iter().map(|(_, m)| m).sum();
        let tokens = self.rule.reuse(&self.boundaries, prompt, matched);
        let counter = if tokens > 0 { &self.stats.hits } else { &self.stats.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        self.stats.tokens_reused.fetch_add(tokens as u64, Ordering::Relaxed);
        let mut pieces = Vec::new();
        let mut left = tokens;
        for &(n, m) in &path {
            if left == 0 {
                break;
            }
            let take = m.min(left);
            pieces.push(KvPiece { block: &self.node(n).kv, range: (0, take) });
            left -= take;
        }
        PrefixHit { tokens, pieces }
    }

    /// Records the KV `kv` of positions `start..prompt.len()` of `prompt`, written by one whole
    /// prefill call (from a boundary to the next). Kept only when positions `0..start` are still cached (the chunk's
    /// predecessors may have been evicted meanwhile) and the budget has room for it.
    pub fn insert(&mut self, prompt: &[u32], start: usize, kv: KvBlock) {
        debug_assert_eq!(kv.len, prompt.len() - start);
        self.stats.tokens_prefilled.fetch_add(kv.len as u64, Ordering::Relaxed);
        let path = self.walk(prompt, prompt.len());
        let matched: usize = path.iter().map(|(_, m)| m).sum();
        if matched < start || matched == prompt.len() {
            return;
        }
        let mut parent = ROOT;
        if let Some(&(last, m)) = path.last() {
            parent = if m < self.node(last).tokens.len() { self.split(last, m) } else { last };
        }
        let kv = if matched > start { kv.slice(self.rows, matched - start..kv.len) } else { kv };
        let keep: Vec<usize> = path.iter().map(|(n, _)| *n).chain([parent]).collect();
        if !self.make_room(kv.bytes(), &keep) {
            return;
        }
        self.bytes += kv.bytes();
        let node = Node { tokens: prompt[matched..].to_vec(), kv, parent, children: HashMap::new(), used: self.clock };
        let first = node.tokens[0];
        let index = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = Some(node);
                i
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.node_mut(parent).children.insert(first, index);
        self.stats.bytes.store(self.bytes as u64, Ordering::Relaxed);
    }

    /// Splits `node` after `at` of its edge's tokens; returns the new upper node.
    fn split(&mut self, node: usize, at: usize) -> usize {
        let rows = self.rows;
        let lower = self.node_mut(node);
        let upper_tokens = lower.tokens[..at].to_vec();
        let upper_kv = lower.kv.slice(rows, 0..at);
        lower.tokens.drain(..at);
        lower.kv = lower.kv.slice(rows, at..lower.kv.len);
        let (parent, used, first_lower) = (lower.parent, lower.used, lower.tokens[0]);
        let upper =
            Node { tokens: upper_tokens, kv: upper_kv, parent, children: HashMap::from([(first_lower, node)]), used };
        let first_upper = upper.tokens[0];
        self.nodes.push(Some(upper));
        let index = self.nodes.len() - 1;
        self.node_mut(node).parent = index;
        self.node_mut(parent).children.insert(first_upper, index);
        index
    }

    /// Evicts least recently used leaves (none of `keep`) until `bytes` more fit the budget;
    /// false when they cannot.
    fn make_room(&mut self, bytes: usize, keep: &[usize]) -> bool {
        if bytes > self.budget {
            return false;
        }
        while self.bytes + bytes > self.budget {
            let leaf = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
                .filter(|(i, n)| *i != ROOT && n.children.is_empty() && !keep.contains(i))
                .min_by_key(|(_, n)| n.used)
                .map(|(i, _)| i);
            let Some(leaf) = leaf else { return false };
            let node = self.nodes[leaf].take().expect("a live node");
            self.node_mut(node.parent).children.remove(&node.tokens[0]);
            self.bytes -= node.kv.bytes();
            self.free.push(leaf);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.bytes.store(self.bytes as u64, Ordering::Relaxed);
        true
    }
}

/// Checks, on the model itself, that a prompt prefilled after a cached prefix gives the bits of
/// the same prompt prefilled without it: a `tokens`-token probe prompt prefilled from the start
/// (the reference); a second, longer prompt that shares the prefix `rule` lets the first take
/// (other tokens after it) is prefilled, that prefix's KV read back, loaded into a fresh sequence,
/// and the rest of the probe prompt prefilled after it. Returns `None` when the last logits and
/// every position's KV matched bit for bit, else what differed. The probe prompt holds an
/// end-of-turn token and a header's newline three quarters in, so that the prefix may end on a
/// turn's boundary. With a rule other than [`ReuseRule::EXACT`] (a prefix that ends off a
/// boundary, a 1-token call after it) the probe must fail.
pub fn probe_prefix_reuse<B: DecoderBackend>(
    backend: &mut B,
    boundaries: &Boundaries,
    tokens: usize,
    rule: ReuseRule,
) -> Result<Option<String>> {
    let mut prompt: Vec<u32> = (0..tokens).map(|i| 100 + (i as u32 * 37) % 900).collect();
    let newline = boundaries.newlines.iter().position(|&n| n).map(|id| id as u32);
    if let (Some(&turn_end), Some(newline), Some(slot)) =
        (boundaries.turn_ends.first(), newline, (tokens * 3 / 4).checked_sub(4))
    {
        prompt[slot] = turn_end;
        prompt[slot + 3] = newline;
    }
    let reuse = rule.reuse(boundaries, &prompt, tokens);
    // Prefills `tokens` from position `fed` on, call by call; the last call's logits.
    let prefill = |backend: &mut B, state: &mut B::State, tokens: &[u32], fed: usize| -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        for call in boundaries.calls(tokens, fed) {
            logits = backend.forward(&mut [Step { state, tokens: &tokens[call] }])?.pop().unwrap_or_default();
        }
        Ok(logits)
    };
    let mut reference = backend.new_state();
    let expected = prefill(backend, &mut reference, &prompt, 0)?;
    let expected_kv = backend.read_kv(&reference, 0..tokens)?;
    drop(reference);
    let mut state = backend.new_state();
    if reuse > 0 {
        // A longer prompt (its buffers grow otherwise) sharing the prefix.
        let mut other_prompt = prompt[..reuse].to_vec();
        other_prompt.extend((0..tokens / 2 + 2).map(|i| 1000 + i as u32));
        let mut other = backend.new_state();
        prefill(backend, &mut other, &other_prompt, 0)?;
        let cached = backend.read_kv(&other, 0..reuse)?;
        drop(other);
        backend.load_kv(&mut state, &[KvPiece { block: &cached, range: (0, reuse) }])?;
    }
    let got = prefill(backend, &mut state, &prompt, reuse)?;
    let got_kv = backend.read_kv(&state, 0..tokens)?;
    let differ = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    if got != expected {
        return Ok(Some(format!(
            "a {tokens}-token probe prompt prefilled after a cached prefix of {reuse} gave other logits (by up to \
             {:.2e}) than prefilled without it",
            differ(&got, &expected)
        )));
    }
    if got_kv != expected_kv {
        return Ok(Some(format!(
            "a {tokens}-token probe prompt prefilled after a cached prefix of {reuse} wrote another KV cache (by up to \
             {:.2e}) than prefilled without it",
            differ(&got_kv.data, &expected_kv.data)
        )));
    }
    Ok(None)
}

/// Turns the cache off for a model and says why (logged once by the caller too).
pub fn disable(stats: &PrefixStats, reason: String) {
    stats.set_state(PrefixState::Off(reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: usize = 2;

    /// A block for positions `range` whose floats name the position and row.
    fn block(range: Range<usize>) -> KvBlock {
        let mut data = Vec::new();
        for r in 0..ROWS {
            for p in range.clone() {
                data.extend([(r * 1000 + p) as f32, -((r * 1000 + p) as f32)]);
            }
        }
        KvBlock { len: range.len(), data }
    }

    /// The loaded prefix as one block, as a backend would assemble it.
    fn assemble(hit: &PrefixHit<'_>) -> KvBlock {
        let mut out = KvBlock::zeroed(ROWS, hit.tokens, 2);
        for r in 0..ROWS {
            let mut at = 0;
            for piece in &hit.pieces {
                let (a, b) = piece.range;
                out.row_mut(ROWS, r, at..at + b - a).copy_from_slice(piece.block.row(ROWS, r, a..b));
                at += b - a;
            }
        }
        out
    }

    /// A cache whose prefixes need not end at a boundary (the tree's own tests use short prompts).
    fn cache(budget: usize) -> PrefixCache {
        let mut cache = PrefixCache::new(ROWS, budget, Arc::default(), Boundaries::default());
        cache.set_rule(ReuseRule { min_prefill: MIN_PREFILL, aligned: false });
        cache
    }

    #[test]
    fn prefill_calls_end_at_fixed_boundaries() {
        let cases = [(0, 64), (63, 64), (64, 128), (500, 512), (512, 640), (1000, 1024), (1024, 1152), (2047, 2048)];
        for (pos, next) in cases {
            assert_eq!(next_boundary(pos), next, "after {pos}");
        }
        assert_eq!(next_boundary(2048), 2176);
        assert_eq!((boundary_at_or_below(600), boundary_at_or_below(2559), boundary_at_or_below(63)), (512, 2432, 0));
        let grid = Boundaries::default();
        for total in 1..3000 {
            let prompt = vec![7; total];
            for call in grid.calls(&prompt, 0) {
                assert!((1..=128).contains(&call.len()));
                let end = call.end;
                assert!(end == total || end == boundary_at_or_below(end), "{total}: a call ended at {end}");
            }
        }
    }

    #[test]
    fn turns_open_after_their_headers_two_tokens_or_more_from_any_other_boundary() {
        // End-of-turn tokens 2 and 9, newline token 7; a header is `2 7 1 3 7` (ChatML's shape).
        let b = Boundaries::new(vec![2, 9], [7]);
        let mut prompt = vec![5u32; 300];
        let mut put = |at: usize, tokens: &[u32]| prompt[at..at + tokens.len()].copy_from_slice(tokens);
        put(36, &[2, 7, 1, 3, 7]); // opens a turn at 41 (not at 38: a newline right after the end)
        put(62, &[2, 1, 7]); // 65: one past the grid
        put(66, &[2, 7, 1, 7]); // 70
        put(124, &[2, 1, 7]); // 127: one before the grid
        put(150, &[9, 5, 5, 5, 5, 5, 5, 5, 5, 7]); // 160: the newline 9 tokens after the end
        put(200, &[9, 1, 7, 1, 7]); // 203, and not 205 (not the first newline)
        put(220, &[2, 5, 5, 5, 5, 5, 5, 5, 7]); // 229: 8 after
        let ends: Vec<usize> = b.calls(&prompt, 0).map(|c| c.end).collect();
        assert_eq!(ends, [41, 64, 70, 128, 192, 203, 229, 256, 300]);
        assert_eq!(b.at_or_below(&prompt, 69), 64);
        assert_eq!(b.at_or_below(&prompt, 70), 70);
        assert_eq!(b.at_or_below(&prompt, 298), 256);
        // A prompt ending with a turn's header (every chat prompt) ends on a boundary; one ending
        // with the turn's end token does not.
        assert_eq!(b.next(&prompt[..70], 64), 70);
        assert_eq!(b.next(&prompt[..67], 64), 128);
    }

    #[test]
    fn a_prefix_has_its_prompts_boundaries() {
        // Prompts of random tokens, a quarter of them turn ends and a quarter newlines: every
        // boundary of a prompt within a prefix is one of the prefix's, and the other way round;
        // every call but the last is 2 tokens or more, none is longer than 128.
        let b = Boundaries::new(vec![0], [1]);
        let mut seed = 12345u64;
        for _ in 0..200 {
            let len = 2 + (seed % 700) as usize;
            let prompt: Vec<u32> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 33) as u32 % 4
                })
                .collect();
            let whole: Vec<Range<usize>> = b.calls(&prompt, 0).collect();
            for (i, call) in whole.iter().enumerate() {
                assert!(call.len() <= 128);
                assert!(call.len() >= MIN_PREFILL || i == whole.len() - 1, "{whole:?}");
            }
            for cut in 1..len {
                let part: Vec<Range<usize>> = b.calls(&prompt[..cut], 0).collect();
                let inside: Vec<_> = whole.iter().filter(|c| c.end < cut).cloned().collect();
                assert_eq!(inside, part[..part.len() - 1], "prefix of {cut} tokens");
            }
        }
    }

    #[test]
    fn exact_lookups_take_whole_calls_and_leave_two_tokens() {
        let mut c = PrefixCache::new(ROWS, 1 << 20, Arc::default(), Boundaries::default());
        let a: Vec<u32> = (0..130).collect();
        c.insert(&a[..64], 0, block(0..64));
        c.insert(&a[..128], 64, block(64..128));
        assert_eq!(c.lookup(&a).tokens, 128);
        let hit = c.lookup(&a[..129]);
        assert_eq!(hit.tokens, 64, "129 tokens must prefill 2: back to the boundary at 64");
        assert_eq!(assemble(&hit), block(0..64));
        assert_eq!(c.lookup(&a[..65]).tokens, 0);
        assert_eq!(c.lookup(&a[..66]).tokens, 64);
        let mut b = a[..100].to_vec();
        b.extend(500..540);
        assert_eq!(c.lookup(&b).tokens, 64, "diverging inside a call: the whole calls before it");
    }

    #[test]
    fn a_prompt_takes_the_longest_cached_prefix_and_leaves_two_tokens() {
        let mut c = cache(1 << 20);
        let a: Vec<u32> = (0..10).collect();
        c.insert(&a[..6], 0, block(0..6));
        c.insert(&a, 6, block(6..10));
        // An exact repeat backs off two.
        let hit = c.lookup(&a);
        assert_eq!(hit.tokens, 8);
        assert_eq!(assemble(&hit), block(0..8));
        // A prompt diverging inside the second edge takes what matches.
        let mut b = a[..7].to_vec();
        b.extend([90, 91, 92]);
        let hit = c.lookup(&b);
        assert_eq!(hit.tokens, 7);
        assert_eq!(assemble(&hit), block(0..7));
        // Its own prefill splits the edge; both prompts keep their prefixes.
        c.insert(&b, 7, block(7..10));
        assert_eq!(c.lookup(&b).tokens, 8);
        assert_eq!(assemble(&c.lookup(&a)), block(0..8));
        assert_eq!(c.lookup(&[5, 6, 7]).tokens, 0);
        assert_eq!(c.lookup(&a[..2]).tokens, 0, "a 2-token prompt prefills both");
        let s = c.stats();
        assert_eq!(s.tokens_prefilled.load(Ordering::Relaxed), 13);
        assert_eq!(s.bytes.load(Ordering::Relaxed) as usize, 13 * ROWS * 2 * 4);
    }

    #[test]
    fn a_chunk_whose_predecessors_are_gone_is_not_kept() {
        let mut c = cache(1 << 20);
        let a: Vec<u32> = (0..10).collect();
        c.insert(&a, 4, block(4..10));
        assert_eq!(c.lookup(&a).tokens, 0);
        assert_eq!(c.stats().bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn least_recently_used_leaves_go_first_and_the_budget_holds() {
        // Room for 12 positions.
        let per_position = ROWS * 2 * 4;
        let mut c = cache(12 * per_position);
        let a: Vec<u32> = (0..6).collect();
        let b: Vec<u32> = (100..106).collect();
        c.insert(&a, 0, block(0..6));
        c.insert(&b, 0, block(0..6));
        assert_eq!(c.lookup(&a).tokens, 4, "a is used last");
        let d: Vec<u32> = (200..204).collect();
        c.insert(&d, 0, block(0..4));
        assert_eq!(c.lookup(&b).tokens, 0, "b was least recently used");
        assert_eq!(c.lookup(&a).tokens, 4);
        assert_eq!(c.lookup(&d).tokens, 2);
        assert_eq!(c.stats().evictions.load(Ordering::Relaxed), 1);
        assert!(c.stats().bytes.load(Ordering::Relaxed) as usize <= 12 * per_position);
        // A block larger than the budget is not kept, and evicts nothing.
        let e: Vec<u32> = (300..320).collect();
        c.insert(&e, 0, block(0..20));
        assert_eq!(c.lookup(&e).tokens, 0);
        assert_eq!(c.lookup(&a).tokens, 4);
        // A chunk's own ancestors are never evicted to make room for it.
        let mut long = a.clone();
        long.extend(400..406);
        c.insert(&long, 6, block(6..12));
        assert_eq!(assemble(&c.lookup(&long)), block(0..10));
    }
}

//! Copies of a sequence's KV cache, for the prefix cache: what backends read out and load in.

use std::ops::Range;

/// The KV of consecutive positions of one sequence: per buffer (layer and key/value) and head,
/// `len` positions of `dim` floats (`[kinds][heads][len][dim]`).
#[derive(Debug, Clone, PartialEq)]
pub struct KvBlock {
    /// Positions it holds.
    pub len: usize,
    /// The floats, `[kinds][heads][len][dim]` (a half-precision cache's values widened: they
    /// narrow back exactly when loaded).
    pub data: Vec<f32>,
}

impl KvBlock {
    /// An empty block for `len` positions of a cache of `rows` (kinds x heads) rows of `dim`.
    pub fn zeroed(rows: usize, len: usize, dim: usize) -> Self {
        KvBlock { len, data: vec![0.0; rows * len * dim] }
    }

    /// Floats per position of one row (head).
    fn dim(&self, rows: usize) -> usize {
        self.data.len() / (rows * self.len).max(1)
    }

    /// Positions `range` of row `row` (of `rows`).
    pub fn row(&self, rows: usize, row: usize, range: Range<usize>) -> &[f32] {
        let dim = self.dim(rows);
        let base = row * self.len * dim;
        &self.data[base + range.start * dim..base + range.end * dim]
    }

    /// Positions `range` of row `row` (of `rows`), to write.
    pub fn row_mut(&mut self, rows: usize, row: usize, range: Range<usize>) -> &mut [f32] {
        let dim = self.dim(rows);
        let base = row * self.len * dim;
        &mut self.data[base + range.start * dim..base + range.end * dim]
    }

    /// A copy of positions `range`.
    pub(crate) fn slice(&self, rows: usize, range: Range<usize>) -> KvBlock {
        let mut data = Vec::with_capacity(rows * range.len() * self.dim(rows));
        for r in 0..rows {
            data.extend_from_slice(self.row(rows, r, range.clone()));
        }
        KvBlock { len: range.len(), data }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }
}

/// Positions `range` of a cached block: one piece of a prefix to load.
#[derive(Debug, Clone, Copy)]
pub struct KvPiece<'a> {
    /// The block.
    pub block: &'a KvBlock,
    /// Which of its positions.
    pub range: (usize, usize),
}

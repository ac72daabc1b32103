//! The decoder's inference pass on the CPU backend (`Flex`) in plain Rust over the tensors' buffers, with a preallocated KV cache.
//! It must compute what the Burn path computes (up to float rounding) and leave autodiff and every other backend to Burn's ops.

//! Why: decoding one token through Burn's generic ops costs some 900 small
//! operations (reshapes, concatenations of the growing KV cache, broadcasts,
//! each with its allocation), and that overhead, not arithmetic or memory
//! bandwidth, set the speed on the CPU. Here one forward pass is a handful of
//! `gemm` calls per block (split by output columns over rayon's threads), a
//! fused RMSNorm, rotary embedding, attention over the cache written in place,
//! and SwiGLU, with no tensor built until the logits.
//!
//! [`super::inference`] decides per call, from the model's [`super::Kernels`], the
//! backend and the cache (a cache keeps the path it started on).

use super::panels::{PanelCache, CHOSEN_ROWS};
use super::quant::QuantMatrix;
use super::{Cpu, Inputs};
use crate::model::adapter::Target;
use crate::model::{Block, KvCache, Llama};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
pub(crate) use nasc_runtime::cpu::{gemm_at, SendPtr};
use rayon::prelude::*;
use std::any::Any;
use std::borrow::Cow;

/// `a` as a `T` when `A` is `T`.
pub(crate) fn cast<A: 'static, T: 'static>(a: A) -> Result<T, A> {
    let mut slot = Some(a);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        Some(t) => Ok(t.take().expect("just filled")),
        None => Err(slot.expect("untouched")),
    }
}

/// `t`'s float primitive as `P`, which the caller knows `B`'s to be (see [`super::cpu_backend`]).
pub(crate) fn prim<B: Backend, P: 'static, const D: usize>(t: Tensor<B, D>) -> P {
    cast::<_, P>(t.into_primitive().tensor()).unwrap_or_else(|_| unreachable!("B's float primitive is P"))
}

/// A float primitive `P`, which the caller knows is `B`'s, as a tensor.
pub(crate) fn wrap<B: Backend, P: 'static, const D: usize>(p: P) -> Tensor<B, D> {
    let p = cast::<P, B::FloatTensorPrimitive>(p).unwrap_or_else(|_| unreachable!("P is B's float tensor"));
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// A `Flex` tensor's values, borrowed when it is contiguous f32.
pub(crate) fn f32s(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(t.to_contiguous().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()),
    }
}

/// Keys and values of every past position for one block: `[batch, kv_heads, cap, head_dim]`,
/// the first `len` positions of each (batch, head) filled.
#[derive(Debug, Clone)]
pub(crate) struct FlatKv {
    batch: usize,
    kv_heads: usize,
    d: usize,
    cap: usize,
    /// Positions each row holds: rows of one prompt hold the same number, rows of requests
    /// decoding together (continuous batching) each their own.
    lens: Vec<usize>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl FlatKv {
    fn new(layers: usize, batch: usize, kv_heads: usize, d: usize) -> Self {
        FlatKv { batch, kv_heads, d, cap: 0, lens: vec![0; batch], k: vec![vec![]; layers], v: vec![vec![]; layers] }
    }

    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// The most positions a row holds.
    pub(crate) fn longest(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0)
    }

    /// Positions row `r` holds.
    pub(crate) fn row_len(&self, r: usize) -> usize {
        self.lens[r]
    }

    /// Room for `need` positions per row, keeping the first `len`; grows by doubling (up to `limit`).
    fn reserve(&mut self, len: usize, need: usize, limit: usize) {
        if need <= self.cap {
            return;
        }
        let cap = need.max(self.cap * 2).max(64).min(limit.max(need));
        let (old, d, heads) = (self.cap, self.d, self.batch * self.kv_heads);
        let grow = |buf: &mut Vec<f32>| {
            let mut new = vec![0.0; heads * cap * d];
            for h in 0..heads {
                new[h * cap * d..][..len * d].copy_from_slice(&buf[h * old * d..][..len * d]);
            }
            *buf = new;
        };
        self.k.iter_mut().chain(self.v.iter_mut()).for_each(grow);
        self.cap = cap;
    }

    /// Bytes its buffers hold.
    pub(crate) fn bytes(&self) -> u64 {
        self.k.iter().chain(&self.v).map(|b| (b.len() * std::mem::size_of::<f32>()) as u64).sum()
    }

    /// Row `r`'s first `len` positions (at most the row's) as a cache of one row: what a prefill
    /// of that row's first `len` tokens leaves (keys and values of a position depend only on the
    /// tokens up to it).
    pub(crate) fn row_prefix(&self, r: usize, len: usize) -> Self {
        let mut one = self.gather_rows(&[r]);
        one.lens[0] = len.min(self.lens[r]);
        one
    }

    /// The batch's rows taken in the order `rows` gives (a row may repeat), in a buffer sized
    /// for the longest of them (doubling from 64), so that rows leaving give memory back.
    pub(crate) fn gather_rows(&self, rows: &[usize]) -> Self {
        let lens: Vec<usize> = rows.iter().map(|&r| self.lens[r]).collect();
        let longest = lens.iter().copied().max().unwrap_or(0);
        let cap = longest.next_power_of_two().max(64).min(self.cap).max(longest);
        let (per_old, per_new) = (self.kv_heads * self.cap * self.d, self.kv_heads * cap * self.d);
        let take = |buf: &Vec<f32>| {
            let mut out = vec![0.0; rows.len() * per_new];
            for (i, &r) in rows.iter().enumerate() {
                for h in 0..self.kv_heads {
                    let (from, to) = (r * per_old + h * self.cap * self.d, i * per_new + h * cap * self.d);
                    out[to..][..lens[i] * self.d].copy_from_slice(&buf[from..][..lens[i] * self.d]);
                }
            }
            out
        };
        FlatKv {
            batch: rows.len(),
            cap,
            k: self.k.iter().map(take).collect(),
            v: self.v.iter().map(take).collect(),
            lens,
            ..*self
        }
    }

    /// `self`'s rows, then `other`'s, each keeping its own length: how a request joins the
    /// requests already decoding.
    pub(crate) fn join(&self, other: &FlatKv) -> FlatKv {
        assert_eq!(
            (self.kv_heads, self.d, self.k.len()),
            (other.kv_heads, other.d, other.k.len()),
            "one model's caches"
        );
        let cap = self.cap.max(other.cap);
        let per_new = self.kv_heads * cap * self.d;
        let layer = |a: &Vec<f32>, b: &Vec<f32>| {
            let mut out = vec![0.0; (self.batch + other.batch) * per_new];
            for (part, buf, offset) in [(self, a, 0), (other, b, self.batch)] {
                let per_old = part.kv_heads * part.cap * part.d;
                for r in 0..part.batch {
                    for h in 0..part.kv_heads {
                        let (from, to) =
                            (r * per_old + h * part.cap * part.d, (offset + r) * per_new + h * cap * part.d);
                        out[to..][..part.lens[r] * part.d].copy_from_slice(&buf[from..][..part.lens[r] * part.d]);
                    }
                }
            }
            out
        };
        FlatKv {
            batch: self.batch + other.batch,
            kv_heads: self.kv_heads,
            d: self.d,
            cap,
            lens: self.lens.iter().chain(&other.lens).copied().collect(),
            k: self.k.iter().zip(&other.k).map(|(a, b)| layer(a, b)).collect(),
            v: self.v.iter().zip(&other.v).map(|(a, b)| layer(a, b)).collect(),
        }
    }
}

/// One forward pass: logits `[out_rows, vocab]` of the last position of each row when
/// `last_only`, else of every position (row-major by batch row, then position).
/// The caller has checked the input and that [`super::inference`] holds.
pub(crate) fn logits<B: Backend>(
    model: &Llama<B>,
    tokens: &[u32],
    batch: usize,
    cache: &mut KvCache<B>,
    last_only: bool,
) -> Tensor<B, 2> {
    let c = &model.config;
    let (h, heads, kvh, d, ff) = (c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim, c.intermediate_size);
    let eps = c.rms_norm_eps as f32;
    let inputs = model.kernels.inputs();
    let panels = model.kernels.panels.then_some(&model.panels);
    let rows = tokens.len();
    let seq = rows / batch;
    let flat = cache.flat.get_or_insert_with(|| FlatKv::new(c.n_layers, batch, kvh, d));
    // Each row goes on from its own length (rows of requests that joined at different times
    // hold different numbers of positions).
    let past = flat.lens.clone();
    let longest = flat.longest();
    flat.reserve(longest, longest + seq, c.max_position_embeddings);

    let embed = prim::<B, FlexTensor, 2>(model.embed.val());
    let embed = f32s(&embed);
    let mut x = vec![0f32; rows * h];
    for (xr, &t) in x.chunks_exact_mut(h).zip(tokens) {
        xr.copy_from_slice(&embed[t as usize * h..][..h]);
    }
    let positions: Vec<usize> = (0..rows).map(|r| past[r / seq] + r % seq).collect();
    let (cos, sin) = rope_at(&c.inv_freq(), &positions);

    let mut normed = vec![0f32; rows * h];
    let (mut q, mut k, mut v) = (vec![0f32; rows * heads * d], vec![0f32; rows * kvh * d], vec![0f32; rows * kvh * d]);
    let mut att = vec![0f32; rows * heads * d];
    let mut out = vec![0f32; rows * h];
    let (mut gate, mut up) = (vec![0f32; rows * ff], vec![0f32; rows * ff]);
    for (layer, block) in model.blocks.iter().enumerate() {
        rms_norm(&x, &f32s(&prim::<B, FlexTensor, 1>(block.attn_norm.val())), eps, &mut normed);
        project_many(
            block,
            &[Target::Q, Target::K, Target::V],
            &normed,
            rows,
            &mut [&mut q[..], &mut k[..], &mut v[..]],
            inputs,
            panels,
        );
        rope(&mut q, rows, heads, d, &cos, &sin);
        rope(&mut k, rows, kvh, d, &cos, &sin);
        let (kc, vc) = (&mut flat.k[layer], &mut flat.v[layer]);
        for (r, (kr, vr)) in k.chunks_exact(kvh * d).zip(v.chunks_exact(kvh * d)).enumerate() {
            let (b, s) = (r / seq, r % seq);
            for g in 0..kvh {
                let at = ((b * kvh + g) * flat.cap + past[b] + s) * d;
                kc[at..at + d].copy_from_slice(&kr[g * d..][..d]);
                vc[at..at + d].copy_from_slice(&vr[g * d..][..d]);
            }
        }
        let geometry = Attention { batch, seq, past: &past, heads, kv_heads: kvh, d, cap: flat.cap };
        attention(&geometry, &q, &flat.k[layer], &flat.v[layer], &mut att);
        project(block, Target::O, &att, rows, &mut out, inputs, panels);
        x.iter_mut().zip(&out).for_each(|(x, o)| *x += o);

        rms_norm(&x, &f32s(&prim::<B, FlexTensor, 1>(block.mlp_norm.val())), eps, &mut normed);
        project_many(
            block,
            &[Target::Gate, Target::Up],
            &normed,
            rows,
            &mut [&mut gate[..], &mut up[..]],
            inputs,
            panels,
        );
        gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| super::fastexp::swiglu(g, u));
        project(block, Target::Down, &gate, rows, &mut out, inputs, panels);
        x.iter_mut().zip(&out).for_each(|(x, o)| *x += o);
    }
    flat.lens.iter_mut().for_each(|l| *l += seq);
    cache.len = flat.longest();

    let x = if last_only {
        (0..batch).flat_map(|b| x[(b * seq + seq - 1) * h..][..h].iter().copied()).collect()
    } else {
        x
    };
    let n = x.len() / h;
    let mut normed = vec![0f32; n * h];
    rms_norm(&x, &f32s(&prim::<B, FlexTensor, 1>(model.norm.val())), eps, &mut normed);
    let vocab = c.vocab_size;
    let mut logits = vec![0f32; n * vocab];
    match &model.quantised_head {
        Some(head) => head.matmul(n, &normed, &mut logits, inputs),
        None => {
            let head = prim::<B, FlexTensor, 2>(model.lm_head.val());
            weight_product(panels, &head, (n, h, vocab), &normed, &mut logits);
        }
    }
    wrap::<B, _, 2>(FlexTensor::from_data(TensorData::new(logits, [n, vocab])))
}

/// [`project`] for several targets of the same input: on a quantised base, their products as one
/// parallel region ([`QuantMatrix::matmul_many`]), the same bits as one by one.
fn project_many<B: Backend>(
    block: &Block<B>,
    targets: &[Target],
    x: &[f32],
    rows: usize,
    outs: &mut [&mut [f32]],
    inputs: Inputs,
    panels: Option<&PanelCache>,
) {
    let quantised: Option<Vec<&QuantMatrix>> = targets.iter().map(|&t| block.base(t).1.map(|q| &**q)).collect();
    match quantised {
        Some(ws) => {
            QuantMatrix::matmul_many(&ws, rows, x, outs, inputs);
            for (&target, out) in targets.iter().zip(outs.iter_mut()) {
                project_extras(block, target, x, rows, out);
            }
        }
        None => {
            for (&target, out) in targets.iter().zip(outs.iter_mut()) {
                project(block, target, x, rows, out, inputs, panels);
            }
        }
    }
}

/// `out = x Wᵀ(+ bias) + scale · x A B` for `target`'s projection of `block`, `x` `[rows, in]`.
fn project<B: Backend>(
    block: &Block<B>,
    target: Target,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    inputs: Inputs,
    panels: Option<&PanelCache>,
) {
    let (linear, quantised) = block.base(target);
    let d_in = x.len() / rows;
    let d_out = out.len() / rows;
    match quantised {
        Some(q) => q.matmul(rows, x, out, inputs),
        None => {
            let w = prim::<B, FlexTensor, 2>(linear.weight.val());
            weight_product(panels, &w, (rows, d_in, d_out), x, out);
        }
    }
    project_extras(block, target, x, rows, out);
}

/// `out (m×n) = x (m×k) · w` for an f32 weight `w` `[k, n]` of the model: through its packed
/// panels ([`PanelCache`]) for a decoding step's few rows when the model keeps them, else
/// [`matmul`].
fn weight_product(
    panels: Option<&PanelCache>,
    w: &FlexTensor,
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    out: &mut [f32],
) {
    let values = f32s(w);
    match (panels, &values) {
        (Some(cache), Cow::Borrowed(v)) if m <= CHOSEN_ROWS && v.len() == k * n => {
            cache.get(w, v, k, n).matmul(m, x, out, None)
        }
        _ => matmul((m, k, n), x, &values, out, None),
    }
}

/// What [`project`] adds to the base product already in `out`: the bias and the adapter's
/// low-rank product.
fn project_extras<B: Backend>(block: &Block<B>, target: Target, x: &[f32], rows: usize, out: &mut [f32]) {
    let linear = block.base(target).0;
    let d_in = x.len() / rows;
    let d_out = out.len() / rows;
    if let Some(bias) = &linear.bias {
        let bias = prim::<B, FlexTensor, 1>(bias.val());
        let bias = f32s(&bias);
        out.chunks_exact_mut(d_out).for_each(|o| o.iter_mut().zip(bias.iter()).for_each(|(o, b)| *o += b));
    }
    if let Some(adapter) = block.lora.get(target) {
        let (a, b) = (prim::<B, FlexTensor, 2>(adapter.a.val()), prim::<B, FlexTensor, 2>(adapter.b.val()));
        let r = adapter.rank();
        let mut low = vec![0f32; rows * r];
        matmul((rows, d_in, r), x, &f32s(&a), &mut low, None);
        matmul((rows, r, d_out), &low, &f32s(&b), out, Some(adapter.scale as f32));
    }
}

/// `dst (m×n) = a (m×k) · b (k×n)`, all row-major; with `Some(beta)`, `dst += beta · a b`.
/// Large products are split by columns of `b` over rayon's threads (so one row, a decoding
/// stream, also runs on every thread).
pub(crate) fn matmul((m, k, n): (usize, usize, usize), a: &[f32], b: &[f32], dst: &mut [f32], add: Option<f32>) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && dst.len() >= m * n,
        "operands of a [{m}, {k}] x [{k}, {n}] product"
    );
    if m == 1 && k * n >= 1 << 16 {
        gemv(k, n, a, b, dst, add);
        return;
    }
    product((m, n, k), dst, add.is_some(), add.unwrap_or(1.0), a, (k, 1), b, (n, 1));
}

/// `dst (m×n, row-major) = beta · a (m×k) · b (k×n)`, `+=` when `accumulate`, each operand given
/// by its row and column strides; split by columns of `dst` over rayon's threads when large.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    beta: f32,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n, "product's destination");
    assert!(k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs, "product's left operand");
    assert!(k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs, "product's right operand");
    let parts = if m * k * n < 1 << 16 { 1 } else { rayon::current_num_threads().max(1) };
    let chunk = n.div_ceil(parts).next_multiple_of(16).min(n);
    let out = SendPtr::new(dst.as_mut_ptr());
    let run = |c0: usize| {
        // SAFETY: the asserts above bound every element read and written; the column blocks of
        // `dst` are disjoint between calls, and `dst` does not alias `a` or `b`.
        unsafe {
            gemm_at(
                (m, chunk.min(n - c0), k),
                out.get().add(c0),
                n,
                accumulate,
                beta,
                a.as_ptr(),
                (a_rs, a_cs),
                b.as_ptr().add(c0 * b_cs),
                (b_rs, b_cs),
            )
        };
    };
    if n <= chunk {
        run(0);
    } else {
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|i| run(i * chunk));
    }
}

/// Output columns one task of [`gemv`] accumulates at a time.
const GEMV_BLOCK: usize = 128;

/// `dst (n) = x (k) · b (k×n)` (`dst += beta · x b` with `Some(beta)`): one decoding stream's
/// product with an f32 weight. Columns go in blocks of [`GEMV_BLOCK`] over rayon's threads; each
/// block's sums stay in registers while the rows of `b` stream past. `gemm` is slower for one
/// row (see BENCHMARKS.md), which is why one stream used to decode faster through Burn's ops.
fn gemv(k: usize, n: usize, x: &[f32], b: &[f32], dst: &mut [f32], add: Option<f32>) {
    let blocks = n.div_ceil(GEMV_BLOCK);
    let per_task = blocks.div_ceil(rayon::current_num_threads().max(1) * 2).max(1);
    dst[..n].par_chunks_mut(GEMV_BLOCK * per_task).enumerate().for_each(|(t, out)| {
        for (i, out) in out.chunks_mut(GEMV_BLOCK).enumerate() {
            let c0 = (t * per_task + i) * GEMV_BLOCK;
            gemv_block(k, n, c0, x, b, out, add);
        }
    });
}

fn gemv_block(k: usize, n: usize, c0: usize, x: &[f32], b: &[f32], out: &mut [f32], add: Option<f32>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { gemv_block_avx2(k, n, c0, x, b, out, add) };
            return;
        }
    }
    gemv_block_portable(k, n, c0, x, b, out, add);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_block_avx2(k: usize, n: usize, c0: usize, x: &[f32], b: &[f32], out: &mut [f32], add: Option<f32>) {
    gemv_block_portable(k, n, c0, x, b, out, add);
}

#[inline(always)]
fn gemv_block_portable(k: usize, n: usize, c0: usize, x: &[f32], b: &[f32], out: &mut [f32], add: Option<f32>) {
    let mut acc = [0f32; GEMV_BLOCK];
    if out.len() == GEMV_BLOCK {
        for (r, &xv) in x[..k].iter().enumerate() {
            let row: &[f32; GEMV_BLOCK] = b[r * n + c0..][..GEMV_BLOCK].try_into().expect("a whole block");
            for (a, &w) in acc.iter_mut().zip(row) {
                *a += xv * w;
            }
        }
    } else {
        let cn = out.len();
        for (r, &xv) in x[..k].iter().enumerate() {
            for (a, &w) in acc[..cn].iter_mut().zip(&b[r * n + c0..][..cn]) {
                *a += xv * w;
            }
        }
    }
    match add {
        None => out.copy_from_slice(&acc[..out.len()]),
        Some(beta) => out.iter_mut().zip(&acc).for_each(|(o, a)| *o += beta * a),
    }
}

/// `out = x / sqrt(mean(x²) + eps) * w`, row by row.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let mean = xr.iter().map(|v| v * v).sum::<f32>() / h as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &x), &w) in or.iter_mut().zip(xr).zip(w) {
            *o = x * scale * w;
        }
    }
}

/// cos and sin of positions `past..past + seq` at each frequency, `[seq, d/2]` (f32 angles, as
/// the Burn path and transformers compute them).
pub(super) fn rope_tables(inv_freq: &[f64], past: usize, seq: usize) -> (Vec<f32>, Vec<f32>) {
    rope_at(inv_freq, &(past..past + seq).collect::<Vec<_>>())
}

/// [`rope_tables`] for the given positions, one entry each.
fn rope_at(inv_freq: &[f64], positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let angles: Vec<f32> = positions.iter().flat_map(|&p| inv_freq.iter().map(move |&f| p as f32 * f as f32)).collect();
    (angles.iter().map(|a| a.cos()).collect(), angles.iter().map(|a| a.sin()).collect())
}

/// Rotates pairs `(i, i + d/2)` of every head of every row (row `r` is position `r % seq`).
pub(super) fn rope(x: &mut [f32], seq: usize, heads: usize, d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    for (r, row) in x.chunks_exact_mut(heads * d).enumerate() {
        let (cos, sin) = (&cos[(r % seq) * half..][..half], &sin[(r % seq) * half..][..half]);
        for head in row.chunks_exact_mut(d) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}

struct Attention<'a> {
    batch: usize,
    seq: usize,
    /// Positions each batch row held before this pass.
    past: &'a [usize],
    heads: usize,
    kv_heads: usize,
    d: usize,
    cap: usize,
}

/// Causal grouped-query attention of `q` (`[batch·seq, heads·d]`, rotated) over the cached keys
/// and values of this block, into `out` (same layout as `q`). One (batch row, head) per task.
fn attention(g: &Attention<'_>, q: &[f32], kc: &[f32], vc: &[f32], out: &mut [f32]) {
    let rep = g.heads / g.kv_heads;
    let d = g.d;
    let scale = 1.0 / (d as f32).sqrt();
    let dst = SendPtr::new(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    let (wide, avx2) = (avx512_heads(d), avx2_heads(d));
    (0..g.batch * g.heads).into_par_iter().for_each(|unit| {
        let (b, head) = (unit / g.heads, unit % g.heads);
        let base = (b * g.kv_heads + head / rep) * g.cap * d;
        let mut scores = vec![0f32; g.past[b] + g.seq];
        for s in 0..g.seq {
            let row = b * g.seq + s;
            let at = (row * g.heads + head) * d;
            let qv = &q[at..at + d];
            let total = g.past[b] + s + 1;
            let (keys, values) = (&kc[base..base + total * d], &vc[base..base + total * d]);
            // SAFETY: each (row, head) owns out[at..at + d]; no other task writes it.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(at), d) };
            #[cfg(target_arch = "x86_64")]
            if wide {
                let scores = &mut scores[..total];
                // SAFETY: `avx512_heads` checked the CPU and the head size.
                unsafe {
                    match d / 16 {
                        1 => attend_avx512::<1>(qv, keys, values, scale, scores, o),
                        2 => attend_avx512::<2>(qv, keys, values, scale, scores, o),
                        3 => attend_avx512::<3>(qv, keys, values, scale, scores, o),
                        4 => attend_avx512::<4>(qv, keys, values, scale, scores, o),
                        5 => attend_avx512::<5>(qv, keys, values, scale, scores, o),
                        6 => attend_avx512::<6>(qv, keys, values, scale, scores, o),
                        7 => attend_avx512::<7>(qv, keys, values, scale, scores, o),
                        8 => attend_avx512::<8>(qv, keys, values, scale, scores, o),
                        _ => unreachable!("avx512_heads admits heads of 16 to 128 values"),
                    }
                }
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                let scores = &mut scores[..total];
                // SAFETY: `avx2_heads` checked the CPU and the head size.
                unsafe {
                    match d / 8 {
                        1 => attend_avx2::<1>(qv, keys, values, scale, scores, o),
                        2 => attend_avx2::<2>(qv, keys, values, scale, scores, o),
                        3 => attend_avx2::<3>(qv, keys, values, scale, scores, o),
                        4 => attend_avx2::<4>(qv, keys, values, scale, scores, o),
                        5 => attend_avx2::<5>(qv, keys, values, scale, scores, o),
                        6 => attend_avx2::<6>(qv, keys, values, scale, scores, o),
                        7 => attend_avx2::<7>(qv, keys, values, scale, scores, o),
                        8 => attend_avx2::<8>(qv, keys, values, scale, scores, o),
                        _ => unreachable!("avx2_heads admits heads of 8 to 64 values"),
                    }
                }
                continue;
            }
            attend(qv, keys, values, scale, &mut scores[..total], o);
        }
    });
}

/// One query's attention over `scores.len()` keys and values (rows of `d`), into `o`.
fn attend(qv: &[f32], keys: &[f32], values: &[f32], scale: f32, scores: &mut [f32], o: &mut [f32]) {
    let d = qv.len();
    let mut max = f32::NEG_INFINITY;
    for (j, score) in scores.iter_mut().enumerate() {
        *score = dot(qv, &keys[j * d..][..d]) * scale;
        max = max.max(*score);
    }
    let inv = (1.0 / super::fastexp::exp_shifted(scores, max, 1.0)) as f32;
    o.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (o, &v) in o.iter_mut().zip(&values[j * d..][..d]) {
            *o += p * v;
        }
    }
    o.iter_mut().for_each(|o| *o *= inv);
}

/// Whether [`attend_avx512`] takes heads of `d` on this CPU.
#[cfg(target_arch = "x86_64")]
fn avx512_heads(d: usize) -> bool {
    d > 0 && d.is_multiple_of(16) && d <= 128 && std::arch::is_x86_feature_detected!("avx512f")
}

/// [`attend`] in AVX-512 registers, for heads of `16·C` values: the query and the output's
/// sums over keys in `C` registers each, each score one register of partial products reduced
/// once. Baseline code ran it four floats at a time, a large share of 50 samples' decoding time.
///
/// # Safety
/// The CPU has AVX-512F; `qv.len()` is `16·C`; `keys` and `values` hold `scores.len()` rows
/// of `16·C`; `o` holds `16·C`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_avx512<const C: usize>(
    qv: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = 16 * C;
    // SAFETY (every load and store): the bounds in the function's contract.
    unsafe {
        let q: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(qv.as_ptr().add(16 * c)));
        let mut max = f32::NEG_INFINITY;
        for (j, score) in scores.iter_mut().enumerate() {
            let k = keys.as_ptr().add(j * d);
            let mut acc = _mm512_mul_ps(q[0], _mm512_loadu_ps(k));
            #[allow(clippy::needless_range_loop)] // an index over a const range unrolls
            for c in 1..C {
                acc = _mm512_fmadd_ps(q[c], _mm512_loadu_ps(k.add(16 * c)), acc);
            }
            *score = _mm512_reduce_add_ps(acc) * scale;
            max = max.max(*score);
        }
        let inv = _mm512_set1_ps((1.0 / super::fastexp::exp_shifted(scores, max, 1.0)) as f32);
        let mut acc = [_mm512_setzero_ps(); C];
        for (j, &p) in scores.iter().enumerate() {
            let (p, v) = (_mm512_set1_ps(p), values.as_ptr().add(j * d));
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(p, _mm512_loadu_ps(v.add(16 * c)), *acc);
            }
        }
        for (c, &acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), _mm512_mul_ps(acc, inv));
        }
    }
}

/// Whether [`attend_avx2`] takes heads of `d` on this CPU (asked where [`attend_avx512`] does
/// not take them).
#[cfg(target_arch = "x86_64")]
fn avx2_heads(d: usize) -> bool {
    d > 0
        && d.is_multiple_of(8)
        && d <= 64
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// [`attend_avx512`] in AVX2 registers, for heads of `8·C` values (at most 64: the query and the
/// output's sums take 16 of the 16 registers' worth between them, in turn).
///
/// # Safety
/// The CPU has AVX2 and FMA; `qv.len()` is `8·C`; `keys` and `values` hold `scores.len()` rows
/// of `8·C`; `o` holds `8·C`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<const C: usize>(
    qv: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = 8 * C;
    // SAFETY (every load and store): the bounds in the function's contract.
    unsafe {
        let q: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(qv.as_ptr().add(8 * c)));
        let mut max = f32::NEG_INFINITY;
        for (j, score) in scores.iter_mut().enumerate() {
            let k = keys.as_ptr().add(j * d);
            let mut acc = _mm256_mul_ps(q[0], _mm256_loadu_ps(k));
            #[allow(clippy::needless_range_loop)] // an index over a const range unrolls
            for c in 1..C {
                acc = _mm256_fmadd_ps(q[c], _mm256_loadu_ps(k.add(8 * c)), acc);
            }
            let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            *score = _mm_cvtss_f32(s) * scale;
            max = max.max(*score);
        }
        let inv = _mm256_set1_ps((1.0 / super::fastexp::exp_shifted(scores, max, 1.0)) as f32);
        let mut acc = [_mm256_setzero_ps(); C];
        for (j, &p) in scores.iter().enumerate() {
            let (p, v) = (_mm256_set1_ps(p), values.as_ptr().add(j * d));
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(8 * c)), *acc);
            }
        }
        for (c, &acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.as_mut_ptr().add(8 * c), _mm256_mul_ps(acc, inv));
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y = x Wᵀ` through a quantised weight, for `x` `[rows, in]` on `Flex`.
pub(crate) fn quantised_linear(q: &QuantMatrix, x: FlexTensor, inputs: Inputs) -> FlexTensor {
    use burn::tensor::TensorMetadata;
    let [rows, _] = x.shape().dims();
    let mut y = vec![0f32; rows * q.rows()];
    q.matmul(rows, &f32s(&x), &mut y, inputs);
    FlexTensor::from_data(TensorData::new(y, [rows, q.rows()]))
}

type Ad = burn::backend::Autodiff<Flex>;
type AdTensor = <Ad as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// `x Wᵀ` through the frozen quantised weight `q` on the backend `cpu` says `B` is (see
/// [`super::quantised_product`]).
pub(crate) fn quantised_product<B: Backend>(
    q: &std::sync::Arc<QuantMatrix>,
    x: Tensor<B, 2>,
    cpu: Option<Cpu>,
    inputs: Inputs,
) -> Tensor<B, 2> {
    match cpu {
        Some(Cpu::Flex) => wrap::<B, _, 2>(quantised_linear(q, prim::<B, FlexTensor, 2>(x), inputs)),
        Some(Cpu::Autodiff) => wrap::<B, _, 2>(autodiff_quantised(q, prim::<B, AdTensor, 2>(x))),
        None => {
            let w = Tensor::<B, 2>::from_data(TensorData::new(q.to_in_out(), [q.cols(), q.rows()]), &x.device());
            x.matmul(w)
        }
    }
}

#[derive(Debug)]
struct QuantisedOp;

impl burn::backend::autodiff::ops::Backward<Flex, 1> for QuantisedOp {
    type State = (std::sync::Arc<QuantMatrix>, usize);

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, 1>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let (q, rows) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = &ops.parents[0] {
            let dx = q.matmul_transposed(rows, &f32s(&dy));
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [rows, q.cols()])));
        }
    }
}

fn autodiff_quantised(q: &std::sync::Arc<QuantMatrix>, x: AdTensor) -> AdTensor {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    use burn::tensor::TensorMetadata;
    let [rows, _] = x.primitive.shape().dims();
    // Training differentiates the exact product, so one row is not rounded to 8 bits here.
    let y = quantised_linear(q, x.primitive.clone(), Inputs::Exact);
    match QuantisedOp.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((q.clone(), rows), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

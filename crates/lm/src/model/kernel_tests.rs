//! Pins the CPU kernels (model/kernels/cpu.rs, quant.rs, train_ops.rs) to the Burn path and to f32 arithmetic: values and LoRA gradients.
//! It must compare against independent computations (Burn's ops, plain f64 loops), never against the kernels themselves.

use super::tests::{random_tensors, tiny_config, write_gguf, write_gguf_as, Tensors};
use super::*;
use crate::gguf::{dequantize, GgmlType, GgufFile};
use crate::lora::{attach, LoraConfig, Target};
use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use half::f16;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOKENS: [u32; 7] = [3, 17, 250, 9, 9, 101, 0];

fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| scale * ((rng.next_u32() >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0)).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `model` (sharing its tensors) with the CPU kernels on or off, its other options kept.
fn using<B: burn::tensor::backend::Backend>(model: &Llama<B>, cpu: bool) -> Llama<B> {
    model.clone().with_kernels(Kernels { cpu, ..model.kernels() })
}

fn values<const D: usize, B: burn::tensor::backend::Backend>(t: burn::tensor::Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// Adapters of rank 4 on every projection with random (non-zero) `B`, so they change the output.
fn with_adapters<B: burn::tensor::backend::Backend>(model: Llama<B>, seed: u64) -> Llama<B> {
    let cfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: Target::ALL.to_vec() };
    let mut model = attach(model, &cfg, seed).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let device = model.embed.val().device();
    for block in &mut model.blocks {
        let l = &mut block.lora;
        for slot in [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down] {
            let adapter = slot.as_mut().unwrap();
            let [r, out] = adapter.b.dims();
            let b = burn::tensor::TensorData::new(uniform(&mut rng, r * out, 0.3), [r, out]);
            adapter.b = Param::from_data(b, &device);
        }
    }
    model
}

/// Logits of a prefill, a step of three rows repeated from it, two rows selected from those,
/// and a two-token step of the pair: everything the generator does with a cache.
fn cache_walk(model: &Llama<Flex>, kernels: bool) -> Vec<f32> {
    let model = &using(model, kernels);
    {
        let mut cache = KvCache::new(&model.config);
        let mut out = values(model.forward_all(&TOKENS[..4], 1, &mut cache).unwrap());
        assert_eq!(cache.flat.is_some(), kernels, "the kernels ran iff they were on");
        let mut three = cache.repeat_rows(3);
        out.extend(values(model.forward_last(&[5, 6, 7], 3, &mut three).unwrap()));
        let mut two = three.select_rows(&[2, 0]);
        assert_eq!(two.batch(), 2);
        out.extend(values(model.forward_last(&[8, 9], 2, &mut two).unwrap()));
        out.extend(values(model.forward_all(&[1, 2, 3, 4], 2, &mut two).unwrap()));
        assert_eq!(two.len(), 8);
        out
    }
}

#[test]
fn cpu_kernels_give_the_burn_path_s_logits_through_a_cache() {
    for (tie, bias, adapters) in [(false, false, false), (true, true, false), (false, true, true)] {
        let mut c = tiny_config(268);
        c.tie_word_embeddings = tie;
        c.attention_bias = bias;
        let model = weights::build::<Flex>(c.clone(), &random_tensors(&c, 11), &Default::default(), false).unwrap();
        let model = if adapters { with_adapters(model, 5) } else { model };
        let (ours, burn) = (cache_walk(&model, true), cache_walk(&model, false));
        let d = max_diff(&ours, &burn);
        assert!(d < 1e-4, "tie={tie} bias={bias} adapters={adapters}: kernels differ from Burn by {d}");
    }
}

#[test]
fn the_kernel_cache_grows_past_its_first_allocation() {
    // 64 positions are allocated first; decode past them one token at a time.
    let mut c = tiny_config(268);
    c.max_position_embeddings = 200;
    let model = weights::build::<Flex>(c.clone(), &random_tensors(&c, 2), &Default::default(), false).unwrap();
    let tokens: Vec<u32> = (0..80).map(|i| (i * 37 % 268) as u32).collect();
    let step = |kernels: bool| {
        let model = using(&model, kernels);
        let mut cache = KvCache::new(&c);
        let mut out = values(model.forward_last(&tokens[..60], 1, &mut cache).unwrap());
        for &t in &tokens[60..] {
            out.extend(values(model.forward_last(&[t], 1, &mut cache).unwrap()));
        }
        out
    };
    let d = max_diff(&step(true), &step(false));
    assert!(d < 1e-4, "kernels differ from Burn by {d} after growing the cache");
}

#[test]
fn one_row_products_equal_plain_sums() {
    // Wide enough to take the one-row kernel (k·n ≥ 2¹⁶), with a last block of columns cut short.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for (k, n) in [(300, 333), (64, 1024 + 17), (576, 128)] {
        let x = uniform(&mut rng, k, 1.0);
        let b = uniform(&mut rng, k * n, 1.0);
        let want: Vec<f32> =
            (0..n).map(|c| (0..k).map(|r| x[r] as f64 * b[r * n + c] as f64).sum::<f64>() as f32).collect();
        let mut y = vec![f32::NAN; n];
        super::kernels::cpu::matmul((1, k, n), &x, &b, &mut y, None);
        let d = max_diff(&y, &want);
        assert!(d < 1e-4, "[1, {k}] x [{k}, {n}]: differs by {d}");
        let start = uniform(&mut rng, n, 1.0);
        let mut y = start.clone();
        super::kernels::cpu::matmul((1, k, n), &x, &b, &mut y, Some(0.5));
        let want: Vec<f32> = start.iter().zip(&want).map(|(s, w)| s + 0.5 * w).collect();
        let d = max_diff(&y, &want);
        assert!(d < 1e-4, "[1, {k}] x [{k}, {n}] added at 0.5: differs by {d}");
    }
}

#[test]
fn products_of_row_major_operands_equal_plain_sums() {
    // One thread's product and column blocks over threads (the largest shapes), widths that end
    // inside a vector, and a left operand with a row stride wider than its row.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (m, k, n) in [(1, 5, 7), (13, 200, 40), (50, 577, 1536 + 9), (128, 64, 100), (2, 400, 33)] {
        let lda = k + 3;
        let a = uniform(&mut rng, m * lda, 1.0);
        let b = uniform(&mut rng, k * n, 1.0);
        let plain = |i: usize, j: usize| (0..k).map(|r| a[i * lda + r] as f64 * b[r * n + j] as f64).sum::<f64>();
        let want: Vec<f32> = (0..m * n).map(|e| plain(e / n, e % n) as f32).collect();
        let mut y = vec![f32::NAN; m * n];
        super::kernels::cpu::product((m, n, k), &mut y, false, 1.0, &a, (lda, 1), &b, (n, 1));
        let d = max_diff(&y, &want);
        assert!(d < 1e-3, "[{m}, {k}] x [{k}, {n}]: differs by {d}");
        let start = uniform(&mut rng, m * n, 1.0);
        let mut y = start.clone();
        super::kernels::cpu::product((m, n, k), &mut y, true, -0.5, &a, (lda, 1), &b, (n, 1));
        let added: Vec<f32> = start.iter().zip(&want).map(|(s, w)| s - 0.5 * w).collect();
        let d = max_diff(&y, &added);
        assert!(d < 1e-3, "[{m}, {k}] x [{k}, {n}] added at -0.5: differs by {d}");
        let mut y = vec![f32::NAN; m * n];
        super::kernels::cpu::product((m, n, k), &mut y, false, 0.25, &a, (lda, 1), &b, (n, 1));
        let want: Vec<f32> = want.iter().map(|w| 0.25 * w).collect();
        let d = max_diff(&y, &want);
        assert!(d < 1e-3, "[{m}, {k}] x [{k}, {n}] scaled by 0.25: differs by {d}");
    }
}

#[test]
fn products_through_packed_panels_equal_plain_sums() {
    // Every row count a decoding step takes (and 11: two groups of rows), widths that end inside
    // a panel or a group of panels, and a single panel.
    use super::kernels::panels::Panels;
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    // Both widths (AVX-512's and AVX2's kernels where the CPU has them) and an odd one (the
    // portable loop), and the width this CPU takes.
    let shapes = [(5, 7), (64, 8), (200, 40 + 3), (577, 1536 + 9), (96, 4 * 16 * 5 + 8), (0, 9)];
    for ((k, n), nr) in shapes.into_iter().flat_map(|s| [(s, 16), (s, 8), (s, 3), (s, 0)]) {
        let b = uniform(&mut rng, k * n, 1.0);
        let panels = if nr == 0 { Panels::pack(&b, k, n) } else { Panels::pack_with(&b, k, n, nr) };
        for m in (1..=8).chain([11]) {
            let a = uniform(&mut rng, m * k, 1.0);
            let plain = |i: usize, j: usize| (0..k).map(|r| a[i * k + r] as f64 * b[r * n + j] as f64).sum::<f64>();
            let want: Vec<f32> = (0..m * n).map(|e| plain(e / n, e % n) as f32).collect();
            let mut y = vec![f32::NAN; m * n];
            panels.matmul(m, &a, &mut y, None);
            let d = max_diff(&y, &want);
            assert!(d < 1e-3, "[{m}, {k}] x [{k}, {n}] through panels of {nr}: differs by {d}");
            let start = uniform(&mut rng, m * n, 1.0);
            let mut y = start.clone();
            panels.matmul(m, &a, &mut y, Some(-0.5));
            let added: Vec<f32> = start.iter().zip(&want).map(|(s, w)| s - 0.5 * w).collect();
            let d = max_diff(&y, &added);
            assert!(d < 1e-3, "[{m}, {k}] x [{k}, {n}] through panels of {nr}, added at -0.5: differs by {d}");
            // Every row gets the bits it gets alone, whatever rows share its group: a reply is
            // the same alone or in a batch.
            let mut y = vec![f32::NAN; m * n];
            panels.matmul(m, &a, &mut y, None);
            for (r, row) in y.chunks_exact(n).enumerate() {
                let mut alone = vec![f32::NAN; n];
                panels.matmul(1, &a[r * k..][..k], &mut alone, None);
                assert!(
                    row.iter().zip(&alone).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "row {r} of {m}, panels of {nr}"
                );
            }
        }
    }
}

/// Logits of a batch of three rows decoding four tokens after a prefill (the steps go through the
/// panels when they are on).
fn three_rows_decoding(model: &Llama<Flex>) -> Vec<f32> {
    let mut cache = KvCache::new(&model.config);
    let mut out = values(model.forward_all(&TOKENS[..5], 1, &mut cache).unwrap());
    let mut three = cache.repeat_rows(3);
    for step in 0..4u32 {
        out.extend(values(model.forward_last(&[step, 40 + step, 200 - step], 3, &mut three).unwrap()));
    }
    out
}

#[test]
fn decoding_steps_through_panels_follow_the_weights_they_read() {
    let mut c = tiny_config(268);
    c.tie_word_embeddings = false;
    let model = weights::build::<Flex>(c.clone(), &random_tensors(&c, 21), &Default::default(), false).unwrap();
    let plain = model.clone().with_kernels(Kernels { panels: false, ..model.kernels() });
    assert!(model.kernels().panels, "panels are on by default");
    let (ours, gemm) = (three_rows_decoding(&model), three_rows_decoding(&plain));
    let d = max_diff(&ours, &gemm);
    assert!(d < 1e-4, "decoding through panels differs from gemm by {d}");
    // Every projection and the output head were packed once, and a clone shares them.
    let packed = model.panels.packed_values();
    let weights = c.n_layers
        * (c.hidden_size * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
            + c.n_heads * c.head_dim * c.hidden_size
            + 3 * c.hidden_size * c.intermediate_size)
        + c.hidden_size * c.vocab_size;
    assert!(packed >= weights && packed < weights + weights / 2, "{packed} values packed for {weights} weights");
    three_rows_decoding(&model.clone());
    assert_eq!(model.panels.packed_values(), packed, "a clone packed its weights again");

    // New weights (a merge, a load) are read, never the panels of the old ones; the old panels go
    // once nothing but the cache holds their weights.
    let before = ours;
    let mut changed = model.clone();
    let device = Default::default();
    for block in &mut changed.blocks {
        let [k, n] = block.down.weight.dims();
        let w = burn::tensor::TensorData::new(vec![0.01f32; k * n], [k, n]);
        block.down.weight = Param::from_data(w, &device);
    }
    drop((model, plain));
    let changed_plain = changed.clone().with_kernels(Kernels { panels: false, ..changed.kernels() });
    let (ours, gemm) = (three_rows_decoding(&changed), three_rows_decoding(&changed_plain));
    let d = max_diff(&ours, &gemm);
    assert!(d < 1e-4, "after new weights, decoding through panels differs from gemm by {d}");
    assert!(max_diff(&ours, &before) > 1e-3, "the new weights changed nothing");
    assert_eq!(changed.panels.packed_values(), packed, "the old weights' panels were kept beside the new");
}

// ---- quantised weights ----

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// Random blocks of `ty` for a `[rows, cols]` matrix, with sane scales (random f16 bytes could be NaN).
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (bl, bb) = (ty.block_len() as usize, ty.block_bytes() as usize);
    let mut out = vec![];
    for _ in 0..rows * cols / bl {
        let mut b: Vec<u8> = (0..bb).map(|_| rng.next_u32() as u8).collect();
        let mut scale = |at: usize, x: f32| b[at..at + 2].copy_from_slice(&f16_bytes(x));
        match ty {
            GgmlType::Q8_0 | GgmlType::Q4_0 => scale(0, 0.01),
            GgmlType::Q4_1 => {
                scale(0, 0.02);
                scale(2, -0.1)
            }
            GgmlType::Q4_K => {
                scale(0, 0.003);
                scale(2, 0.002)
            }
            GgmlType::Q6_K => scale(208, 0.001),
            _ => unreachable!("a quantised type"),
        }
        out.extend(b);
    }
    out
}

#[test]
fn quantised_products_equal_products_with_the_dequantised_matrix() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q6_K] {
        // 70 rows: a whole tile of 64 and a partial one.
        let (rows, cols) = (70, 2 * ty.block_len() as usize);
        let bytes = random_blocks(ty, rows, cols, &mut rng);
        let w = dequantize(ty, &bytes).unwrap();
        let q = QuantMatrix::new(ty, rows, cols, bytes).unwrap();
        assert_eq!(q.to_out_in(), w);
        for m in [1, 3] {
            let x = uniform(&mut rng, m * cols, 1.0);
            let mut y = vec![0.0; m * rows];
            q.matmul(m, &x, &mut y, Inputs::Exact);
            let want: Vec<f32> = (0..m * rows)
                .map(|i| {
                    let (a, r) = (i / rows, i % rows);
                    (0..cols).map(|c| x[a * cols + c] as f64 * w[r * cols + c] as f64).sum::<f64>() as f32
                })
                .collect();
            let scale = want.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
            let d = max_diff(&y, &want);
            assert!(d < 1e-5 * scale * 10.0, "{ty} m={m}: product differs by {d} (values up to {scale})");

            let dy = uniform(&mut rng, m * rows, 1.0);
            let dx = q.matmul_transposed(m, &dy);
            let want: Vec<f32> = (0..m * cols)
                .map(|i| {
                    let (a, c) = (i / cols, i % cols);
                    (0..rows).map(|r| dy[a * rows + r] as f64 * w[r * cols + c] as f64).sum::<f64>() as f32
                })
                .collect();
            let scale = want.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
            let d = max_diff(&dx, &want);
            assert!(d < 1e-5 * scale * 10.0, "{ty} m={m}: input gradient differs by {d} (values up to {scale})");
        }
    }
}

#[test]
fn products_with_8_bit_inputs_stay_within_half_a_step_of_the_input_scale() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        // 70 outputs: four whole groups of 16 for the VNNI kernel and a partial fifth, alone.
        let (rows, cols) = (70, 8 * 32);
        let bytes = random_blocks(ty, rows, cols, &mut rng);
        let w = dequantize(ty, &bytes).unwrap();
        let q = QuantMatrix::new(ty, rows, cols, bytes.clone()).unwrap();
        // One stream, and batches that the VNNI kernel tiles as 2, 3 + 4 and 9 tiles of 5 or 6.
        for m in [1, 2, 7, 50] {
            // Inputs of very different sizes per block, one block all zeros, one value alone.
            let x: Vec<f32> = (0..m)
                .flat_map(|i| {
                    let mut x: Vec<f32> = (0..cols)
                        .map(|c| (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * (1 + (c / 32 + i) % 8) as f32)
                        .collect();
                    x[64..128].fill(0.0);
                    x[100] = -3.0 + i as f32 * 0.1;
                    x
                })
                .collect();
            let mut exact = vec![0.0; m * rows];
            q.matmul(m, &x, &mut exact, Inputs::Exact);
            let mut ys = vec![];
            for vnni in [true, false] {
                let mut y = vec![f32::NAN; m * rows];
                q.matmul(m, &x, &mut y, Inputs::Int8 { vnni });
                ys.push(y);
            }
            for (i, x) in x.chunks_exact(cols).enumerate() {
                let xq = super::kernels::quant::Q8Input::new(x);
                let rounded = xq.dequantised();
                for r in 0..rows {
                    let row = &w[r * cols..][..cols];
                    let at = i * rows + r;
                    // What the integer product computes: the weight times the rounded input,
                    // except that Q4_1's minimum multiplies the exact input.
                    let min = |c: usize| {
                        let block = &bytes[(r * cols / 32 + c / 32) * ty.block_bytes() as usize..];
                        if ty == GgmlType::Q4_1 {
                            f16::from_le_bytes([block[2], block[3]]).to_f32()
                        } else {
                            0.0
                        }
                    };
                    let want: f64 = (0..cols)
                        .map(|c| (row[c] - min(c)) as f64 * rounded[c] as f64 + min(c) as f64 * x[c] as f64)
                        .sum();
                    let scale = row.iter().zip(x).map(|(w, x)| (w * x).abs()).sum::<f32>().max(1e-3);
                    for (y, kernel) in ys.iter().zip(["VNNI", "per-row"]) {
                        let got = y[at];
                        assert!(
                            ((got as f64 - want).abs() as f32) < 1e-5 * scale,
                            "{ty} m={m} {kernel}, input {i} output {r}: {got} against {want}"
                        );
                    }
                    // And the rounding's error bound: half a step of each block's scale per value.
                    let bound: f32 = (0..cols)
                        .map(|c| {
                            (row[c] - min(c)).abs() * x[c / 32 * 32..][..32].iter().fold(0f32, |m, v| m.max(v.abs()))
                                / 254.0
                        })
                        .sum();
                    let err = (ys[0][at] - exact[at]).abs();
                    assert!(
                        err <= bound * 1.001 + 1e-5 * scale,
                        "{ty} m={m} input {i} output {r}: off the exact product by {err}, bound {bound}"
                    );
                }
            }
            assert!(ys[0] != exact, "{ty} m={m}: the 8-bit path did not run");
        }
    }
}

#[test]
fn a_malformed_quantised_matrix_is_refused() {
    let e = QuantMatrix::new(GgmlType::Q8_0, 2, 48, vec![0; 2 * 34]).unwrap_err();
    assert!(e.contains("not whole Q8_0 blocks"), "{e}");
    let e = QuantMatrix::new(GgmlType::Q8_0, 2, 32, vec![0; 34]).unwrap_err();
    assert!(e.contains("which needs 68"), "{e}");
    let e = QuantMatrix::new(GgmlType::F16, 2, 32, vec![0; 128]).unwrap_err();
    assert!(e.contains("not a block-quantised type"), "{e}");
}

/// Rounds `values` (a whole number of blocks of 32) to Q8_0, Q4_0 or Q4_1 blocks.
fn quantise(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    let mut out = vec![];
    for block in values.chunks_exact(32) {
        let (lo, hi) = block.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let amax = lo.abs().max(hi.abs()).max(1e-6);
        match ty {
            GgmlType::Q8_0 => {
                let d = amax / 127.0;
                out.extend(f16_bytes(d));
                out.extend(block.iter().map(|&v| (v / d).round().clamp(-127.0, 127.0) as i8 as u8));
            }
            GgmlType::Q4_0 => {
                let d = amax / 7.0;
                out.extend(f16_bytes(d));
                let q = |v: f32| ((v / d).round() + 8.0).clamp(0.0, 15.0) as u8;
                out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
            }
            GgmlType::Q4_1 => {
                let d = ((hi - lo) / 15.0).max(1e-6);
                out.extend(f16_bytes(d));
                out.extend(f16_bytes(lo));
                let q = |v: f32| ((v - lo) / d).round().clamp(0.0, 15.0) as u8;
                out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
            }
            _ => unreachable!("a type this test writes"),
        }
    }
    out
}

/// A tiny checkpoint whose projections are Q4_0 (q), Q4_1 (k) and Q8_0 (the others and the
/// output), the rest f32. Its intermediate size is a whole number of blocks.
fn quantised_gguf(seed: u64) -> (LlamaConfig, Vec<u8>) {
    let mut c = tiny_config(268);
    c.intermediate_size = 64;
    let t: Tensors = random_tensors(&c, seed);
    let bytes = write_gguf_as(crate::gguf::write::GgufWriter::new(), &c, &t, |name, values| {
        let ty = if name.contains("q_proj") {
            GgmlType::Q4_0
        } else if name.contains("k_proj") {
            GgmlType::Q4_1
        } else if name.ends_with("_proj.weight") || name == "lm_head.weight" {
            GgmlType::Q8_0
        } else {
            return None;
        };
        Some((ty, quantise(ty, values)))
    })
    .finish();
    (c, bytes)
}

fn loaded<B: burn::tensor::backend::Backend>(bytes: &[u8], quantised_base: bool) -> Llama<B> {
    loaded_with(bytes, quantised_base, Kernels::default())
}

fn loaded_with<B: burn::tensor::backend::Backend>(bytes: &[u8], quantised_base: bool, kernels: Kernels) -> Llama<B> {
    let file = GgufFile::from_bytes(bytes.to_vec()).unwrap();
    load_gguf_with::<B>(&file, &Default::default(), &LoadOptions { quantised_base, kernels }).unwrap()
}

/// The default kernels with products through a quantised base exact (no 8-bit inputs).
fn exact() -> Kernels {
    Kernels { int8_activations: false, ..Kernels::default() }
}

#[test]
fn a_quantised_base_gives_the_logits_of_its_dequantised_twin() {
    // Dequantised products: several rows take 8-bit inputs by default.
    {
        let (_, bytes) = quantised_gguf(9);
        let (f32_model, q_model) =
            (loaded_with::<Flex>(&bytes, false, exact()), loaded_with::<Flex>(&bytes, true, exact()));
        assert!(q_model.has_quantised_base() && !f32_model.has_quantised_base());
        assert!(q_model.quantised_head.is_some() && f32_model.quantised_head.is_none());
        assert!(q_model.blocks.iter().all(|b| Target::ALL.iter().all(|&t| b.base(t).1.is_some())));
        let reference = cache_walk(&f32_model, false);
        for kernels in [true, false] {
            // The Burn path of a quantised base still multiplies by the quantised weights.
            let got = {
                let mut cache = KvCache::new(&q_model.config);
                values(using(&q_model, kernels).forward_all(&TOKENS, 1, &mut cache).unwrap())
            };
            let want = {
                let mut cache = KvCache::new(&f32_model.config);
                values(using(&f32_model, false).forward_all(&TOKENS, 1, &mut cache).unwrap())
            };
            let d = max_diff(&got, &want);
            assert!(d < 1e-4, "kernels={kernels}: quantised base differs from its f32 twin by {d}");
        }
        // A quantised base always decodes through the kernels, with adapters too.
        let q_adapted = with_adapters(q_model, 4);
        let f_adapted = with_adapters(f32_model, 4);
        let d = max_diff(&cache_walk(&q_adapted, true), &cache_walk(&f_adapted, false));
        assert!(d < 1e-4, "adapted quantised base differs from its f32 twin by {d}");
        assert!(reference.len() > 100);
    }
}

/// Logits of a prefill and then of single-token steps: one decoding stream, whose products have
/// one input row.
fn one_stream(model: &Llama<Flex>) -> Vec<f32> {
    streams(model, &[TOKENS])
}

/// Decoding several streams together: each row's first three tokens at once, then one at a
/// time; the logits of each step, row by row.
fn streams(model: &Llama<Flex>, rows: &[[u32; 7]]) -> Vec<f32> {
    let batch = rows.len();
    let mut cache = KvCache::new(&model.config);
    let prompt: Vec<u32> = rows.iter().flat_map(|r| r[..3].iter().copied()).collect();
    let mut out = vec![values(model.forward_last(&prompt, batch, &mut cache).unwrap())];
    for step in 3..7 {
        let tokens: Vec<u32> = rows.iter().map(|r| r[step]).collect();
        out.push(values(model.forward_last(&tokens, batch, &mut cache).unwrap()));
    }
    out.concat()
}

#[test]
fn decoding_on_a_quantised_base_is_exact_or_close_with_8_bit_inputs_alone_or_batched() {
    let (_, bytes) = quantised_gguf(11);
    let (f32_model, q_model) = (loaded::<Flex>(&bytes, false), loaded::<Flex>(&bytes, true));
    let want = one_stream(&using(&f32_model, false));
    let exact = one_stream(&q_model.clone().with_kernels(exact()));
    let d = max_diff(&exact, &want);
    assert!(d < 1e-4, "one stream on the quantised base without 8-bit inputs differs by {d}");
    let rounded = one_stream(&q_model);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max_diff(&rounded, &want);
    assert!(d > 0.0 && d < 0.03 * scale, "8-bit inputs move the logits by {d} (values up to {scale})");
    // A batch gives each stream what it gives alone: bit for bit where the CPU has the VNNI
    // kernel (each row's sums are its own), else to float rounding (one-row dot products).
    let rows = [TOKENS, [7, 1, 44, 2, 250, 3, 3], [0, 0, 0, 9, 8, 7, 6]];
    let vocab = q_model.config.vocab_size;
    let together = streams(&q_model, &rows);
    for (i, row) in rows.iter().enumerate() {
        let alone = streams(&q_model, &[*row]);
        let mine: Vec<f32> = together.chunks_exact(vocab).skip(i).step_by(rows.len()).flatten().copied().collect();
        let d = max_diff(&mine, &alone);
        let tolerance = if super::kernels::vnni::Packed::available() { 0.0 } else { 1e-5 * scale };
        assert!(d <= tolerance, "stream {i} decoded in a batch differs from alone by {d}");
    }
}

#[test]
fn lora_gradients_on_a_quantised_base_equal_those_on_the_f32_base() {
    type Ad = Autodiff<Flex>;
    let (c, bytes) = quantised_gguf(10);
    let weights = uniform(&mut ChaCha8Rng::seed_from_u64(1), TOKENS.len() * c.vocab_size, 1.0);
    let grads = |quantised: bool| -> Vec<Vec<f32>> {
        let model = with_adapters(loaded::<Ad>(&bytes, quantised), 6);
        let mut cache = KvCache::new(&model.config);
        let logits = model.forward_all(&TOKENS, 1, &mut cache).unwrap();
        let w = burn::tensor::Tensor::<Ad, 3>::from_data(
            burn::tensor::TensorData::new(weights.clone(), [1, TOKENS.len(), c.vocab_size]),
            &Default::default(),
        );
        let g = (logits * w).sum().backward();
        lora_grads(&model, &g)
    };
    let (q, f) = (grads(true), grads(false));
    for (i, (q, f)) in q.iter().zip(&f).enumerate() {
        let scale = f.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
        let d = max_diff(q, f);
        assert!(d < 1e-4 * scale, "gradient {i}: quantised base differs by {d} (values up to {scale})");
    }
}

#[test]
fn a_quantised_base_needs_quantised_weights() {
    let c = tiny_config(268);
    let bytes = write_gguf(crate::gguf::write::GgufWriter::new(), &c, &random_tensors(&c, 1)).finish();
    let file = GgufFile::from_bytes(bytes).unwrap();
    let options = LoadOptions { quantised_base: true, ..LoadOptions::default() };
    let e = load_gguf_with::<Flex>(&file, &Default::default(), &options).unwrap_err();
    assert!(e.to_string().contains("no block-quantised projection weights"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = Checkpoint::<Flex>::open_with(dir.path(), &Default::default(), &options).err().unwrap();
    assert!(e.to_string().contains("needs a GGUF file"), "{e}");
}

#[test]
fn merging_onto_a_quantised_base_gives_the_f32_merge() {
    // Dequantised products: several rows take 8-bit inputs by default.
    {
        let (_, bytes) = quantised_gguf(12);
        let q = crate::lora::merge(with_adapters(loaded_with::<Flex>(&bytes, true, exact()), 8));
        let f = crate::lora::merge(with_adapters(loaded_with::<Flex>(&bytes, false, exact()), 8));
        let run = |m: &Llama<Flex>| {
            let mut cache = KvCache::new(&m.config);
            values(m.forward_all(&TOKENS, 1, &mut cache).unwrap())
        };
        let d = max_diff(&run(&q), &run(&f));
        assert!(d < 1e-4, "merged quantised base differs by {d}");
    }
}

/// Every adapter's `A` and `B` gradients in `g`, block by block, projection by projection.
fn lora_grads(
    model: &Llama<Autodiff<Flex>>,
    g: &<Autodiff<Flex> as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<Vec<f32>> {
    let mut out = vec![];
    for block in &model.blocks {
        for t in Target::ALL {
            let a = block.lora.get(t).unwrap();
            out.push(values(a.a.val().grad(g).expect("A has a gradient")));
            out.push(values(a.b.val().grad(g).expect("B has a gradient")));
        }
    }
    out
}

/// The loss of `model` over two rows of [`TOKENS`] with some positions ignored, scaled by 0.3
/// (so the backward pass starts from a gradient other than 1), and its LoRA gradients: through
/// `Llama::loss` with the fused training operations (`fused`), or through the logits, Burn's
/// log-softmax and Burn's ops everywhere. Dropout draws from the same seed either way.
fn loss_and_lora_grads(model: &Llama<Autodiff<Flex>>, fused: bool) -> (f32, Vec<Vec<f32>>) {
    crate::lora::seed_dropout(5, 1);
    if !fused {
        return burn_loss_and_lora_grads(&using(model, false));
    }
    loss_and_lora_grads_by(model, true)
}

fn burn_loss_and_lora_grads(model: &Llama<Autodiff<Flex>>) -> (f32, Vec<Vec<f32>>) {
    loss_and_lora_grads_by(model, false)
}

fn loss_and_lora_grads_by(model: &Llama<Autodiff<Flex>>, fused: bool) -> (f32, Vec<Vec<f32>>) {
    use super::loss::{causal_lm_loss, IGNORE};
    let tokens: Vec<u32> = TOKENS.iter().chain(TOKENS.iter().rev()).copied().collect();
    let mut labels: Vec<i64> = tokens.iter().skip(1).map(|&t| t as i64).chain([IGNORE]).collect();
    for at in [0, 1, 8] {
        labels[at] = IGNORE;
    }
    let (loss, counted) = if fused {
        model.loss(&tokens, 2, &labels).unwrap()
    } else {
        let logits = model.forward_all(&tokens, 2, &mut KvCache::new(&model.config)).unwrap();
        causal_lm_loss(logits, &labels)
    };
    assert_eq!(counted, labels.iter().filter(|&&l| l != IGNORE).count());
    let value = values(loss.clone())[0];
    let g = loss.mul_scalar(0.3).backward();
    (value, lora_grads(model, &g))
}

#[test]
fn the_training_loss_equals_burn_s_log_softmax_with_its_lora_gradients() {
    let (_, bytes) = quantised_gguf(12);
    for (quantised, dropout) in [(false, 0.0), (true, 0.0), (false, 0.2), (true, 0.2)] {
        let mut model = with_adapters(loaded::<Autodiff<Flex>>(&bytes, quantised), 7);
        for block in &mut model.blocks {
            for t in Target::ALL {
                block.lora.slot(t).as_mut().unwrap().dropout = dropout;
            }
        }
        let (fused, fused_grads) = loss_and_lora_grads(&model, true);
        let (burn, burn_grads) = loss_and_lora_grads(&model, false);
        assert!(
            (fused - burn).abs() < 1e-5 * burn.abs().max(1.0),
            "quantised {quantised}, dropout {dropout}: loss {fused} vs {burn}"
        );
        for (i, (a, b)) in fused_grads.iter().zip(&burn_grads).enumerate() {
            let scale = b.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
            let d = max_diff(a, b);
            assert!(
                d < 1e-4 * scale,
                "quantised {quantised}, dropout {dropout}, gradient {i}: differs by {d} (values up to {scale})"
            );
        }
    }
}

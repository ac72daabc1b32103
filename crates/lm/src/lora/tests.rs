//! Tests of adapters on tiny random models: a fresh adapter changes nothing, training moves only the adapters,
//! PEFT files round-trip and malformed ones are named, and a merged checkpoint equals base plus adapter.

use super::*;
use crate::finetune::causal_lm_loss;
use crate::model::tests::{random_tensors, tiny_config, write_hf};
use crate::model::{load_hf_dir, save_safetensors, KvCache};
use burn::backend::{Autodiff, Flex};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use rand_chacha::rand_core::Rng;

type B = Flex;
type AD = Autodiff<Flex>;

fn tiny_model<Bk: Backend>(seed: u64) -> (tempfile::TempDir, Llama<Bk>) {
    let c = tiny_config(40);
    let dir = tempfile::tempdir().unwrap();
    write_hf(dir.path(), &c, &random_tensors(&c, seed));
    let model = load_hf_dir::<Bk>(dir.path(), &Default::default()).unwrap();
    (dir, model)
}

fn logits<Bk: Backend>(model: &Llama<Bk>, tokens: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(&model.config);
    model.forward_all(tokens, 1, &mut cache).unwrap().into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

const TOKENS: [u32; 8] = [1, 5, 9, 3, 17, 22, 4, 30];

/// An adapter whose B is filled with small random values, so it changes the model.
fn randomised(model: Llama<B>, config: &LoraConfig) -> Llama<B> {
    let mut model = attach(model, config, 7).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for block in &mut model.blocks {
        for &t in &config.targets {
            let adapter = block.lora.slot(t).as_mut().unwrap();
            let [r, out] = adapter.b.dims();
            let v: Vec<f32> =
                (0..r * out).map(|_| (rng.next_u32() >> 8) as f32 / (1 << 24) as f32 * 0.2 - 0.1).collect();
            adapter.b = Param::from_data(TensorData::new(v, [r, out]), &Default::default());
        }
    }
    model
}

#[test]
fn a_fresh_adapter_leaves_the_outputs_unchanged() {
    let (_d, base) = tiny_model::<B>(1);
    let before = logits(&base, &TOKENS);
    let with = attach(base, &LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, ..Default::default() }, 3).unwrap();
    assert!(has_adapters(&with));
    assert_eq!(with.blocks[0].lora.get(Target::Down).unwrap().rank(), 4);
    // A is drawn (not zero), B is zero.
    assert!(values(with.blocks[0].lora.q.as_ref().unwrap().a.val()).iter().any(|&x| x != 0.0));
    assert_eq!(logits(&with, &TOKENS), before);
}

#[test]
fn one_step_lowers_the_loss_and_moves_only_the_adapters() {
    let (_d, base) = tiny_model::<AD>(2);
    let config = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec![Target::Q, Target::V, Target::Down] };
    let model = attach(base, &config, 5).unwrap();
    let labels: Vec<i64> = TOKENS[1..].iter().map(|&t| t as i64).chain([IGNORE_LAST]).collect();
    let loss_of = |m: &Llama<AD>| {
        let mut cache = KvCache::new(&m.config);
        causal_lm_loss(m.forward_all(&TOKENS, 1, &mut cache).unwrap(), &labels).0
    };
    let base_w = values(model.blocks[1].q.weight.val());
    let embed = values(model.embed.val());
    let a_before = values(model.blocks[1].lora.q.as_ref().unwrap().a.val());
    let loss = loss_of(&model);
    let before = values(loss.clone())[0];
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    // Only adapter parameters have gradients: 3 targets x 2 matrices x 2 layers.
    assert_eq!(grads.len(), 12);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init::<AD, Llama<AD>>();
    let model = optim.step(1e-2, model, grads);
    let after = values(loss_of(&model))[0];
    assert!(after < before, "loss {before} -> {after}");
    assert_eq!(values(model.blocks[1].q.weight.val()), base_w, "a base weight moved");
    assert_eq!(values(model.embed.val()), embed, "the embedding moved");
    let b = values(model.blocks[1].lora.q.as_ref().unwrap().b.val());
    assert!(b.iter().any(|&x| x != 0.0), "B did not move");
    assert_eq!(values(model.blocks[1].lora.q.as_ref().unwrap().a.val()).len(), a_before.len());
}

const IGNORE_LAST: i64 = crate::finetune::IGNORE;

#[test]
fn peft_files_round_trip_with_peft_names_and_shapes() {
    let (_d, base) = tiny_model::<B>(3);
    let config = LoraConfig { rank: 4, alpha: 16.0, dropout: 0.05, targets: vec![Target::K, Target::O, Target::Up] };
    let model = randomised(base, &config);
    let expected = logits(&model, &TOKENS);
    let out = tempfile::tempdir().unwrap();
    save_peft(&model, &config, "tiny-base", out.path()).unwrap();

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["task_type"], "CAUSAL_LM");
    assert_eq!(json["r"], 4);
    assert_eq!(json["lora_alpha"], 16.0);
    assert_eq!(json["bias"], "none");
    assert_eq!(json["base_model_name_or_path"], "tiny-base");
    assert_eq!(json["target_modules"], serde_json::json!(["k_proj", "o_proj", "up_proj"]));
    let bytes = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names().len(), 2 * 3 * 2);
    // k: hidden 32 -> kv 16; o: 32 -> 32; up: 32 -> 48. A is [r, in], B is [out, r].
    let shape = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    assert_eq!(shape("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"), [4, 32]);
    assert_eq!(shape("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"), [16, 4]);
    assert_eq!(shape("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"), [48, 4]);

    let (_d2, fresh) = tiny_model::<B>(3);
    let (loaded, file) = load_peft(fresh, out.path()).unwrap();
    assert_eq!(file.config, config);
    assert_eq!(file.base_model, "tiny-base");
    assert_eq!(logits(&loaded, &TOKENS), expected);
}

fn saved_adapter() -> (tempfile::TempDir, LoraConfig) {
    let (_d, base) = tiny_model::<B>(4);
    let config = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: vec![Target::Q, Target::Gate] };
    let out = tempfile::tempdir().unwrap();
    save_peft(&randomised(base, &config), &config, "tiny", out.path()).unwrap();
    (out, config)
}

fn load_error(dir: &Path) -> String {
    let (_d, fresh) = tiny_model::<B>(4);
    load_peft(fresh, dir).expect_err("the adapter should be refused").to_string()
}

#[test]
fn malformed_adapters_are_named() {
    // A rank in the config that the tensors do not have.
    let (dir, _) = saved_adapter();
    let path = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"r\": 2", "\"r\": 3")).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("layers.0.self_attn.q_proj.lora_A.weight") && e.contains("[2, 32]"), "{e}");

    // An unknown module.
    std::fs::write(&path, text.replace("\"gate_proj\"", "\"fc1\"")).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("target_modules") && e.contains("fc1"), "{e}");

    // A tensor the config does not list.
    std::fs::write(&path, text.replace(",\n    \"gate_proj\"", "")).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("mlp.gate_proj.lora_A.weight") && e.contains("not expected"), "{e}");

    // A missing weights file and a missing config.
    std::fs::write(&path, &text).unwrap();
    std::fs::remove_file(dir.path().join("adapter_model.safetensors")).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = load_error(empty.path());
    assert!(e.contains("adapter_config.json"), "{e}");

    // An adapter made for a model with more layers.
    let (dir, _) = saved_adapter();
    let c = tiny_config(40);
    let mut small = c.clone();
    small.n_layers = 1;
    let model_dir = tempfile::tempdir().unwrap();
    let mut t = random_tensors(&small, 4);
    t.retain(|n, _| !n.contains("layers.1."));
    write_hf(model_dir.path(), &small, &t);
    let one_layer = load_hf_dir::<B>(model_dir.path(), &Default::default()).unwrap();
    let e = load_peft(one_layer, dir.path()).err().unwrap().to_string();
    assert!(e.contains("layers.1.") && e.contains("not expected"), "{e}");
}

#[test]
fn a_merged_checkpoint_gives_the_logits_of_base_plus_adapter() {
    let (_d, base) = tiny_model::<B>(6);
    let config = LoraConfig { rank: 3, alpha: 6.0, dropout: 0.0, ..Default::default() };
    let model = randomised(base, &config);
    let expected = logits(&model, &TOKENS);
    let (_d2, plain) = tiny_model::<B>(6);
    assert!(max_diff(&logits(&plain, &TOKENS), &expected) > 1e-2, "the adapter should change the logits");
    let merged = merge(model);
    assert!(!has_adapters(&merged));
    let out = tempfile::tempdir().unwrap();
    save_safetensors(&merged, out.path()).unwrap();
    let reloaded = load_hf_dir::<B>(out.path(), &Default::default()).unwrap();
    let d = max_diff(&logits(&reloaded, &TOKENS), &expected);
    assert!(d < 1e-4, "merged logits differ by {d}");
}

#[test]
fn bad_configs_are_refused() {
    assert!(parse_targets("q,x").unwrap_err().to_string().contains("\"x\""));
    assert_eq!(parse_targets("down,q_proj").unwrap(), vec![Target::Q, Target::Down]);
    let (_d, base) = tiny_model::<B>(1);
    let e = attach(base, &LoraConfig { rank: 0, ..Default::default() }, 0).err().unwrap().to_string();
    assert!(e.contains("rank"), "{e}");
    // PEFT settings that would change shapes or scales per layer are refused, naming the key;
    // their empty defaults (as PEFT writes them) are fine.
    let dir = tempfile::tempdir().unwrap();
    let write = |extra: &str| {
        let text = format!(
            "{{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q_proj\"], \
             \"rank_pattern\": {{}}, \"alpha_pattern\": {{}}, \"layers_to_transform\": null, \"modules_to_save\": null{extra}}}"
        );
        std::fs::write(dir.path().join("adapter_config.json"), text).unwrap();
        read_peft_config(dir.path())
    };
    assert_eq!(write("").unwrap().config.rank, 2);
    for (extra, key) in [
        (", \"layers_to_transform\": [0]", "layers_to_transform"),
        (", \"rank_pattern\": {\"q_proj\": 4}", "rank_pattern"),
        (", \"alpha_pattern\": {\"q_proj\": 4}", "alpha_pattern"),
        (", \"modules_to_save\": [\"lm_head\"]", "modules_to_save"),
        (", \"use_dora\": true", "use_dora"),
    ] {
        let e = write(extra).unwrap_err().to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
}

#[test]
fn dropout_drops_its_share_scales_the_rest_and_repeats_from_its_seed() {
    let device = Default::default();
    let ones = || Tensor::<AD, 2>::ones([300, 333], &device);
    let draw = |seed: u64, step: u64| -> Vec<f32> {
        seed_dropout(seed, step);
        dropout(ones(), 0.25).into_data().to_vec::<f32>().unwrap()
    };
    let mask = draw(7, 3);
    let dropped = mask.iter().filter(|&&v| v == 0.0).count() as f64 / mask.len() as f64;
    assert!((dropped - 0.25).abs() < 0.01, "dropped {dropped} of the values, not a quarter");
    assert!(mask.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75), "kept values are scaled by 1 / (1 - p)");
    // Both halves of each 64-bit draw are used, and independently: pairs are not all alike.
    let alike = mask.chunks(2).filter(|p| p[0] == p[1]).count() as f64 / (mask.len() / 2) as f64;
    assert!((alike - (0.25 * 0.25 + 0.75 * 0.75)).abs() < 0.02, "{alike} of the pairs agree");
    assert_eq!(draw(7, 3), mask, "the same seed and step draw the same mask");
    assert_ne!(draw(7, 4), mask);
    assert_ne!(draw(8, 3), mask);
    // Two draws in a row differ; inference (no autodiff) and p = 0 leave the input alone.
    seed_dropout(7, 3);
    let first = dropout(ones(), 0.25).into_data().to_vec::<f32>().unwrap();
    let second = dropout(ones(), 0.25).into_data().to_vec::<f32>().unwrap();
    assert_eq!(first, mask);
    assert_ne!(first, second);
    let plain = dropout(Tensor::<Flex, 2>::ones([4, 5], &device), 0.5).into_data().to_vec::<f32>().unwrap();
    assert!(plain.iter().all(|&v| v == 1.0));
    assert!(dropout(ones(), 0.0).into_data().to_vec::<f32>().unwrap().iter().all(|&v| v == 1.0));
}

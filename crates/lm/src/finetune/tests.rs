//! Tests of fine-tuning on the tiny GGUF checkpoint: assistant-only labels, the schedule, data errors, training
//! that drives the loss well down, and checkpoints that a resumed run continues from.

use super::*;
use crate::gguf::GgufFile;
use crate::lora::{attach, load_peft, Target};
use crate::model::load_gguf;
use crate::model::tests::tiny_gguf_checkpoint;
use burn::backend::{Autodiff, Flex};

type AD = Autodiff<Flex>;

fn tiny() -> (Llama<AD>, Tokenizer, ChatTemplate) {
    let file = GgufFile::from_bytes(tiny_gguf_checkpoint(9)).unwrap();
    let model = load_gguf(&file, &Default::default()).unwrap();
    (model, Tokenizer::from_gguf(&file).unwrap(), ChatTemplate::from_gguf(&file).unwrap())
}

fn conv(pairs: &[(&str, &str)]) -> Vec<Message> {
    pairs.iter().map(|(r, c)| Message::new(*r, *c)).collect()
}

#[test]
fn only_the_assistant_turns_are_labelled() {
    let (_, tok, template) = tiny();
    let messages = conv(&[
        ("system", "be brief"),
        ("user", "hello world"),
        ("assistant", "hello"),
        ("user", "again"),
        ("assistant", "world hello"),
    ]);
    let e = encode_conversation(&messages, &template, &tok, 1000).unwrap();
    assert_eq!(e.ids.len(), e.labels.len());
    assert_eq!(tok.decode(&e.ids, false).unwrap(), template.render(&messages, false).unwrap());
    // The labelled tokens, read back, are the two replies with their end-of-turn markers.
    let learned: Vec<u32> = e.labels.iter().filter(|&&l| l != IGNORE).map(|&l| l as u32).collect();
    assert_eq!(tok.decode(&learned, false).unwrap(), "hello<|im_end|>\nworld hello<|im_end|>\n");
    // Labels are the next token.
    for (i, &l) in e.labels.iter().enumerate() {
        if l != IGNORE {
            assert_eq!(l, e.ids[i + 1] as i64);
        }
    }
    let short = encode_conversation(&messages, &template, &tok, 10).unwrap();
    assert_eq!(short.ids.len(), 10);
    assert_eq!(short.labels[9], IGNORE);
}

#[test]
fn warm_up_then_cosine_decay() {
    assert!((lr_at(0, 10, 2, 1.0) - 0.5).abs() < 1e-12);
    assert!((lr_at(1, 10, 2, 1.0) - 1.0).abs() < 1e-12);
    assert!((lr_at(2, 10, 2, 1.0) - 1.0).abs() < 1e-12);
    assert!((lr_at(6, 10, 2, 1.0) - 0.5).abs() < 1e-12);
    assert!(lr_at(9, 10, 2, 1.0) < 0.05);
    assert!(lr_at(5, 10, 2, 1.0) > lr_at(6, 10, 2, 1.0));
}

#[test]
fn bad_lines_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    let ok = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#;
    std::fs::write(&path, format!("{ok}\n\n{ok}\n")).unwrap();
    assert_eq!(read_jsonl(&path).unwrap().len(), 2);
    for (bad, what) in [
        ("{not json", "not JSON"),
        (r#"{"text": "x"}"#, "messages"),
        (r#"{"messages": [{"role": "user"}]}"#, "content"),
        (r#"{"messages": [{"role": "user", "content": "a"}]}"#, "assistant"),
    ] {
        std::fs::write(&path, format!("{ok}\n{bad}\n")).unwrap();
        let e = read_jsonl(&path).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:2:") && e.contains(what), "{e}");
    }
    let e = read_jsonl(dir.path().join("none.jsonl")).unwrap_err().to_string();
    assert!(e.contains("none.jsonl"), "{e}");
}

fn examples(tok: &Tokenizer, template: &ChatTemplate) -> Vec<Example> {
    [("hello", "world"), ("world", "hello hello"), ("hello world", "world world"), ("again", "hello")]
        .iter()
        .map(|(u, a)| encode_conversation(&conv(&[("user", u), ("assistant", a)]), template, tok, 64).unwrap())
        .collect()
}

#[test]
fn training_drives_the_loss_well_down() {
    let (model, tok, template) = tiny();
    let data = examples(&tok, &template);
    let cfg = TrainConfig {
        lora: LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, targets: Target::ALL.to_vec() },
        lr: 1e-2,
        epochs: 40,
        batch: 2,
        grad_accum: 1,
        warmup: 4,
        seed: 1,
        ..Default::default()
    };
    let model = attach(model, &cfg.lora, 1).unwrap();
    let mut reports = 0;
    let (_, s) = train(model, &data, &cfg, None, 0, |r| {
        reports += 1;
        assert!(r.tokens_per_second > 0.0 && r.lr > 0.0);
    })
    .unwrap();
    assert_eq!(s.steps, 80);
    assert_eq!(reports, 80);
    let first = (s.losses[0] + s.losses[1]) / 2.0;
    let last = (s.losses[78] + s.losses[79]) / 2.0;
    assert!(last < 0.2 * first, "loss {first} -> {last}");
}

#[test]
fn checkpoints_hold_the_step_and_a_resumed_run_continues() {
    let (model, tok, template) = tiny();
    let data = examples(&tok, &template);
    let cfg = TrainConfig {
        lora: LoraConfig { rank: 4, alpha: 8.0, dropout: 0.05, targets: vec![Target::Q, Target::Up] },
        lr: 5e-3,
        epochs: 2,
        batch: 1,
        grad_accum: 2,
        save_every: 1,
        ..Default::default()
    };
    let out = tempfile::tempdir().unwrap();
    let saving = Saving { dir: out.path(), base_model: "tiny" };
    let model = attach(model, &cfg.lora, 0).unwrap();
    // Two steps per epoch (4 examples, 2 per step).
    let (_, s) = train(model, &data, &cfg, Some(&saving), 0, |_| {}).unwrap();
    assert_eq!(s.steps, 4);
    assert_eq!(saved_step(out.path()).unwrap(), Some(4));

    // Resume from a checkpoint at step 3: only the last step runs.
    let state = out.path().join("trainer_state.json");
    std::fs::write(&state, r#"{"step": 3}"#).unwrap();
    let (fresh, _, _) = tiny();
    let (model, file) = load_peft(fresh, out.path()).unwrap();
    assert_eq!(file.config, cfg.lora);
    let start = saved_step(out.path()).unwrap().unwrap();
    let mut seen = vec![];
    let (_, s) = train(model, &data, &cfg, Some(&saving), start, |r| seen.push(r.step)).unwrap();
    assert_eq!(seen, [4]);
    assert_eq!(s.steps, 4);
    std::fs::write(&state, "{}").unwrap();
    assert!(saved_step(out.path()).unwrap_err().to_string().contains("trainer_state.json"));
}

/// The adapter tensors of `model`, in PEFT's names.
fn adapter_values(model: &Llama<AD>) -> Vec<(String, Vec<f32>)> {
    adapter_tensors(model).into_iter().map(|(n, _, t)| (n, t.into_data().to_vec::<f32>().unwrap())).collect()
}

#[test]
fn a_run_killed_after_a_checkpoint_and_resumed_ends_where_an_unbroken_run_ends() {
    let (model, tok, template) = tiny();
    let data = examples(&tok, &template);
    // Dropout's masks are drawn from the seed and the step, so a resumed run draws the same.
    let cfg = TrainConfig {
        lora: LoraConfig { rank: 4, alpha: 8.0, dropout: 0.1, targets: vec![Target::Q, Target::V, Target::Down] },
        lr: 2e-2,
        epochs: 3,
        batch: 2,
        grad_accum: 1,
        save_every: 2,
        ..Default::default()
    };
    // The unbroken run; while it runs step 5, its folder holds step 4's checkpoint: a copy of that
    // is what a run killed during step 5 leaves behind.
    let whole = tempfile::tempdir().unwrap();
    let killed = tempfile::tempdir().unwrap();
    let copy_checkpoint = |to: &Path| {
        for f in ["adapter_config.json", "adapter_model.safetensors", MOMENTS, "trainer_state.json"] {
            std::fs::copy(whole.path().join(f), to.join(f)).unwrap();
        }
    };
    let saving = Saving { dir: whole.path(), base_model: "tiny" };
    let (unbroken, s) = train(attach(model, &cfg.lora, 0).unwrap(), &data, &cfg, Some(&saving), 0, |r| {
        if r.step == 5 {
            copy_checkpoint(killed.path());
        }
    })
    .unwrap();
    assert_eq!(s.steps, 6);
    assert!(!s.restored_moments);
    assert_eq!(saved_step(killed.path()).unwrap(), Some(4));
    let want = adapter_values(&unbroken);
    assert_eq!(want.len(), 2 * 2 * 3);
    let distance = |got: &[(String, Vec<f32>)]| {
        got.iter()
            .zip(&want)
            .map(|((_, a), (_, b))| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())))
            .fold(0f32, f32::max)
    };
    let resume = |dir: &Path| {
        let (fresh, _, _) = tiny();
        let (model, _) = load_peft(fresh, dir).unwrap();
        train(model, &data, &cfg, Some(&Saving { dir, base_model: "tiny" }), 4, |_| {})
    };

    // Keep a second copy of the checkpoint before resuming writes over the first.
    let again = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(killed.path()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), again.path().join(f.file_name())).unwrap();
    }
    let (resumed, s) = resume(killed.path()).unwrap();
    assert!(s.restored_moments);
    let d = distance(&adapter_values(&resumed));
    assert!(d < 1e-6, "the resumed run ends {d} away from the unbroken one");

    // A damaged moments file is an error naming it, not a silent fresh start.
    let moments = again.path().join(MOMENTS);
    std::fs::write(&moments, b"not safetensors").unwrap();
    let e = resume(again.path()).unwrap_err().to_string();
    assert!(e.contains(MOMENTS), "{e}");

    // Without the moments (a checkpoint of an older nasc) the run starts them afresh and lands
    // elsewhere: they matter.
    std::fs::remove_file(&moments).unwrap();
    let (afresh, s) = resume(again.path()).unwrap();
    assert!(!s.restored_moments);
    let far = distance(&adapter_values(&afresh));
    assert!(far > 1e-4, "fresh moments should change the end point, yet it moved by {far}");
}

//! nasc-lm: runs and LoRA-fine-tunes Llama-family language models for nasc's
//! search loop: GGUF and Hugging Face checkpoints, tokenizers, chat templates, a
//! Llama-family decoder in Burn, and generation with a KV cache.
//!
//! ```no_run
//! use nasc_lm::gguf::GgufFile;
//! let model = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let layers = model.get_u32("llama.block_count")?;
//! let tokens = model.get_str_array("tokenizer.ggml.tokens")?;
//! let embedding = model.tensor_f32("token_embd.weight")?;
//! # Ok::<(), nasc_lm::gguf::GgufError>(())
//! ```

// Crate layout, each module using only those above it: gguf (file format, metadata,
// dequantisation); tokenizer (text <-> ids from GGUF or tokenizer.json) and chat (chat
// templates); model (the decoder, its adapter layers, its loss and loaders, and its CPU
// kernels behind `model::kernels`, chosen by the model's `Kernels` options); lora
// (attaching adapters, PEFT files, merging); generate (sampling with a KV cache) and
// finetune (training adapters on chat JSONL); run (whole generate and fine-tune jobs on a
// device, for the CLI); serve (the HTTP server).
pub mod chat;
pub mod constrain;
pub mod finetune;
pub mod generate;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod run;
pub mod serve;
pub mod tokenizer;

/// Client text (a name, a path, a grammar's error) as a message quotes it: its first `max`
/// characters, then how many bytes were left out.
pub(crate) fn clipped(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}… ({} more bytes)", &text[..end], text.len() - end),
    }
}

//! nasc-lora: runs and LoRA-fine-tunes Llama-family language models for nasc's
//! search loop. This first piece reads GGUF model files; it knows nothing of Burn.
//!
//! ```no_run
//! use nasc_lora::gguf::GgufFile;
//! let model = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let layers = model.get_u32("llama.block_count")?;
//! let tokens = model.get_str_array("tokenizer.ggml.tokens")?;
//! let embedding = model.tensor_f32("token_embd.weight")?;
//! # Ok::<(), nasc_lora::gguf::GgufError>(())
//! ```

// Crate layout: gguf (file format, metadata, dequantisation), tokenizer (text <-> ids
// from GGUF or tokenizer.json), chat (chat templates). Model, generation and LoRA
// training come later (issue 7) and build on them.
pub mod chat;
pub mod gguf;
pub mod tokenizer;

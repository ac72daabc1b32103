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

// Crate layout: gguf (file format, metadata, dequantisation), tokenizer (text <-> ids
// from GGUF or tokenizer.json), chat (chat templates), model (the decoder and its
// loaders), generate (sampling with a KV cache), lora (adapters, PEFT files, merging),
// finetune (training adapters on chat JSONL).
pub mod chat;
pub mod finetune;
pub mod generate;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod serve;
pub mod tokenizer;

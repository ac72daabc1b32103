//! nasc-lora: runs and LoRA-fine-tunes Llama-family language models for nasc's
//! search loop: GGUF and Hugging Face checkpoints, tokenizers, chat templates, a
//! Llama-family decoder in Burn, and generation with a KV cache.
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
// from GGUF or tokenizer.json), chat (chat templates), model (the decoder and its
// loaders), generate (sampling with a KV cache), lora (adapters, PEFT files, merging),
// finetune (training adapters on chat JSONL).
pub mod chat;
pub mod finetune;
pub mod generate;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod tokenizer;

/// Has the C allocator keep freed memory for reuse instead of returning it to the system at once.
/// Training frees and reallocates the same large buffers every step; by default glibc maps each
/// one afresh and unmaps it when freed, and the page faults that follow cost a quarter of the
/// time of a small CNN's step on the CPU (measured: 650 → 830 images/s), and the logits, masks
/// and gradients of a LoRA step are such buffers too. Process-wide, set once.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tunables; called once, before the buffers
            // it concerns are allocated. A refused value leaves glibc's default in place.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
                libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            }
        });
    }
}

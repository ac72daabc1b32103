//! The real SmolLM2-135M-Instruct GGUF read by nasc's reader: metadata, tensor table and first values
//! as gguf-py dequantises them. It needs the model file (see `common::smollm2`); nothing is downloaded.

mod common;
use common::smollm2;
use nasc_lm::gguf::GgmlType;

#[test]
fn the_smollm2_file_has_the_metadata_and_tensors_of_the_published_model() {
    let Some(file) = smollm2() else { return };
    let u32_of = |key| file.get_u32(key).unwrap();
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(u32_of("llama.block_count"), 30);
    assert_eq!(u32_of("llama.embedding_length"), 576);
    assert_eq!(u32_of("llama.feed_forward_length"), 1536);
    assert_eq!(u32_of("llama.attention.head_count"), 9);
    assert_eq!(u32_of("llama.attention.head_count_kv"), 3);
    assert_eq!(u32_of("llama.context_length"), 8192);
    assert_eq!(u32_of("llama.vocab_size"), 49152);
    assert_eq!(file.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(file.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(file.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(file.get_i32_array("tokenizer.ggml.token_type").unwrap().len(), 49152);
    assert_eq!(file.get_str_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert!(file.get_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));

    // Tied embeddings: no output.weight; the embedding is the one Q8_0 tensor, the norms F32, the rest Q4_1.
    assert_eq!(file.tensors().len(), 272);
    assert!(file.tensor("output.weight").is_err());
    let count = |ty| file.tensors().iter().filter(|t| t.ty == ty).count();
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::F32), count(GgmlType::Q8_0)), (210, 61, 1));
    assert_eq!(file.tensor("token_embd.weight").unwrap().shape(), [49152, 576]);
    assert_eq!(file.tensor("blk.0.attn_k.weight").unwrap().shape(), [192, 576]);

    // First values as gguf-py 0.19 dequantises them (its output matched this reader bit for bit).
    let first = |name: &str| file.tensor_f32(name).unwrap()[..3].to_vec();
    let close = |got: Vec<f32>, want: [f32; 3]| got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-7);
    assert!(close(first("token_embd.weight"), [-0.10654449, 0.03297806, 0.0481987]));
    assert!(close(first("blk.0.attn_q.weight"), [-0.09631348, 0.15734863, -0.09631348]));
    assert!(close(first("blk.0.attn_norm.weight"), [0.01397705, 0.02380371, -0.01977539]));
    for t in file.tensors() {
        let values = file.tensor_f32(&t.name).unwrap();
        assert_eq!(values.len() as u64, t.n_elements(), "{}", t.name);
        assert!(values.iter().all(|v| v.is_finite()), "{} has a non-finite value", t.name);
    }
}

//! Turns text into token ids and back for a checkpoint, from its GGUF metadata or a Hugging Face tokenizer.json.
//! It must not guess silently: a missing or ill-typed tokenizer key is an error naming the key, never a panic.

//! Tokenizers built from a checkpoint.
//!
//! The work is done by Hugging Face's `tokenizers` crate (built with
//! `fancy-regex`, so no C library is needed); this module only assembles one
//! from what a GGUF file stores:
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE from
//!   `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`, with GPT-2's
//!   byte-level pre-tokenizer and decoder. Tokens whose
//!   `tokenizer.ggml.token_type` is control (3) become special tokens and
//!   user-defined ones (4) added tokens, so `<|im_start|>` encodes as one id.
//! - `tokenizer.ggml.model = "llama"`: SentencePiece BPE from the tokens and
//!   `tokenizer.ggml.scores`, with merges derived as `transformers` derives
//!   them, `▁` for spaces and `<0xNN>` byte fallback.
//! - Other models are refused with an error naming `tokenizer.ggml.model`.

#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper};

use crate::gguf::{GgufError, GgufFile};

/// GGUF's token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// `tokenizer.ggml.pre` values whose pre-tokenizer splits every digit before
/// GPT-2's regex (llama.cpp groups them so; SmolLM2 says `smollm`).
const PRE_INDIVIDUAL_DIGITS: &[&str] =
    &["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva"];

/// Why a tokenizer could not be built or used. Each message names the key,
/// token or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),

    #[error("tokenizer.ggml.model is `{model}`; only `gpt2` (byte-level BPE) or `llama` (SentencePiece) tokenizers are built from GGUF")]
    UnsupportedModel { model: String },

    #[error("{key}: {reason}")]
    BadMetadata { key: &'static str, reason: String },

    #[error("{}: cannot load tokenizer: {reason}", path.display())]
    HfJson { path: PathBuf, reason: String },

    #[error("cannot build the BPE model: {reason}")]
    Build { reason: String },

    #[error("cannot encode text: {reason}")]
    Encode { reason: String },

    #[error("cannot decode ids: {reason}")]
    Decode { reason: String },
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// A checkpoint's tokenizer, with the ids of its marker tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special tokens' texts encoded as ordinary text: for message
    /// contents, which must not open or close a turn by writing `<|im_end|>`.
    plain: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Whether `encode(_, true)` puts BOS in front. A tokenizer.json does this
    /// itself through its post-processor, so this is only set from GGUF.
    add_bos: bool,
    add_eos: bool,
}

/// `inner` with special tokens' texts encoded as ordinary text.
fn plain(inner: &tokenizers::Tokenizer) -> tokenizers::Tokenizer {
    let mut plain = inner.clone();
    plain.set_encode_special_tokens(true);
    plain
}

/// Why a conversation could not become a prompt's ids.
#[derive(Debug, thiserror::Error)]
pub enum ChatEncodeError {
    #[error("the chat template failed: {0}")]
    Template(crate::chat::ChatError),
    #[error("tokenizer: {0}")]
    Tokenizer(TokenizerError),
    #[error(
        "message {index}'s content holds the special token `{token}`, which this model's chat template \
         does not let nasc keep as plain text"
    )]
    SpecialText { index: usize, token: String },
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF checkpoint describes in its `tokenizer.ggml.*` keys.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" && model != "llama" {
            return Err(TokenizerError::UnsupportedModel { model: model.to_owned() });
        }
        let spm = model == "llama";
        let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
        // Optional: older converters omit it, and then no token is special.
        let types = match file.get("tokenizer.ggml.token_type") {
            Some(_) => file.get_i32_array("tokenizer.ggml.token_type")?,
            None => vec![],
        };
        if !types.is_empty() && types.len() != tokens.len() {
            return Err(TokenizerError::BadMetadata {
                key: "tokenizer.ggml.token_type",
                reason: format!("has {} entries but tokenizer.ggml.tokens has {}", types.len(), tokens.len()),
            });
        }

        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        if vocab.len() != tokens.len() {
            return Err(TokenizerError::BadMetadata {
                key: "tokenizer.ggml.tokens",
                reason: "holds the same token twice".to_owned(),
            });
        }
        let pairs = if spm { spm_merges(file, &tokens, &types, &vocab)? } else { gpt2_merges(file, &vocab)? };

        let id = |key: &'static str| -> Result<Option<u32>> {
            if file.get(key).is_none() {
                return Ok(None);
            }
            let id = file.get_u32(key)?;
            if id as usize >= tokens.len() {
                return Err(TokenizerError::BadMetadata {
                    key,
                    reason: format!("id {id} is past the vocabulary ({} tokens)", tokens.len()),
                });
            }
            Ok(Some(id))
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?;
        id("tokenizer.ggml.padding_token_id")?;
        let flag = |key: &str| -> Result<bool> {
            match file.get(key) {
                Some(_) => Ok(file.get_bool(key)?),
                None => Ok(false),
            }
        };
        // llama.cpp's defaults when the key is absent: SentencePiece vocabularies add BOS, byte-level ones do not.
        let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
            Some(_) => file.get_bool("tokenizer.ggml.add_bos_token")?,
            None => spm,
        };
        let add_eos = flag("tokenizer.ggml.add_eos_token")?;
        if add_bos && bos.is_none() {
            return Err(TokenizerError::BadMetadata {
                key: "tokenizer.ggml.bos_token_id",
                reason: "is missing, but tokenizer.ggml.add_bos_token is true".to_owned(),
            });
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::BadMetadata {
                key: "tokenizer.ggml.eos_token_id",
                reason: "is missing, but tokenizer.ggml.add_eos_token is true".to_owned(),
            });
        }

        let mut builder = BPE::builder().vocab_and_merges(vocab, pairs);
        if let Some(unk) = unk {
            builder = builder.unk_token(tokens[unk as usize].to_owned());
        }
        if spm {
            // SentencePiece spells bytes it has no piece for as `<0xNN>` tokens, and runs of unknowns as one.
            builder = builder.byte_fallback(true).fuse_unk(true);
        }
        let bpe = builder.build().map_err(|e| TokenizerError::Build { reason: e.to_string() })?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        if spm {
            let add_space_prefix = match file.get("tokenizer.ggml.add_space_prefix") {
                Some(_) => file.get_bool("tokenizer.ggml.add_space_prefix")?,
                None => true,
            };
            sentencepiece_pipeline(&mut inner, add_space_prefix)?;
        } else {
            let pre = match file.get("tokenizer.ggml.pre") {
                Some(_) => file.get_str("tokenizer.ggml.pre")?,
                None => "default",
            };
            byte_level_pipeline(&mut inner, pre);
        }

        let added = |kind: i32, special: bool| -> Vec<AddedToken> {
            types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| **t == kind)
                .map(|(_, tok)| AddedToken::from(tok.to_string(), special).normalized(false))
                .collect()
        };
        inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
        inner.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));

        Ok(Tokenizer { plain: plain(&inner), inner, bos, eos, add_bos, add_eos })
    }

    /// Loads a Hugging Face `tokenizer.json`. tokenizer.json does not mark BOS
    /// and EOS, so they come from `bos_token` / `eos_token` in the
    /// tokenizer_config.json beside it when there is one, else from the usual names.
    pub fn from_hf_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::HfJson { path: path.to_owned(), reason: e.to_string() })?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| TokenizerError::HfJson { path: config_path.clone(), reason: e.to_string() })?,
            Err(_) => serde_json::Value::Null,
        };
        // A token in tokenizer_config.json is a string or an AddedToken object with `content`.
        let configured = |key: &str| {
            let v = &config[key];
            v.as_str().or_else(|| v["content"].as_str()).and_then(|t| inner.token_to_id(t))
        };
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let bos = configured("bos_token").or_else(|| find(&["<|begin_of_text|>", "<s>", "<|endoftext|>"]));
        let eos = configured("eos_token").or_else(|| find(&["<|end_of_text|>", "</s>", "<|im_end|>", "<|endoftext|>"]));
        Ok(Tokenizer { plain: plain(&inner), inner, bos, eos, add_bos: false, add_eos: false })
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json`, which [`Tokenizer::from_hf_json`] reads back.
    pub fn save_hf_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.inner.save(path, true).map_err(|e| TokenizerError::HfJson { path: path.to_owned(), reason: e.to_string() })
    }

    /// The ids of `text`. With `add_special`, the checkpoint's BOS/EOS are
    /// added as it asks; special tokens written in the text are matched whole either way.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(|e| TokenizerError::Encode { reason: e.to_string() })?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// The ids of `text` with any special token's text in it encoded as ordinary text (never
    /// BOS or EOS added): how a chat message's content is read, so that a user who writes
    /// `<|im_start|>system` gets those characters, not a turn of their own.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.plain.encode(text, false).map_err(|e| TokenizerError::Encode { reason: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The ids of a chat prompt given as pieces ([`crate::chat::Piece`]): the template's own
    /// text with its special tokens, the messages' contents as plain text.
    pub fn encode_pieces(&self, pieces: &[crate::chat::Piece]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for piece in pieces {
            match piece {
                crate::chat::Piece::Template(text) => ids.extend(self.encode(text, false)?),
                crate::chat::Piece::Content(text) => ids.extend(self.encode_plain(text)?),
            }
        }
        Ok(ids)
    }

    /// The first special token whose text `text` holds, if any.
    pub fn special_text(&self, text: &str) -> Option<String> {
        self.inner
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special && !t.content.is_empty())
            .find(|t| text.contains(t.content.as_str()))
            .map(|t| t.content.clone())
    }

    /// The ids of the chat prompt for `messages` (ending where the assistant's turn begins
    /// when `add_generation_prompt`): the template's text with its special tokens, each
    /// message's content as plain text ([`Self::encode_plain`]). Where the template does not
    /// copy the contents unchanged, the rendered text is encoded whole, and a content holding a
    /// special token's text is refused rather than read as that token.
    pub fn encode_chat(
        &self,
        template: &crate::chat::ChatTemplate,
        messages: &[crate::chat::Message],
        add_generation_prompt: bool,
    ) -> std::result::Result<Vec<u32>, ChatEncodeError> {
        match template.render_pieces(messages, add_generation_prompt).map_err(ChatEncodeError::Template)? {
            crate::chat::Rendered::Pieces(pieces) => self.encode_pieces(&pieces).map_err(ChatEncodeError::Tokenizer),
            crate::chat::Rendered::Text(text) => {
                let special = messages
                    .iter()
                    .enumerate()
                    .find_map(|(i, m)| self.special_text(&m.content).map(|token| (i, token)));
                if let Some((index, token)) = special {
                    return Err(ChatEncodeError::SpecialText { index, token });
                }
                self.encode(&text, false).map_err(ChatEncodeError::Tokenizer)
            }
        }
    }

    /// The text of `ids`; with `skip_special`, special tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| TokenizerError::Decode { reason: e.to_string() })
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The text of one token, as the vocabulary spells it.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of one token, as the vocabulary spells it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The `tokenizers` tokenizer underneath, for the grammar engine's token table.
    pub(crate) fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Merges as stored in `tokenizer.ggml.merges` by byte-level vocabularies: "left right", in priority order.
fn gpt2_merges(file: &GgufFile, vocab: &Vocab) -> Result<Vec<(String, String)>> {
    let merges = file.get_str_array("tokenizer.ggml.merges")?;
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        // Byte-level tokens never hold a space (it is spelt `Ġ`), so the first space separates the pair.
        let Some((a, b)) = m.split_once(' ') else {
            return Err(TokenizerError::BadMetadata {
                key: "tokenizer.ggml.merges",
                reason: format!("entry {i} ({m:?}) is not two tokens separated by a space"),
            });
        };
        for part in [a, b] {
            if !vocab.contains_key(part) {
                return Err(TokenizerError::BadMetadata {
                    key: "tokenizer.ggml.merges",
                    reason: format!("entry {i} ({m:?}) uses {part:?}, which is not in tokenizer.ggml.tokens"),
                });
            }
        }
        pairs.push((a.to_owned(), b.to_owned()));
    }

    Ok(pairs)
}

/// SentencePiece vocabularies store scores, not merges. As `transformers`
/// does when converting them, every normal piece that splits into two pieces
/// of the vocabulary gives a merge, ranked by the merged piece's score.
fn spm_merges(file: &GgufFile, tokens: &[&str], types: &[i32], vocab: &Vocab) -> Result<Vec<(String, String)>> {
    let scores = file.get_f32_array("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(TokenizerError::BadMetadata {
            key: "tokenizer.ggml.scores",
            reason: format!("has {} entries but tokenizer.ggml.tokens has {}", scores.len(), tokens.len()),
        });
    }
    let mut merges = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        // Control, unknown and byte pieces are matched whole or by fallback, never built by merging.
        if types.get(i).is_some_and(|&t| t != 1) {
            continue;
        }
        let mut local: Vec<(u32, u32, &str, &str)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((*vocab.get(l)?, *vocab.get(r)?, l, r))
            })
            .collect();
        local.sort_by_key(|&(l, r, _, _)| (l, r));
        merges.extend(local.into_iter().map(|(_, _, l, r)| (scores[i], l.to_owned(), r.to_owned())));
    }
    // Stable, so equal scores keep vocabulary order, as in transformers.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(merges.into_iter().map(|(_, l, r)| (l, r)).collect())
}

/// GPT-2's settings: no space added in front, offsets trimmed, GPT-2's split regex.
fn byte_level_pipeline(inner: &mut tokenizers::Tokenizer, pre: &str) {
    let byte_level = ByteLevel::new(false, true, true);
    if PRE_INDIVIDUAL_DIGITS.contains(&pre) {
        let digits = PreTokenizerWrapper::Digits(Digits::new(true));
        inner.with_pre_tokenizer(Some(Sequence::new(vec![digits, byte_level.into()])));
    } else {
        inner.with_pre_tokenizer(Some(byte_level));
    }
    inner.with_decoder(Some(byte_level));
}

/// SentencePiece's conventions: spaces are `▁`, one is put in front of the text, bytes fall back to `<0xNN>`.
fn sentencepiece_pipeline(inner: &mut tokenizers::Tokenizer, add_space_prefix: bool) -> Result<()> {
    let build = |e: tokenizers::Error| TokenizerError::Build { reason: e.to_string() };
    let mut normalizers: Vec<NormalizerWrapper> = vec![];
    if add_space_prefix {
        normalizers.push(Prepend::new("▁".to_owned()).into());
    }
    normalizers.push(Replace::new(" ", "▁").map_err(build)?.into());
    inner.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    let mut decoders: Vec<DecoderWrapper> =
        vec![Replace::new("▁", " ").map_err(build)?.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(())
}

//! Renders a conversation into the prompt text a checkpoint was trained on, using the checkpoint's own Jinja chat template.
//! It must not tokenize or guess a model's format beyond ChatML: a checkpoint without a template gets ChatML, said so in the docs.

//! Chat templates.
//!
//! Checkpoints ship their prompt format as a Jinja template
//! (`tokenizer.chat_template` in GGUF, `chat_template` in
//! tokenizer_config.json). We render it with `minijinja`, a pure-Rust Jinja2
//! engine kept by Jinja's own author and used by Hugging Face's
//! text-generation-inference for exactly this, so templates written for
//! Python's Jinja render the same way. Like `transformers`, blocks are
//! rendered with `trim_blocks` and `lstrip_blocks`, `raise_exception` is
//! provided, and Python's string methods (`strip`, `startswith`, ...) work
//! through minijinja-contrib's `pycompat`.

use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::gguf::{GgufError, GgufFile};

/// ChatML, the format used when a checkpoint carries no template
/// (SmolLM2 and Qwen use it too).
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// A part of a rendered chat prompt: the template's own text (special tokens in it are
/// tokens), or a message's content (read as plain text, whatever it holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Template(String),
    Content(String),
}

/// Marks a message's content while the template renders it; from Unicode's last private-use
/// plane, which no tokenizer's special tokens use.
const OPEN: char = '\u{10FFFD}';
const CLOSE: char = '\u{10FFFC}';

/// A rendered prompt: cut into template text and contents, or only as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    Pieces(Vec<Piece>),
    Text(String),
}

impl Rendered {
    /// The pieces, when the prompt could be cut into them.
    pub fn pieces(self) -> Option<Vec<Piece>> {
        match self {
            Rendered::Pieces(pieces) => Some(pieces),
            Rendered::Text(_) => None,
        }
    }
}

/// `marked` (a rendering with each content `i` replaced by `OPEN i CLOSE`) cut into pieces
/// with the contents of `messages` put back; `None` when the markers are not whole.
fn cut(marked: &str, messages: &[Message]) -> Option<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut rest = marked;
    while let Some(open) = rest.find(OPEN) {
        let close = open + rest[open..].find(CLOSE)?;
        let i = rest[open + OPEN.len_utf8()..close].parse::<usize>().ok().filter(|&i| i < messages.len())?;
        push_template(&mut pieces, &rest[..open]);
        if !messages[i].content.is_empty() {
            pieces.push(Piece::Content(messages[i].content.clone()));
        }
        rest = &rest[close + CLOSE.len_utf8()..];
    }
    if rest.contains(CLOSE) {
        return None;
    }
    push_template(&mut pieces, rest);
    Some(pieces)
}

/// The text the pieces stand for.
fn joined(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Template(t) | Piece::Content(t) => t.as_str(),
        })
        .collect()
}

/// `text` as template text after `pieces`, joined to the last piece when that is template
/// text too (an empty content between them), so template text is never cut where no content is.
fn push_template(pieces: &mut Vec<Piece>, text: &str) {
    match pieces.last_mut() {
        _ if text.is_empty() => {}
        Some(Piece::Template(last)) => last.push_str(text),
        _ => pieces.push(Piece::Template(text.to_owned())),
    }
}

/// Why a chat template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template metadata: {0}")]
    Gguf(#[from] GgufError),

    #[error("{}: cannot read chat template: {reason}", path.display())]
    Config { path: PathBuf, reason: String },

    #[error("chat template does not parse: {0:#}")]
    Syntax(minijinja::Error),

    #[error("chat template failed while rendering: {0:#}")]
    Render(minijinja::Error),
}

/// A checkpoint's chat template, parsed once and rendered per conversation.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Parses `source`; `bos_token` and `eos_token` are the texts templates
    /// may refer to (Llama 3's starts with `{{ bos_token }}`).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Templates are written for Python's Jinja and call str methods (`content.strip()`, `.startswith`).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_owned()).map_err(ChatError::Syntax)?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The template as a `tokenizer_config.json` holds it (`chat_template`, `bos_token`,
    /// `eos_token`), so a checkpoint folder written from any checkpoint keeps its template.
    pub fn tokenizer_config(&self) -> serde_json::Value {
        serde_json::json!({
            "chat_template": self.source,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        })
    }

    /// ChatML, for checkpoints that carry no template.
    pub fn chatml() -> Self {
        Self::new(CHATML, "", "<|im_end|>").expect("the built-in ChatML template parses")
    }

    /// The template in `tokenizer.chat_template`, or ChatML when the key is
    /// absent. BOS/EOS texts come from the token ids the file names.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ChatError> {
        let token = |key: &str| -> Result<String, ChatError> {
            if file.get(key).is_none() {
                return Ok(String::new());
            }
            let id = file.get_u32(key)? as usize;
            let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
            Ok(tokens.get(id).map(|t| t.to_string()).unwrap_or_default())
        };
        let bos = token("tokenizer.ggml.bos_token_id")?;
        let eos = token("tokenizer.ggml.eos_token_id")?;
        match file.get("tokenizer.chat_template") {
            Some(_) => Self::new(file.get_str("tokenizer.chat_template")?, &bos, &eos),
            None => Ok(Self::chatml()),
        }
    }

    /// The `chat_template` of a Hugging Face tokenizer_config.json, or ChatML
    /// when it has none.
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<Self, ChatError> {
        let path = path.as_ref();
        let bad = |reason: String| ChatError::Config { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        // bos_token may be a string or an AddedToken object with a `content` field.
        let token = |key: &str| match &config[key] {
            serde_json::Value::String(s) => s.clone(),
            v => v["content"].as_str().unwrap_or_default().to_owned(),
        };
        match &config["chat_template"] {
            serde_json::Value::String(source) => Self::new(source, &token("bos_token"), &token("eos_token")),
            serde_json::Value::Null => Ok(Self::chatml()),
            _ => Err(bad("`chat_template` is not a string (named template lists are not read yet)".to_owned())),
        }
    }

    /// The prompt for `messages` as [`Piece`]s, so that the messages' contents can be
    /// tokenized as plain text: rendered with each content wrapped in markers, which are then
    /// cut out, and checked against the real rendering. Only that text ([`Rendered::Text`])
    /// when the template does not copy the contents unchanged (it trims or slices them, say) or
    /// a content holds the markers.
    pub fn render_pieces(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Rendered, ChatError> {
        let text = self.render(messages, add_generation_prompt)?;
        if messages.iter().any(|m| m.content.contains([OPEN, CLOSE])) {
            return Ok(Rendered::Text(text));
        }
        let marked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message { role: m.role.clone(), content: format!("{OPEN}{i}{CLOSE}") })
            .collect();
        let marked = self.render(&marked, add_generation_prompt)?;
        match cut(&marked, messages) {
            // The template must render the real contents to the same text (it did not branch
            // on them).
            Some(pieces) if joined(&pieces) == text => Ok(Rendered::Pieces(pieces)),
            _ => Ok(Rendered::Text(text)),
        }
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, it ends
    /// where the assistant's reply should begin.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        let template = self.env.get_template("chat").map_err(ChatError::Render)?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(ChatError::Render)
    }
}

#[cfg(test)]
mod tests;

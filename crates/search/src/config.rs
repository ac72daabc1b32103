//! The settings of one search run, read from TOML (`nasc search --config run.toml`), with the paper's protocol as defaults.
//! Plain data and validation; it reads the one file it is given and nothing else, and an unknown key is an error, never ignored.

use nasc_backend::train::TrainConfig;
use nasc_lang::check::binding;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The seven datasets of the default pool: the paper's six and Fashion-MNIST.
pub const DEFAULT_DATASETS: [&str; 7] =
    ["mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "imagenette", "celeba"];

/// Everything a search run is made of. Stored whole in the run store, so `--resume` needs no
/// config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// The dataset pool; candidate slots go round-robin over it so each gets the same share.
    pub datasets: Vec<String>,
    /// Baseline programs (paths, relative to the config file's folder); trained first, as cycle 0.
    pub baselines: Vec<PathBuf>,
    pub cycles: usize,
    /// Candidates per cycle, over all datasets together.
    pub candidates: usize,
    /// `mutate` (built in) or `openai` (any OpenAI-compatible server).
    pub generator: GeneratorKind,
    /// A prompt template file replacing the built-in one (`prompts/search.md`).
    pub prompt_template: Option<PathBuf>,
    /// What the prompt asks for.
    pub goal: String,
    /// Further attempts for a candidate whose reply is not `ok`, each given the verdict's diagnostic.
    pub retries: usize,
    /// Near-duplicate threshold on estimated structural similarity, in (0, 1].
    pub novelty_threshold: f64,
    /// Parents are picked by a tournament of this many programs (the best accuracy wins) among
    /// the trained programs of the dataset; 1 picks uniformly, and a large number the best so far.
    pub tournament: usize,
    /// Seeds parent choice, mutations and sampling.
    pub seed: u64,
    /// Training threads of the driver's own process. On a GPU, worker i trains on device index
    /// (configured index + i): one worker per device. 0: the driver trains nothing, and
    /// `nasc worker` processes (any number, on any machine that reaches the store) do.
    pub workers: usize,
    /// How candidates are handed to workers and how long the driver waits for them.
    pub queue: Queue,
    pub sampling: Sampling,
    pub mutate: MutateConfig,
    pub openai: OpenAiConfig,
    /// Training settings of the one-epoch proxy; `dataset` is set per candidate.
    pub train: TrainConfig,
    pub curation: Curation,
    pub finetune: Finetune,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            datasets: DEFAULT_DATASETS.iter().map(|s| s.to_string()).collect(),
            baselines: vec![PathBuf::from("zoo/lenet5.arch")],
            cycles: 22,
            candidates: 50,
            generator: GeneratorKind::Mutate,
            prompt_template: None,
            goal: "Raise the first-epoch test accuracy while staying within the budget.".into(),
            retries: 2,
            novelty_threshold: nasc_delta::novelty::DEFAULT_THRESHOLD,
            tournament: 4,
            seed: 0,
            workers: 1,
            queue: Queue::default(),
            sampling: Sampling::default(),
            mutate: MutateConfig::default(),
            openai: OpenAiConfig::default(),
            train: TrainConfig::default(),
            curation: Curation::default(),
            finetune: Finetune::default(),
        }
    }
}

/// The training queue: leases (Optuna's heartbeat model: an interval, a grace time, a retry
/// limit for a candidate whose worker keeps getting lost) and a cycle's quorum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Queue {
    /// A training worker renews its lease this often (seconds).
    pub heartbeat_s: f64,
    /// A lease not renewed for `heartbeat_s + grace_s` runs out, and its candidate goes back to
    /// the queue; a result the lost worker sends later is refused.
    pub grace_s: f64,
    /// A candidate whose lease ran out this many times is finished as `crashed` (a program
    /// that kills its worker is not retried forever).
    pub max_leases: i64,
    /// A cycle ends when this share of its candidates to train has finished, in (0, 1]; the
    /// rest keep training and count when they finish.
    pub quorum: f64,
    /// ... or this many seconds after its candidates were all enqueued, when set.
    pub deadline_s: Option<f64>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue { heartbeat_s: 10.0, grace_s: 30.0, max_leases: 3, quorum: 1.0, deadline_s: None }
    }
}

impl Queue {
    /// The lease terms these settings make.
    pub fn terms(&self) -> crate::store::LeaseTerms {
        crate::store::LeaseTerms { lease_s: self.heartbeat_s + self.grace_s, max_leases: self.max_leases }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorKind {
    Mutate,
    Openai,
}

impl GeneratorKind {
    pub fn name(self) -> &'static str {
        match self {
            GeneratorKind::Mutate => "mutate",
            GeneratorKind::Openai => "openai",
        }
    }
}

/// Sampling settings sent to a language model (ignored by `mutate`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: u32,
    pub top_p: f64,
    pub max_tokens: u32,
    /// Replies per request: up to this many candidates of a cycle share a parent (and so a
    /// prompt), and one request asks the server for all their replies (`n`), which a server
    /// such as `nasc serve` or vLLM decodes as one batch sharing the prompt's cache. 1: one
    /// parent and one request per candidate. Retries, which carry their own diagnostic, are
    /// asked one by one.
    pub n: usize,
    /// OpenAI's penalties on tokens a reply has drawn, per time and once (-2 to 2; 0, the
    /// default, is not sent): a small model that repeats a line can be pushed off it.
    pub frequency_penalty: f64,
    pub presence_penalty: f64,
    /// The temperature of a retry after a `duplicate` or `near_duplicate` verdict, when above
    /// `temperature`: a small model held to the grammar tends to write the same small edit
    /// again, diagnostic or not. The default is the best of the temperatures measured in
    /// BENCHMARKS.md (section "2026-12-07 (session 18)").
    pub retry_temperature: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.35,
            top_k: 50,
            top_p: 0.9,
            max_tokens: 1024,
            n: 1,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            retry_temperature: 1.3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MutateConfig {
    /// Mutations applied in one proposal: a number drawn uniformly from 1 to this.
    pub max_mutations: usize,
}

impl Default for MutateConfig {
    fn default() -> Self {
        MutateConfig { max_mutations: 2 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `/v1/chat/completions`, with the server's chat template.
    Chat,
    /// `/v1/completions`, the prompt as plain text.
    Completions,
}

/// How the grammar of "a unified diff against this parent" travels to the server, if at all
/// (`nasc_delta::delta::grammar`). Every reply is then a diff whose context lines are the parent's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constrain {
    /// No grammar: the model writes what it likes.
    #[serde(rename = "off")]
    Off,
    /// Lark in `structured_outputs.grammar`: `nasc serve`, and vLLM with its llguidance backend.
    #[serde(rename = "lark")]
    Lark,
    /// GBNF in `structured_outputs.grammar`: vLLM's default backend (and `nasc serve`).
    #[serde(rename = "vllm")]
    Vllm,
    /// GBNF in `grammar`: llama.cpp's server (which answers one reply per request whatever `n`).
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The server's base URL, up to and including `/v1`.
    pub base_url: String,
    /// The model, or the LoRA adapter's name as the server knows it.
    pub model: String,
    pub api: Api,
    /// The environment variable holding the API key (sent as a bearer token when set).
    pub api_key_env: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Seconds to wait for one response.
    pub timeout_s: f64,
    /// Further tries of a request answered 429 or 5xx, or timed out, with exponential backoff.
    pub retries: u32,
    /// The first backoff, doubled at each retry.
    pub backoff_ms: u64,
    /// Whether, and in which field and dialect, each request carries its parent's diff grammar.
    pub constrain: Constrain,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "default".into(),
            api: Api::Chat,
            api_key_env: "OPENAI_API_KEY".into(),
            concurrency: 4,
            timeout_s: 120.0,
            retries: 3,
            backoff_ms: 500,
            constrain: Constrain::Off,
        }
    }
}

/// How the supervised corpus is built after each cycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Curation {
    /// A pair (parent → child) enters the corpus when the child's accuracy beats the parent's
    /// by more than this (0: strictly better).
    pub min_gain: f64,
    /// The corpus holds at most this many pairs, the largest gains first (0: no limit).
    pub max_pairs: usize,
}

impl Default for Curation {
    fn default() -> Self {
        Curation { min_gain: 0.0, max_pairs: 0 }
    }
}

/// The fine-tuning step between cycles: `nasc lm finetune` on the base model `model` (the
/// default), or any external `command`. With neither, no fine-tuning (logged each cycle).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Finetune {
    /// The base model `nasc lm finetune` trains adapters for (a .gguf file or a Hugging Face
    /// folder; relative to the config file's folder), the one the server serves.
    pub model: Option<PathBuf>,
    /// Further arguments for `nasc lm finetune`, e.g. ["--max-len", "768", "--grad-accum", "4"].
    pub args: Vec<String>,
    /// The adapter the first fine-tune continues from (e.g. one trained on a `mutate` run's
    /// corpus and served as `[openai] model`); later fine-tunes continue from the previous
    /// cycle's adapter. None: the first starts from a fresh adapter.
    pub init_adapter: Option<PathBuf>,
    /// Chat JSONL files trained on beside each cycle's new pairs (relative to the config file's
    /// folder), e.g. the format corpus the cycle-0 adapter learned (`nasc corpus`): replaying it
    /// keeps what that adapter learned while a few curated pairs are learned on top. With
    /// `model` only (an external `command` is given its files itself).
    pub replay: Vec<PathBuf>,
    /// An external command instead of `nasc lm finetune`; `{corpus}`, `{adapter}`, `{cycle}`,
    /// `{base_model}`, `{init_adapter}`, `{rank}`, `{alpha}`, `{lr}` and `{epochs}` are replaced.
    pub command: Vec<String>,
    /// After a fine-tune, the generator asks for the model named this (`{cycle}` replaced).
    pub adapter_name: String,
    /// Ask the `openai` server to load each new adapter under `adapter_name` through
    /// `POST {base_url}/load_lora_adapter` (as `nasc serve` and vLLM with
    /// VLLM_ALLOW_RUNTIME_LORA_UPDATING=True do). False: the command makes the server serve it.
    pub load_adapter: bool,
    /// LoRA settings.
    pub rank: u32,
    pub alpha: f64,
    pub lr: f64,
    pub epochs: u32,
}

impl Default for Finetune {
    fn default() -> Self {
        Finetune {
            model: None,
            args: Vec::new(),
            init_adapter: None,
            replay: Vec::new(),
            command: Vec::new(),
            adapter_name: "search-{cycle}".into(),
            load_adapter: true,
            rank: 16,
            alpha: 32.0,
            lr: 2e-4,
            epochs: 1,
        }
    }
}

impl Finetune {
    /// Whether a fine-tuning step runs between cycles.
    pub fn enabled(&self) -> bool {
        self.model.is_some() || !self.command.is_empty()
    }
}

/// A config that cannot be used, with where and why.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl SearchConfig {
    /// Reads and validates `path`; relative baseline and template paths are taken from its folder.
    pub fn load(path: &Path) -> Result<SearchConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        let mut config = SearchConfig::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        for b in &mut config.baselines {
            if b.is_relative() {
                *b = dir.join(&*b);
            }
        }
        if let Some(t) = &mut config.prompt_template {
            if t.is_relative() {
                *t = dir.join(&*t);
            }
        }
        let finetune = &mut config.finetune;
        for p in [&mut finetune.model, &mut finetune.init_adapter].into_iter().flatten().chain(&mut finetune.replay) {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        if config.train.data_root.is_relative() && config.train.data_root != nasc_backend::train::default_data_root() {
            config.train.data_root = dir.join(&config.train.data_root);
        }
        Ok(config)
    }

    /// Parses TOML text and validates it.
    pub fn parse(text: &str) -> Result<SearchConfig, ConfigError> {
        let value: toml::Table = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        // `TrainConfig` accepts unknown keys (it is shared with other callers); here a misspelt
        // training setting must not pass silently.
        if let Some(toml::Value::Table(train)) = value.get("train") {
            let known = serde_json::to_value(TrainConfig::default()).expect("the training config serialises");
            let known = known.as_object().expect("a struct serialises to an object");
            for key in train.keys() {
                if !known.contains_key(key) {
                    let mut names: Vec<&str> = known.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    return Err(ConfigError(format!(
                        "unknown key `{key}` in [train]; expected one of {}",
                        names.join(", ")
                    )));
                }
            }
        }
        let config: SearchConfig = value.try_into().map_err(|e: toml::de::Error| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values the types cannot: names, ranges, non-empty lists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if self.datasets.is_empty() {
            return bad("`datasets` is empty: name at least one (see `nasc datasets`)".into());
        }
        for d in &self.datasets {
            if binding::dataset(d).is_none() {
                return bad(format!(
                    "unknown dataset `{d}` in `datasets`; known: {}",
                    binding::dataset_names().join(", ")
                ));
            }
        }
        if self.baselines.is_empty() {
            return bad("`baselines` is empty: give at least one program (for example zoo/lenet5.arch)".into());
        }
        if self.cycles == 0 || self.candidates == 0 {
            return bad("`cycles` and `candidates` must be at least 1".into());
        }
        if self.tournament == 0 || self.mutate.max_mutations == 0 {
            return bad("`tournament` and `mutate.max_mutations` must be at least 1".into());
        }
        let q = &self.queue;
        if !(q.heartbeat_s > 0.0 && q.heartbeat_s.is_finite() && q.grace_s >= 0.0 && q.grace_s.is_finite())
            || q.max_leases < 1
            || !(q.quorum > 0.0 && q.quorum <= 1.0)
            || q.deadline_s.is_some_and(|d| !(d > 0.0 && d.is_finite()))
        {
            return bad(
                "[queue]: heartbeat_s must be positive, grace_s ≥ 0, max_leases ≥ 1, quorum in (0, 1], deadline_s positive"
                    .into(),
            );
        }
        if !(self.novelty_threshold > 0.0 && self.novelty_threshold <= 1.0) {
            return bad(format!("`novelty_threshold` must be in (0, 1], got {}", self.novelty_threshold));
        }
        let s = &self.sampling;
        if s.temperature.is_nan()
            || s.temperature < 0.0
            || s.retry_temperature.is_nan()
            || s.retry_temperature < 0.0
            || s.top_p.is_nan()
            || s.top_p <= 0.0
            || s.top_p > 1.0
            || s.max_tokens == 0
            || s.n == 0
            || !(-2.0..=2.0).contains(&s.frequency_penalty)
            || !(-2.0..=2.0).contains(&s.presence_penalty)
        {
            return bad(
                "[sampling]: temperature and retry_temperature must be ≥ 0, top_p in (0, 1], max_tokens and n ≥ 1, the penalties in [-2, 2]"
                    .into(),
            );
        }
        let f = &self.finetune;
        if f.model.is_some() && !f.command.is_empty() {
            return bad(
                "[finetune]: give `model` (nasc lm finetune) or `command` (an external fine-tuner), not both".into()
            );
        }
        if !f.replay.is_empty() && f.model.is_none() {
            return bad(
                "[finetune] replay needs `model` (nasc lm finetune); an external `command` names its own data files"
                    .into(),
            );
        }
        if f.enabled() && f.adapter_name.is_empty() {
            return bad("[finetune] adapter_name is empty: the generator needs a name for each new adapter".into());
        }
        if self.train.batch == 0 || self.train.epochs == 0 || self.train.eval_batch == 0 {
            return bad("[train]: batch, eval_batch and epochs must be at least 1".into());
        }
        let o = &self.openai;
        if self.generator == GeneratorKind::Openai {
            if !(o.base_url.starts_with("http://") || o.base_url.starts_with("https://")) {
                return bad(format!("[openai] base_url must start with http:// or https://, got `{}`", o.base_url));
            }
            if o.concurrency == 0 || o.timeout_s.is_nan() || o.timeout_s <= 0.0 {
                return bad("[openai]: concurrency must be at least 1 and timeout_s positive".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_is_the_papers_protocol() {
        let c = SearchConfig::parse("").unwrap();
        assert_eq!((c.cycles, c.candidates, c.retries), (22, 50, 2));
        assert_eq!(c.sampling, Sampling::default());
        assert_eq!((c.sampling.temperature, c.sampling.top_k, c.sampling.max_tokens), (0.35, 50, 1024));
        assert_eq!(c.datasets.len(), 7);
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let e = SearchConfig::parse("cycels = 3").unwrap_err().0;
        assert!(e.contains("cycels"), "{e}");
        let e = SearchConfig::parse("[train]\nbatchsize = 3").unwrap_err().0;
        assert!(e.contains("batchsize") && e.contains("[train]"), "{e}");
        let e = SearchConfig::parse("[sampling]\ntemp = 1.0").unwrap_err().0;
        assert!(e.contains("temp"), "{e}");
    }

    #[test]
    fn the_example_config_reads_and_states_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/search.toml"));
        let c = SearchConfig::load(path).unwrap();
        let d = SearchConfig::default();
        assert_eq!(c.datasets, ["fashion-mnist"]);
        assert!(c.baselines[0].ends_with("zoo/lenet5.arch") && c.baselines[0].is_file());
        let same = SearchConfig {
            datasets: d.datasets.clone(),
            baselines: d.baselines.clone(),
            train: TrainConfig { data_root: d.train.data_root.clone(), ..c.train.clone() },
            ..c.clone()
        };
        assert_eq!(same, d, "examples/search.toml must state the defaults");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(SearchConfig::parse("datasets = [\"imagenet\"]").unwrap_err().0.contains("imagenet"));
        assert!(SearchConfig::parse("cycles = 0").is_err());
        assert!(SearchConfig::parse("novelty_threshold = 1.5").is_err());
        assert!(SearchConfig::parse("generator = \"gpt\"").is_err());
        let c = SearchConfig::parse("generator = \"openai\"\n[openai]\nbase_url = \"ftp://x\"").unwrap_err();
        assert!(c.0.contains("base_url"), "{}", c.0);
        assert!(SearchConfig::parse("[sampling]\nn = 0").unwrap_err().0.contains("n ≥ 1"));
        let both = SearchConfig::parse("[finetune]\nmodel = \"m.gguf\"\ncommand = [\"x\"]").unwrap_err().0;
        assert!(both.contains("not both"), "{both}");
        let unnamed = SearchConfig::parse("[finetune]\nmodel = \"m.gguf\"\nadapter_name = \"\"").unwrap_err().0;
        assert!(unnamed.contains("adapter_name"), "{unnamed}");
        let replay = SearchConfig::parse("[finetune]\ncommand = [\"x\"]\nreplay = [\"f.jsonl\"]").unwrap_err().0;
        assert!(replay.contains("replay needs `model`"), "{replay}");
    }
}

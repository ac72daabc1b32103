//! The search against a real llama.cpp server: `llama-cpp-python[server]` from PyPI serving
//! SmolLM2-135M-Instruct, with `[openai] constrain = "llama.cpp"` (each parent's diff grammar as
//! GBNF in llama.cpp's `grammar` field). That server answers one reply whatever `n` asks, which
//! the generator must notice and make up for with one request per reply.
//!
//! llama-cpp-python is a C++ build of several minutes, so the test suite does not install it:
//! this test runs where it is installed (the Python named by `NASC_LLAMA_CPP_PYTHON`, else
//! `~/.cache/nasc/llama-cpp-venv/bin/python`) and says it was skipped where it is not. To
//! install it (a native build dies with SIGILL on some machines, hence the flags):
//!
//! ```text
//! python3 -m venv ~/.cache/nasc/llama-cpp-venv
//! CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF \
//!   -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ~/.cache/nasc/llama-cpp-venv/bin/pip install 'llama-cpp-python[server]'
//! ```

#[path = "common/lenet5_search.rs"]
mod lenet5_search;
#[path = "common/smollm2.rs"]
mod smollm2;

use lenet5_search::{search_through, Server};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Python that has `llama_cpp.server`, or `None` (said on stdout) where none has.
fn llama_cpp_python() -> Option<PathBuf> {
    let python = match std::env::var_os("NASC_LLAMA_CPP_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_default()
            .join("nasc/llama-cpp-venv/bin/python"),
    };
    let has = Command::new(&python)
        .args(["-c", "import llama_cpp.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        println!(
            "skipped: llama-cpp-python[server] is not installed for {} (set NASC_LLAMA_CPP_PYTHON, or see this \
             file's header for the install)",
            python.display()
        );
        return None;
    }
    Some(python)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /v1/models` answered 200.
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /v1/models HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

fn start(python: &PathBuf, model: &str) -> Server {
    let port = free_port();
    let mut child = Command::new(python)
        .args(["-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1", "--n_ctx", "4096", "--port"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the llama.cpp server starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !answers(port) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the llama.cpp server ended ({status}) before answering");
        }
        assert!(Instant::now() < deadline, "the llama.cpp server did not answer within 120 s");
        std::thread::sleep(Duration::from_millis(300));
    }
    Server { child, url: format!("http://127.0.0.1:{port}/v1") }
}

/// A constrained cycle through llama.cpp: two groups of n = 2 from LeNet-5. Every reply comes
/// back (two requests per group, since the server answers one choice to n = 2), and every reply
/// that ends before `max_tokens` is a fenced diff that extracts and applies to its parent.
#[test]
fn a_constrained_search_cycle_through_llama_cpp_gets_every_reply_and_each_applies() {
    let Some(python) = llama_cpp_python() else { return };
    let Some(model) = smollm2::smollm2_path() else { return };
    let server = start(&python, model.to_str().unwrap());
    let root = env!("CARGO_MANIFEST_DIR");
    let (stderr, candidates) = search_through(
        &server.url,
        "search-llama-cpp",
        4,
        &format!("prompt_template = \"{root}/prompts/compact.md\""),
        "max_tokens = 300\nn = 2",
        "concurrency = 1\nconstrain = \"llama.cpp\"",
    );
    assert!(stderr.contains("answered one choice to n = 2"), "the generator did not notice `n` was ignored: {stderr}");
    assert_eq!(candidates.len(), 4, "{candidates:#?}");
    let ended: Vec<_> = candidates.iter().filter(|c| c.reply_tokens.is_some_and(|t| t < 300)).collect();
    assert!(!ended.is_empty(), "every reply ran into max_tokens: {candidates:#?}");
    // Even a reply cut short by `max_tokens` opens with the grammar's fence and headers.
    for c in candidates.iter() {
        assert_ne!(c.front_verdict, nasc_delta::Verdict::NoDiff, "not the grammar's: {c:#?}");
    }
    for c in ended {
        use nasc_delta::Verdict::*;
        assert!(
            !matches!(c.front_verdict, NoDiff | MalformedDiff | DoesNotApply | Ambiguous),
            "a constrained reply did not extract and apply: {:?}\n{c:#?}",
            c.front_verdict
        );
    }
}

//! `nasc serve`'s HTTP side: hyper's HTTP/1.1 server connections, one per accepted socket,
//! routed by axum, on a tokio runtime of two threads of its own. What a production server needs
//! of HTTP comes from hyper (framing, keep-alive, chunked bodies, `Expect: 100-continue` sent
//! only when a handler reads the body, a header size limit, a deadline for the request's head);
//! what is nasc's own is here: the connection cap (503), the body's deadline (408) and size
//! limit (413), the API key (401, before any body is read), the queue bound (429), errors as the
//! OpenAI protocol's error objects, and a graceful stop on SIGTERM or Ctrl-C.

use super::{adapter_request, models, not_served, now, parse, request_id, Event, HttpError, Info, Msg, TokenTexts};
use crate::generate::TokenLogprob;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Semaphore;

/// The most bytes of a request's line and headers.
const MAX_HEAD: usize = 64 * 1024;
/// The most bytes of a request's body.
const MAX_BODY: usize = 32 * 1024 * 1024;

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(status, &self.body())
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Starts serving `listener` on a thread of its own, which ends (with `Ok`) once a SIGTERM or
/// SIGINT has stopped it and the requests in flight have been answered, dropping `info` and
/// with it the model thread's channel. The signal handlers are in place when this returns.
pub(super) fn start(
    listener: std::net::TcpListener,
    info: Info,
    max_connections: usize,
) -> Result<std::thread::JoinHandle<Result<(), String>>, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("nasc-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    let signals = {
        let _entered = runtime.enter();
        let on = |kind: SignalKind| signal(kind).map_err(|e| format!("cannot watch for signals: {e}"));
        (on(SignalKind::terminate())?, on(SignalKind::interrupt())?)
    };
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("nasc-http".into())
        .spawn(move || runtime.block_on(accept(listener, info, max_connections, signals)))
        .map_err(|e| format!("cannot start the HTTP thread: {e}"))
}

/// Accepts connections until a signal, each served by hyper on a task of its own while a
/// connection slot is free (else answered 503 and closed); then lets those in flight finish.
async fn accept(
    listener: std::net::TcpListener,
    info: Info,
    max_connections: usize,
    (mut term, mut int): (Signal, Signal),
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let (timeout, grace) = (info.request_timeout, info.shutdown_timeout);
    let app = router(info);
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener itself is fine, so wait a moment and go on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let busy = HttpError {
                status: 503,
                ..HttpError::server(
                    "the server has as many connections open as it serves (--max-connections); retry".into(),
                )
            };
            tokio::spawn(answer_and_close(tcp, busy));
            continue;
        };
        // A second handle on the socket, to answer 408 if hyper gives up waiting for the head.
        let Ok((tcp, spare)) = tcp.into_std().and_then(|s| Ok((s.try_clone()?, s))) else { continue };
        let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else { continue };
        let tcp = Heard::new(tcp);
        let partial = tcp.partial.clone();
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .max_buf_size(MAX_HEAD)
            // A client may close its sending side once its request is out and still wait for
            // the answer (`shutdown(SHUT_WR)`, `curl --http1.1` with some proxies): hyper would
            // otherwise take the end of input for the end of the connection and not reply.
            .half_close(true)
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // hyper's head timeout also ends an idle keep-alive connection: that one closes
                // without a word (a 408 there could be read as the answer to the client's next
                // request); one with part of a request gets its 408.
                if e.is_timeout() && partial.load(Ordering::SeqCst) {
                    if let Ok(spare) = tokio::net::TcpStream::from_std(spare) {
                        let late = HttpError {
                            status: 408,
                            ..HttpError::bad(format!("the request took over {timeout:?} to arrive"), None)
                        };
                        answer_and_close(spare, late).await;
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    eprintln!("nasc serve: stopping; answering the requests in flight first");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        // A client that does not read its answer cannot hold the process: its generation stops
        // once its connection is dropped with the runtime.
        eprintln!("nasc serve: some requests were still open after {grace:?} (--shutdown-timeout); closing them");
    }
    Ok(())
}

/// A connection's socket that notes whether bytes of a request have arrived since its last
/// answer was written.
struct Heard {
    tcp: tokio::net::TcpStream,
    partial: Arc<std::sync::atomic::AtomicBool>,
}

impl Heard {
    fn new(tcp: tokio::net::TcpStream) -> Heard {
        Heard { tcp, partial: Arc::new(std::sync::atomic::AtomicBool::new(false)) }
    }
}

impl tokio::io::AsyncRead for Heard {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.partial.store(true, Ordering::SeqCst);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Heard {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // An answer is written once its request has arrived whole.
        self.partial.store(false, Ordering::SeqCst);
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, data)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Writes `e` as a whole HTTP/1.1 response on a connection hyper is not serving, and closes it.
async fn answer_and_close(mut tcp: tokio::net::TcpStream, e: HttpError) {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = e.body().to_string();
    let text = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let write = async {
        tcp.write_all(text.as_bytes()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
}

fn router(info: Info) -> Router {
    Router::new()
        .route("/health", any(health))
        .route("/metrics", any(metrics))
        .route("/v1/models", any(list_models))
        .route("/v1/models/{*id}", any(one_model))
        .route("/v1/chat/completions", any(chat))
        .route("/v1/completions", any(completions))
        .route("/v1/load_lora_adapter", any(load_adapter))
        .route("/v1/unload_lora_adapter", any(unload_adapter))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(info.clone(), guard))
        .with_state(info)
}

/// With an API key, every route but /health needs `Authorization: Bearer KEY`: checked on the
/// head, before any body is read (so a refused request never gets `100 Continue`).
async fn guard(State(info): State<Info>, request: Request, next: Next) -> Response {
    if let Some(key) = &info.api_key {
        let token = request.headers().get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if request.uri().path() != "/health" && !token.is_some_and(|t| same_secret(t, key.as_bytes())) {
            return HttpError {
                status: 401,
                code: Some("invalid_api_key"),
                ..HttpError::bad("this server needs `Authorization: Bearer KEY` (its --api-key)".into(), None)
            }
            .into_response();
        }
    }
    next.run(request).await
}

/// Compares a token with the key in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn only(request: &Request, method: Method) -> Result<(), HttpError> {
    if *request.method() == method {
        return Ok(());
    }
    Err(HttpError {
        status: 405,
        ..HttpError::bad(
            format!(
                "{} {} is not allowed; use {method}",
                shown(request.method().as_str()),
                shown(request.uri().path())
            ),
            None,
        )
    })
}

/// The most characters of a client's text (a name, a path, a field) an error message quotes.
const SHOWN_CHARS: usize = 64;

/// `text` as an error message quotes it: up to [`SHOWN_CHARS`] characters, then how much more.
pub(crate) fn shown(text: &str) -> String {
    crate::clipped(text, SHOWN_CHARS)
}

/// The request's body, whole: at most [`MAX_BODY`] bytes (413), within the request deadline
/// (408). A Content-Length over the limit is refused before anything is read.
async fn body(info: &Info, request: Request) -> Result<Bytes, HttpError> {
    let too_large = || HttpError { status: 413, ..HttpError::bad(format!("the body is over {MAX_BODY} bytes"), None) };
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let read = axum::body::to_bytes(request.into_body(), MAX_BODY);
    match tokio::time::timeout(info.request_timeout, read).await {
        Err(_) => Err(HttpError {
            status: 408,
            ..HttpError::bad(format!("the request's body took over {:?} to arrive", info.request_timeout), None)
        }),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<http_body_util::LengthLimitError>().is_some());
            Err(if over { too_large() } else { HttpError::bad(format!("reading the request's body: {e}"), None) })
        }
    }
}

async fn health(request: Request) -> Response {
    match only(&request, Method::GET) {
        Ok(()) => json_response(StatusCode::OK, &json!({})),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(info): State<Info>, request: Request) -> Response {
    if let Err(e) = only(&request, Method::GET) {
        return e.into_response();
    }
    let mut r = Response::new(Body::from(info.stats.text(info.queued.load(Ordering::SeqCst))));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

async fn list_models(State(info): State<Info>, request: Request) -> Response {
    match only(&request, Method::GET) {
        Ok(()) => json_response(StatusCode::OK, &models(&info)),
        Err(e) => e.into_response(),
    }
}

async fn one_model(State(info): State<Info>, request: Request) -> Response {
    if let Err(e) = only(&request, Method::GET) {
        return e.into_response();
    }
    // Ids are percent-decoded as other servers decode them (an adapter's name may hold a space).
    let raw = &request.uri().path()["/v1/models/".len()..];
    let id =
        percent_encoding::percent_decode_str(raw).decode_utf8().map_or_else(|_| raw.to_string(), |s| s.into_owned());
    match models(&info)["data"].as_array().and_then(|d| d.iter().find(|m| m["id"] == id.as_str())) {
        Some(m) => json_response(StatusCode::OK, m),
        None => not_served(&id, &info.names()).into_response(),
    }
}

async fn no_route(request: Request) -> Response {
    HttpError {
        status: 404,
        code: Some("not_found"),
        ..HttpError::bad(
            format!("no route for {} {}", shown(request.method().as_str()), shown(request.uri().path())),
            None,
        )
    }
    .into_response()
}

async fn load_adapter(State(info): State<Info>, request: Request) -> Response {
    adapter(info, request, true).await
}

async fn unload_adapter(State(info): State<Info>, request: Request) -> Response {
    adapter(info, request, false).await
}

async fn adapter(info: Info, request: Request, load: bool) -> Response {
    let answer = async {
        only(&request, Method::POST)?;
        let bytes = body(&info, request).await?;
        adapter_request(&bytes, load, &info).await
    };
    match answer.await {
        Ok(message) => json_response(StatusCode::OK, &json!(message)),
        Err(e) => e.into_response(),
    }
}

async fn chat(State(info): State<Info>, request: Request) -> Response {
    generate(info, request, true).await
}

async fn completions(State(info): State<Info>, request: Request) -> Response {
    generate(info, request, false).await
}

/// A generation request: checked here, queued for the model thread (429 when the queue is
/// full), answered whole or as server-sent events.
async fn generate(info: Info, request: Request, chat: bool) -> Response {
    let checked = async {
        only(&request, Method::POST)?;
        let bytes = body(&info, request).await?;
        parse(&bytes, chat, &info)
    };
    let mut w = match checked.await {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    w.reply = tx;
    let (stream, include_usage, n, model) = (w.stream, w.include_usage, w.params.n, w.model.clone());
    let with_logprobs = w.params.logprobs.is_some();
    if info.queued.fetch_add(1, Ordering::SeqCst) >= info.max_queue {
        info.queued.fetch_sub(1, Ordering::SeqCst);
        return HttpError {
            status: 429,
            ..HttpError::bad(
                format!("{} generation requests are already waiting or running (--max-queue); retry", info.max_queue),
                None,
            )
        }
        .into_response();
    }
    if info.work.send(Msg::Generate(w)).is_err() {
        info.queued.fetch_sub(1, Ordering::SeqCst);
        return HttpError::server("the model thread has stopped".into()).into_response();
    }
    let prompt_tokens = match rx.recv().await {
        Some(Event::Started(p)) => p,
        Some(Event::Failed(e)) => return e.into_response(),
        _ => return HttpError::server("the generation stopped unexpectedly".into()).into_response(),
    };
    let reply = Reply { id: request_id(chat), created: now(), model, chat, prompt_tokens, with_logprobs };
    if !stream {
        return match rx.recv().await {
            Some(Event::Done(g, texts)) => json_response(StatusCode::OK, &reply.whole(&g, &texts)),
            Some(Event::Failed(e)) => e.into_response(),
            _ => HttpError::server("the generation stopped unexpectedly".into()).into_response(),
        };
    }
    // Server-sent events: the role of each choice (chat), one chunk per text piece, each
    // choice's finish reason, the usage if asked, and [DONE]. Dropping the stream (the client
    // left) drops the receiver, which stops the generation at its next token.
    let reply = Arc::new(reply);
    let roles: Vec<Result<String, Infallible>> =
        if chat { (0..n).map(|i| Ok(reply.role(i))).collect() } else { Vec::new() };
    let events = futures_util::stream::unfold(Some(rx), move |rx| {
        let reply = reply.clone();
        async move {
            let mut rx = rx?;
            let text = match rx.recv().await? {
                Event::Piece(i, text) => {
                    return Some((Ok(reply.chunk(reply.piece(i, &text, Value::Null), None)), Some(rx)))
                }
                Event::Started(_) => return Some((Ok(String::new()), Some(rx))),
                Event::Done(g, _) => {
                    let mut out: String = g
                        .completions
                        .iter()
                        .enumerate()
                        .map(|(i, c)| reply.chunk(reply.piece(i, "", json!(c.finish.as_str())), None))
                        .collect();
                    if include_usage {
                        out.push_str(&reply.chunk(json!([]), Some(reply.usage(&g))));
                    }
                    out
                }
                Event::Failed(e) => format!("data: {}\n\n", e.body()),
            };
            Some((Ok(text + "data: [DONE]\n\n"), None))
        }
    });
    let body = Body::from_stream(futures_util::stream::iter(roles).chain(events));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// What every answer to one generation request repeats.
struct Reply {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    prompt_tokens: usize,
    /// Whether the request asked for log-probabilities.
    with_logprobs: bool,
}

impl Reply {
    fn usage(&self, g: &crate::generate::Generation) -> Value {
        // OpenAI's field for the prompt's tokens that came from the prefix cache.
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": g.generated_tokens(),
               "total_tokens": self.prompt_tokens + g.generated_tokens(),
               "prompt_tokens_details": {"cached_tokens": g.cached_prompt_tokens}})
    }

    /// A reply's log-probabilities as the endpoint gives them: chat's `content` list of tokens
    /// with their top alternatives, or the completions API's parallel lists.
    fn logprobs(&self, tokens: &[TokenLogprob], texts: &TokenTexts, text: &str) -> Value {
        let t = |id: u32| texts.get(&id).map_or("", String::as_str);
        // A JSON number, or null where the model gave none (NaN logits).
        let lp = |v: f32| {
            if v.is_finite() {
                json!(v)
            } else if v < 0.0 {
                json!(-9999.0)
            } else {
                Value::Null
            }
        };
        // UTF-8 bytes of a token's text, unless it is part of a character (shown as U+FFFD).
        let bytes = |s: &str| if s.contains('\u{FFFD}') { Value::Null } else { json!(s.as_bytes()) };
        if self.chat {
            let content: Vec<Value> = tokens
                .iter()
                .map(|tl| {
                    let top: Vec<Value> = tl
                        .top
                        .iter()
                        .map(|&(id, v)| json!({"token": t(id), "logprob": lp(v), "bytes": bytes(t(id))}))
                        .collect();
                    json!({"token": t(tl.token), "logprob": lp(tl.logprob), "bytes": bytes(t(tl.token)),
                           "top_logprobs": top})
                })
                .collect();
            return json!({"content": content});
        }
        let mut offset = 0;
        let mut offsets = Vec::with_capacity(tokens.len());
        for tl in tokens {
            offsets.push(offset.min(text.len()));
            offset += t(tl.token).len();
        }
        let top: Vec<Value> = tokens
            .iter()
            .map(|tl| {
                let map: serde_json::Map<String, Value> =
                    tl.top.iter().map(|&(id, v)| (t(id).to_string(), lp(v))).collect();
                Value::Object(map)
            })
            .collect();
        json!({"tokens": tokens.iter().map(|tl| t(tl.token)).collect::<Vec<_>>(),
               "token_logprobs": tokens.iter().map(|tl| lp(tl.logprob)).collect::<Vec<_>>(),
               "top_logprobs": top, "text_offset": offsets})
    }

    /// The whole answer, when not streamed.
    fn whole(&self, g: &crate::generate::Generation, texts: &TokenTexts) -> Value {
        let choices: Vec<Value> = g
            .completions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let body = if self.chat {
                    ("message", json!({"role": "assistant", "content": c.text}))
                } else {
                    ("text", json!(c.text))
                };
                // `completion_tokens` per choice is ours: the usage only counts all choices together.
                let logprobs =
                    if self.with_logprobs { self.logprobs(&c.logprobs, texts, &c.text) } else { Value::Null };
                let mut choice = json!({"index": i, "finish_reason": c.finish.as_str(), "logprobs": logprobs,
                                        "completion_tokens": c.tokens.len()});
                choice[body.0] = body.1;
                choice
            })
            .collect();
        let object = if self.chat { "chat.completion" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "choices": choices, "usage": self.usage(g)})
    }

    /// One server-sent event of `choices` (and the usage, on the last).
    fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let object = if self.chat { "chat.completion.chunk" } else { "text_completion" };
        let mut c = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
                           "choices": choices});
        if let Some(usage) = usage {
            c["usage"] = usage;
        }
        format!("data: {c}\n\n")
    }

    /// Choice `i`'s piece of text, or its finish reason.
    fn piece(&self, i: usize, text: &str, finish: Value) -> Value {
        if self.chat {
            let delta = if text.is_empty() { json!({}) } else { json!({"content": text}) };
            json!([{"index": i, "delta": delta, "finish_reason": finish, "logprobs": null}])
        } else {
            json!([{"index": i, "text": text, "finish_reason": finish, "logprobs": null}])
        }
    }

    /// The first event of a chat choice: its role.
    fn role(&self, i: usize) -> String {
        let first = json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null, "logprobs": null}]);
        self.chunk(first, None)
    }
}

//! A small HTTP/1.1 file server on 127.0.0.1 for the fetch tests: GET with Range, and injectable faults.
//! It must not listen anywhere but loopback, and stops (joins its thread) when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
}

#[derive(Clone, Default)]
pub struct Faults {
    /// The first response with a body sends only this many body bytes, then hangs up.
    pub cut_first_body_after: Option<usize>,
    /// Sent as Content-Type for every file.
    pub content_type: Option<&'static str>,
    /// Answer every request with the whole file (200), as servers without Range support do.
    pub ignore_range: bool,
}

pub struct Server {
    pub url: String,
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(files: HashMap<String, Vec<u8>>, faults: Faults) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let _ = serve(stream, &files, &faults, &requests, &served);
                }
            })
        };
        Server { url: format!("http://{addr}"), addr, requests, stop, thread: Some(thread) }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    faults: &Faults,
    requests: &Mutex<Vec<Request>>,
    served: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    requests.lock().unwrap().push(Request { path: path.clone(), range: range.clone() });
    let content_type = faults.content_type.unwrap_or("application/octet-stream");
    let Some(body) = files.get(path.trim_start_matches('/')) else {
        write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    };
    let start = range
        .as_deref()
        .filter(|_| !faults.ignore_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let (status, slice) = match start {
        Some(s) if s >= body.len() => {
            write!(stream, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", body.len())?;
            return Ok(());
        }
        Some(s) => {
            (format!("206 Partial Content\r\nContent-Range: bytes {s}-{}/{}", body.len() - 1, body.len()), &body[s..])
        }
        None => ("200 OK".to_string(), &body[..]),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        slice.len()
    )?;
    let first = served.fetch_add(1, Ordering::SeqCst) == 0;
    match faults.cut_first_body_after {
        Some(cut) if first && cut < slice.len() => {
            stream.write_all(&slice[..cut])?;
            stream.flush()?;
            stream.shutdown(Shutdown::Both)?;
        }
        _ => stream.write_all(slice)?,
    }
    Ok(())
}

//! A small SMTP server for tests, on a real port: it speaks the part of RFC 5321 that a client needs to hand over
//! mail (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and keeps every message, so a test reads the mail the
//! service sent and follows its link as the recipient would. Threads and blocking sockets, so it serves in-process
//! tests and child processes alike, whatever runtime the test runs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and encoded body), dot-unstuffed.
    pub data: String,
}

impl Mail {
    /// The body, decoded from its `Content-Transfer-Encoding` (7bit, 8bit, quoted-printable or base64).
    pub fn body(&self) -> String {
        let (head, body) = self.data.split_once("\r\n\r\n").unwrap_or((&self.data, ""));
        let encoding = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-transfer-encoding").then(|| v.trim().to_ascii_lowercase())
            })
            .unwrap_or_default();
        match encoding.as_str() {
            "base64" => {
                let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD.decode(compact).expect("a base64 body");
                String::from_utf8(bytes).expect("a UTF-8 body")
            }
            "quoted-printable" => quoted_printable(body),
            _ => body.to_string(),
        }
    }

    /// The e-mail verification link in the body.
    pub fn verification_link(&self) -> String {
        let body = self.body();
        let at = body.find("/verify-email?token=").unwrap_or_else(|| panic!("no verification link in {body}"));
        let start = body[..at].rfind("http").expect("the link's scheme");
        let token_at = at + "/verify-email?token=".len();
        let end = token_at + body[token_at..].find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(body.len() - token_at);
        body[start..end].to_string()
    }
}

fn quoted_printable(s: &str) -> String {
    let soft = s.replace("=\r\n", "").replace("=\n", "");
    let b = soft.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).expect("a UTF-8 body")
}

/// The running server; it lives as long as the test process.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl Sink {
    pub fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the SMTP sink binds");
        let addr = listener.local_addr().expect("an address");
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let kept = mails.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &kept);
                });
            }
        });
        Sink { addr, mails }
    }

    /// `MARKETFLOW_SMTP_URL` for this server.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// The mails to `to` so far.
    pub fn mails_to(&self, to: &str) -> Vec<Mail> {
        self.mails().into_iter().filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to))).collect()
    }

    /// The `n`th mail (from 1) to `to`, waiting up to 10 s of real time for it to arrive.
    pub async fn nth_mail_to(&self, to: &str, n: usize) -> Mail {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = self.mails_to(to).into_iter().nth(n - 1) {
                return m;
            }
            assert!(Instant::now() < deadline, "no mail #{n} to {to} within 10 s; got {:?}", self.mails());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The first mail to `to`.
    pub async fn mail_to(&self, to: &str) -> Mail {
        self.nth_mail_to(to, 1).await
    }
}

fn path_of(arg: &str) -> String {
    let a = arg.find('<').map(|i| i + 1).unwrap_or(0);
    let b = arg.rfind('>').unwrap_or(arg.len());
    arg[a..b.max(a)].to_string()
}

fn serve(stream: TcpStream, kept: &Mutex<Vec<Mail>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"220 sink.test ESMTP test sink\r\n")?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            out.write_all(b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")?;
        } else if upper.starts_with("HELO") {
            out.write_all(b"250 sink.test\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            from = path_of(&cmd[10..]);
            to.clear();
            out.write_all(b"250 2.1.0 OK\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            to.push(path_of(&cmd[8..]));
            out.write_all(b"250 2.1.5 OK\r\n")?;
        } else if upper == "DATA" {
            if to.is_empty() {
                out.write_all(b"503 5.5.1 RCPT first\r\n")?;
                continue;
            }
            out.write_all(b"354 end with <CRLF>.<CRLF>\r\n")?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            kept.lock().unwrap().push(Mail { from: from.clone(), to: std::mem::take(&mut to), data });
            out.write_all(b"250 2.0.0 queued\r\n")?;
        } else if upper == "RSET" {
            to.clear();
            out.write_all(b"250 2.0.0 OK\r\n")?;
        } else if upper == "NOOP" {
            out.write_all(b"250 2.0.0 OK\r\n")?;
        } else if upper == "QUIT" {
            out.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"502 5.5.2 not implemented\r\n")?;
        }
    }
}

//! A recording upstream, `serve`'s proxy over the mock-chain engine, and a raw HTTP/1.1 client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use x402_upto_app::serve::listener::serve_connections;
use x402_upto_app::serve::{ServeConfig, proxy_router};

use super::support::Fixture;

/// Every request target the upstream received, in order.
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<String>>>);

impl Seen {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// The upstream: records the target, then behaves as the query asks: `charge=<raw>` answers
/// with that `X-Upto-Charge`, `sleep=<ms>` waits first, `status=<n>` answers with it.
pub async fn upstream() -> (String, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let app = Router::new().fallback(move |req: Request| {
        let record = record.clone();
        async move {
            let target = req
                .uri()
                .path_and_query()
                .map_or(String::new(), |p| p.as_str().to_owned());
            record.0.lock().push(target.clone());
            let query: HashMap<String, String> = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            if let Some(ms) = query.get("sleep").and_then(|v| v.parse().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut res = Response::new(axum::body::Body::from(format!("upstream saw {target}")));
            if let Some(code) = query.get("status").and_then(|v| v.parse().ok()) {
                *res.status_mut() = http::StatusCode::from_u16(code).unwrap();
            }
            if let Some(raw) = query.get("charge") {
                let value = raw.replace("%20", " ").replace("%2B", "+");
                res.headers_mut().insert(
                    "x-upto-charge",
                    http::HeaderValue::from_str(&value).unwrap(),
                );
            }
            res
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, seen)
}

/// Prices of the proxy under test.
pub const PAID: u128 = 1000;
pub const PRICEY: u128 = 5000;

/// The `serve` TOML of the tests (chain fields unused: the engine comes from the fixture).
pub fn config(upstream: &str, extra: &str) -> ServeConfig {
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
upstream = "{upstream}"
rpc = "http://127.0.0.1:1"
chain_id = 31337
escrow = "0xeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
collector = "0xeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
asset = "0x5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f"
asset_name = "USDC"
asset_version = "2"
pay_to = "0x7070707070707070707070707070707070707070"
store = "/unused"
{extra}
[[route]]
prefix = "/paid/"
price = {PAID}
[[route]]
prefix = "/pricey"
price = {PRICEY}
"#
    );
    ServeConfig::from_toml(&toml).unwrap()
}

/// The proxy, as `serve` runs it (same accept loop and limits), over the fixture's engine.
pub struct Proxy {
    pub fixture: Fixture,
    pub addr: String,
    pub seen: Seen,
}

impl Proxy {
    pub async fn start(extra: &str) -> Self {
        let fixture = Fixture::new().await;
        let (up, seen) = upstream().await;
        let cfg = config(&up, extra);
        let app = proxy_router(fixture.engine.clone(), &cfg).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let limits = cfg.http.connection_limits();
        tokio::spawn(serve_connections(
            listener,
            app,
            limits,
            std::future::pending(),
        ));
        Self {
            fixture,
            addr,
            seen,
        }
    }

    /// Sends `GET <target>` with extra header lines, reads the whole answer.
    pub async fn get(&self, target: &str, headers: &[(&str, &str)]) -> Raw {
        let mut req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        send(&self.addr, req.as_bytes()).await
    }
}

/// A parsed HTTP/1.1 answer.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn decode(&self, name: &str) -> serde_json::Value {
        use base64::Engine as _;
        let raw = self
            .header(name)
            .unwrap_or_else(|| panic!("no {name}: {self:?}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Decoded `PAYMENT-REQUIRED`.
    pub fn required(&self) -> serde_json::Value {
        self.decode("payment-required")
    }

    /// Decoded `PAYMENT-RESPONSE`.
    pub fn response(&self) -> serde_json::Value {
        self.decode("payment-response")
    }

    /// The 402's reason code.
    pub fn reason(&self) -> String {
        self.required()["error"].as_str().unwrap_or("").to_owned()
    }
}

/// Writes raw bytes, reads until the server closes, parses the answer (status 0 when the
/// server closed without one).
pub async fn send(addr: &str, bytes: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    parse(&buf)
}

pub fn parse(buf: &[u8]) -> Raw {
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Raw {
            status: 0,
            headers: vec![],
            body: buf.to_vec(),
        };
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Raw {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    }
}

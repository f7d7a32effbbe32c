//! `serve`'s listener: header-read timeout, idle timeout, connection limit.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use x402_upto_app::serve::listener::{ConnectionLimits, serve_connections};

async fn start(app: Router, limits: ConnectionLimits) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve_connections(
        listener,
        app,
        limits,
        std::future::pending(),
    ));
    addr
}

/// Reads until the server closes the connection or `limit` passes; `true` if it closed.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// `/` answers "ok".
fn ok_app() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

/// A complete `GET /` on a new connection: the raw answer, read to the server's close.
async fn get_root(addr: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

fn limits(header_read: u64, idle: u64, max: usize) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_millis(header_read),
        idle_timeout: Duration::from_millis(idle),
        max_connections: max,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_header_is_cut_off() {
    let addr = start(ok_app(), limits(800, 60_000, 1024)).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        clients.push(s);
    }
    // One more byte every 200 ms keeps each one "active", but never finishes the header.
    let started = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for s in &mut clients {
            let _ = s.write_all(b"s").await;
        }
    }
    for s in &mut clients {
        assert!(closed_within(s, Duration::from_secs(3)).await);
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    // A normal request still works.
    assert!(get_root(&addr).await.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_when_idle() {
    // 64 MiB: more than the socket buffers hold, so the server's writes stall.
    let body = vec![b'x'; 64 << 20];
    let addr = start(
        Router::new().route("/big", get(move || async move { body.clone() })),
        limits(60_000, 700, 1024),
    )
    .await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the server neither sent nor closed"),
        }
    }
    assert!(
        got < 64 << 20,
        "the stalled response was cut ({got} bytes read)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let addr = start(ok_app(), limits(1_500, 60_000, 2)).await;
    // Two silent connections take both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    assert!(get_root(&addr).await.starts_with(b"HTTP/1.1 200"));
    // Served only once a held connection timed out (header read, 1.5 s).
    assert!(
        started.elapsed() >= Duration::from_millis(1_200),
        "{:?}",
        started.elapsed()
    );
}

//! `serve`'s token routes on anvil, in front of a small fake OpenAI / Anthropic API: the
//! offer quotes the body's bound, the upstream sees the priced bytes unencoded, the charge
//! is the answer's `usage` (JSON, or a stream's last events), a missing or malformed usage
//! is a 502 with nothing charged (JSON) or the delivered estimate (stream), an abandoned
//! stream is charged what was delivered, and a long stream renews its voucher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::Chain;
use x402_upto::client::{ClientConfig, ClientError, PaidStream, PayingClient, StreamEvent};
use x402_upto::engine::{ChainAccess, Engine};
use x402_upto::typed_data::ChannelId;
use x402_upto::wire::{PAYMENT_REQUIRED, PaymentRequired, decode_header};
use x402_upto::{Durability, Ledger, SledOptions, SledStore};
use x402_upto_app::serve::{ServeConfig, proxy_router};

/// Prices of every model: 1 unit per input token, 100 per output token.
const INPUT: u128 = 1;
const OUTPUT: u128 = 100;
/// What the fake upstream reports: 20 input tokens, and 7 output (JSON) or one per chunk.
const PROMPT: u128 = 20;
const COMPLETION: u128 = 7;
const CHUNKS: u128 = 10;

/// What the fake upstream received.
#[derive(Default)]
struct Seen {
    bodies: Vec<Bytes>,
    accept_encoding: Vec<String>,
    /// Streams whose client went away (the proxy dropped the upstream connection).
    dropped: usize,
}

type Shared = Arc<Mutex<Seen>>;

fn sse(events: Vec<String>, stall: Option<Shared>) -> Response {
    let chunks = futures_util::stream::iter(events.into_iter().map(|e| Ok(Bytes::from(e))));
    let body = match stall {
        None => Body::from_stream(chunks),
        // A stream that stops generating and only pings (as Anthropic's API does) until
        // its client leaves.
        Some(seen) => {
            let pings = futures_util::stream::unfold(DropGuard(seen), |guard| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((
                    Ok::<_, Infallible>(Bytes::from_static(b": ping\n\n")),
                    guard,
                ))
            });
            Body::from_stream(futures_util::StreamExt::chain(chunks, pings))
        }
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

struct DropGuard(Shared);
impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.lock().dropped += 1;
    }
}

fn json_answer(v: &Value) -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

/// The behaviour is chosen by the model: `*-ok`, `*-nousage`, `*-badusage`, `*-gzip` (an
/// encoded answer whatever was asked), `*-slow` (a stream that stalls after 3 chunks).
fn behaviour(body: &Value) -> (&str, bool) {
    let model = body["model"].as_str().unwrap_or("");
    let kind = model.rsplit('-').next().unwrap_or("");
    (kind, body["stream"].as_bool().unwrap_or(false))
}

fn record(seen: &Shared, headers: &HeaderMap, body: &Bytes) {
    let mut s = seen.lock();
    s.bodies.push(body.clone());
    s.accept_encoding.push(
        headers
            .get("accept-encoding")
            .map_or("", |v| v.to_str().unwrap())
            .to_owned(),
    );
}

async fn openai(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, &headers, &body);
    let asked: Value = serde_json::from_slice(&body).unwrap();
    let (kind, stream) = behaviour(&asked);
    let usage = match kind {
        "nousage" => Value::Null,
        "badusage" => json!({"prompt_tokens": "twenty", "completion_tokens": 7}),
        // More input than any bound (an image, say): the charge stops at the signed price.
        "huge" => json!({"prompt_tokens": 1_000_000, "completion_tokens": COMPLETION}),
        _ if stream => json!({"prompt_tokens": PROMPT, "completion_tokens": CHUNKS}),
        _ => json!({"prompt_tokens": PROMPT, "completion_tokens": COMPLETION}),
    };
    if kind == "gzip" {
        return Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(Body::from(vec![0x1f, 0x8b, 8, 0]))
            .unwrap();
    }
    if !stream {
        let mut answer = json!({"id": "c1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]});
        if !usage.is_null() {
            answer["usage"] = usage;
        }
        return json_answer(&answer);
    }
    let delta = |c: &str| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": c}}], "usage": null})
        )
    };
    let mut events = vec![format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": null})
    )];
    if kind == "slow" {
        events.extend((0..3).map(|_| delta("abc")));
        return sse(events, Some(seen));
    }
    events.extend((0..CHUNKS).map(|_| delta("abc")));
    if !usage.is_null() {
        events.push(format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": usage})
        ));
    }
    events.push("data: [DONE]\n\n".into());
    sse(events, None)
}

async fn anthropic(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, &headers, &body);
    let asked: Value = serde_json::from_slice(&body).unwrap();
    let (_, stream) = behaviour(&asked);
    if !stream {
        return json_answer(&json!({"type": "message", "role": "assistant",
            "content": [{"type": "text", "text": "hi"}],
            "usage": {"input_tokens": PROMPT - 5, "cache_read_input_tokens": 5, "output_tokens": COMPLETION}}));
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"usage": {"input_tokens": PROMPT, "output_tokens": 1}}}),
    )];
    events.extend((0..CHUNKS).map(|_| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "abc"}}),
        )
    }));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": CHUNKS}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    sse(events, None)
}

/// The proxy with three token routes (OpenAI, OpenAI renewing every 4 output tokens,
/// Anthropic) over the fake API, its engine, and what the fake API saw.
struct Rig {
    chain: Chain,
    proxy: String,
    engine: Engine<SledStore>,
    seen: Shared,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let chain = Chain::plain(&[3]).await;
    let seen = Shared::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(openai))
        .route("/renewing/v1/chat/completions", post(openai))
        .route("/v1/messages", post(anthropic))
        .with_state(Arc::clone(&seen));
    let (upstream, _) = support::serve_local(app).await;
    let models = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("\"{n}\" = {{ input = 1000000, output = 100000000 }}\n"))
            .collect::<String>()
    };
    let gpt = models(&[
        "gpt-ok",
        "gpt-nousage",
        "gpt-badusage",
        "gpt-gzip",
        "gpt-slow",
        "gpt-huge",
    ]);
    let toml = chain.serve_toml("127.0.0.1:0", &upstream, "/unused")
        + &format!(
            r#"min_deposit = "1000000"
[[route]]
prefix = "/v1/chat/completions"
tokens = "openai"
description = "chat"
[route.models]
{gpt}
[[route]]
prefix = "/renewing/"
tokens = "openai"
stream_increment_tokens = 4
renewal_grace_secs = 1
[route.models]
{gpt}
[[route]]
prefix = "/v1/messages"
tokens = "anthropic"
default_max_tokens = 64
[route.models]
{claude}"#,
            claude = models(&["claude-ok"])
        );
    let cfg = ServeConfig::from_toml(&toml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store =
        SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group)).unwrap();
    let access: Arc<dyn ChainAccess> = Arc::new(chain.escrow_client());
    let engine = Engine::new(
        cfg.engine_config(chain.net.key(2).unwrap().address()),
        Ledger::new(chain.domain()),
        Arc::new(store),
        Some(access),
    )
    .unwrap();
    let (proxy, _) = support::serve_local(proxy_router(engine.clone(), &cfg).unwrap()).await;
    Rig {
        chain,
        proxy,
        engine,
        seen,
        _dir: dir,
    }
}

impl Rig {
    /// The payer's client; it asks for compressed answers, as most HTTP clients do.
    fn client(&self) -> PayingClient {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("accept-encoding", "gzip, br".parse().unwrap());
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        PayingClient::with_http(
            http,
            ClientConfig::new(self.chain.net.key(3).unwrap())
                .with_contracts(self.chain.escrow, self.chain.collector),
        )
    }

    fn charged(&self, id: &ChannelId) -> u128 {
        self.engine.ledger().snapshot(id).unwrap().charged
    }

    fn upstream_calls(&self) -> usize {
        self.seen.lock().bodies.len()
    }
}

/// The price a route quotes for `body` (an unpaid POST), or its refusal.
async fn quote(url: &str, body: &str, content_type: &str) -> Result<u128, (u16, Value)> {
    let res = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    if res.status() != StatusCode::PAYMENT_REQUIRED {
        let status = res.status().as_u16();
        return Err((status, res.json().await.unwrap_or(Value::Null)));
    }
    let raw = res.headers().get(PAYMENT_REQUIRED).unwrap();
    let required: PaymentRequired = decode_header(raw.as_bytes(), 1 << 16).unwrap();
    Ok(required.accepts[0].amount_u128().unwrap())
}

fn len(body: &str) -> u128 {
    body.len() as u128
}

/// Reads a paid stream to its end: the data events, the renewals, the final charge.
pub(crate) async fn drain(mut stream: PaidStream<'_>) -> (usize, usize, usize, u128) {
    let (mut data, mut renewed, mut skipped) = (0, 0, 0);
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Data { .. } => data += 1,
            StreamEvent::Renewed(_) => renewed += 1,
            StreamEvent::RenewalSkipped { .. } => skipped += 1,
            StreamEvent::Settled(s) => {
                let charged = s.extra.and_then(|e| e.charged_amount).unwrap();
                return (data, renewed, skipped, charged);
            }
        }
    }
    panic!("the stream ended without its settlement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_completion_is_quoted_from_max_tokens_and_charged_its_usage() {
    let rig = rig().await;
    let url = format!("{}/v1/chat/completions", rig.proxy);
    let body = r#"{"model":"gpt-ok","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    // The offer: every byte of the body may be a token, plus max_tokens of output.
    let price = quote(&url, body, "application/json").await.unwrap();
    assert_eq!(price, len(body) * INPUT + 50 * OUTPUT);
    // Unpriceable requests never reach the upstream.
    let unknown = r#"{"model":"gpt-5","max_tokens":50}"#;
    let (status, why) = quote(&url, unknown, "application/json").await.unwrap_err();
    assert_eq!(
        (status, why["error"].as_str()),
        (400, Some("unknown_model"))
    );
    let (status, why) = quote(&url, "{", "application/json").await.unwrap_err();
    assert_eq!((status, why["error"].as_str()), (400, Some("invalid_body")));
    let (status, _) = quote(&url, body, "text/plain").await.unwrap_err();
    assert_eq!(status, 415);
    let no_max = r#"{"model":"gpt-ok"}"#;
    let (_, why) = quote(&url, no_max, "application/json").await.unwrap_err();
    assert_eq!(why["error"], "max_tokens_required");
    // A compressed body cannot be priced.
    let gzipped = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), 415);
    // A request naming a stream is a renewal: answered here, never forwarded.
    let renewal = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-402-stream-id", "0123")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(renewal.status(), 404);
    assert_eq!(rig.upstream_calls(), 0);

    let client = rig.client();
    let a = client.post_json(&url, body).await.unwrap();
    assert_eq!(a.status, 200);
    let answer: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 7);
    assert_eq!(a.charged(), Some(PROMPT * INPUT + COMPLETION * OUTPUT));
    {
        let seen = rig.seen.lock();
        // The priced bytes are the forwarded bytes; the answer was asked unencoded although
        // the client accepts gzip.
        assert_eq!(&seen.bodies[0][..], body.as_bytes());
        assert_eq!(seen.accept_encoding[0], "identity");
    }
    let id = client.channels()[0].channel_id;
    let mut total = PROMPT * INPUT + COMPLETION * OUTPUT;
    assert_eq!(rig.charged(&id), total);

    // An answer the proxy cannot charge by is a 502: nothing charged, its body withheld.
    for model in ["gpt-nousage", "gpt-badusage", "gpt-gzip"] {
        let body = format!(r#"{{"model":"{model}","max_tokens":50}}"#);
        let a = client.post_json(&url, body).await.unwrap();
        assert_eq!(
            (a.status.as_u16(), a.settle.is_none()),
            (502, true),
            "{model}"
        );
        assert!(a.body.is_empty(), "{model}");
        assert_eq!(rig.charged(&id), total, "{model}");
    }

    let body = r#"{"model":"gpt-huge","max_tokens":50}"#;
    let a = client.post_json(&url, body).await.unwrap();
    let price = len(body) * INPUT + 50 * OUTPUT;
    assert_eq!(a.charged(), Some(price));
    total += price;
    assert_eq!(rig.charged(&id), total);

    // Anthropic: the input counts cache reads; a missing max_tokens takes the default.
    let url = format!("{}/v1/messages", rig.proxy);
    let body = r#"{"model":"claude-ok","messages":[{"role":"user","content":"hi"}]}"#;
    let price = quote(&url, body, "application/json").await.unwrap();
    assert_eq!(price, len(body) * INPUT + 64 * OUTPUT);
    let a = client.post_json(&url, body).await.unwrap();
    assert_eq!(a.charged(), Some(PROMPT * INPUT + COMPLETION * OUTPUT));
    total += PROMPT * INPUT + COMPLETION * OUTPUT;
    assert_eq!(rig.charged(&id), total);
    assert_eq!(client.channels()[0].charged, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_charged_its_usage_or_what_was_delivered() {
    let rig = rig().await;
    let url = format!("{}/v1/chat/completions", rig.proxy);
    let client = rig.client();
    let stream_body = |model: &str| {
        format!(
            r#"{{"model":"{model}","max_tokens":50,"stream":true,"stream_options":{{"include_usage":true}}}}"#
        )
    };
    let body = stream_body("gpt-ok");
    let price = quote(&url, &body, "application/json").await.unwrap();
    assert_eq!(price, len(&body) * INPUT + 50 * OUTPUT);
    let stream = client.stream_post_json(&url, body, price).await.unwrap();
    let (data, renewed, _, charged) = drain(stream).await;
    // The role chunk, ten deltas, the usage chunk, [DONE]; within one voucher.
    assert_eq!((data, renewed), (13, 0));
    assert_eq!(charged, PROMPT * INPUT + CHUNKS * OUTPUT);
    assert_eq!(rig.seen.lock().accept_encoding[0], "identity");
    let id = client.channels()[0].channel_id;
    let mut total = charged;
    assert_eq!(rig.charged(&id), total);

    // OpenAI sends a stream's usage only when asked: a stream that does not ask is refused.
    let unasked = r#"{"model":"gpt-ok","max_tokens":50,"stream":true}"#;
    match client.stream_post_json(&url, unasked, price).await {
        Err(ClientError::Refused { status, reason, .. }) => {
            assert_eq!((status, reason.as_str()), (400, "stream_usage_required"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Without a usable usage at its end, a stream is charged what it delivered: the body's
    // bytes / 4 as input, and ⌊3 bytes / 4⌋ → one token per delta.
    for model in ["gpt-nousage", "gpt-badusage"] {
        let body = stream_body(model);
        let estimate = len(&body) / 4 * INPUT + CHUNKS * OUTPUT;
        let stream = client.stream_post_json(&url, body, 100_000).await.unwrap();
        let (_, _, _, charged) = drain(stream).await;
        assert_eq!(charged, estimate, "{model}");
        total += charged;
        assert_eq!(rig.charged(&id), total, "{model}");
    }

    // Abandoned after three deltas: charged those, in the background, once the proxy sees
    // the client gone (and it hangs up on the upstream).
    let body = stream_body("gpt-slow");
    let estimate = len(&body) / 4 * INPUT + 3 * OUTPUT;
    let mut stream = client.stream_post_json(&url, body, 100_000).await.unwrap();
    let mut deltas = 0;
    while deltas < 4 {
        match stream.next().await.unwrap().unwrap() {
            StreamEvent::Data { .. } => deltas += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(stream);
    total += estimate;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rig.charged(&id) != total || rig.seen.lock().dropped == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "charged {} (want {total}), upstream dropped {}",
            rig.charged(&id),
            rig.seen.lock().dropped
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Anthropic: message_start's input and message_delta's output.
    let url = format!("{}/v1/messages", rig.proxy);
    let body = r#"{"model":"claude-ok","max_tokens":32,"stream":true}"#;
    let client = rig.client();
    let stream = client.stream_post_json(&url, body, 100_000).await.unwrap();
    let (data, _, _, charged) = drain(stream).await;
    assert_eq!(data, 13);
    assert_eq!(charged, PROMPT * INPUT + CHUNKS * OUTPUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_renews_its_voucher_or_is_cut_at_its_budget() {
    let rig = rig().await;
    let url = format!("{}/renewing/v1/chat/completions", rig.proxy);
    let client = rig.client();
    let body = r#"{"model":"gpt-ok","max_tokens":50,"stream":true,"stream_options":{"include_usage":true}}"#;
    // One voucher covers the input bound and 4 output tokens.
    let increment = quote(&url, body, "application/json").await.unwrap();
    assert_eq!(increment, len(body) * INPUT + 4 * OUTPUT);
    let stream = client.stream_post_json(&url, body, 100_000).await.unwrap();
    let (data, renewed, skipped, charged) = drain(stream).await;
    assert_eq!((data, skipped), (13, 0));
    assert!(renewed >= 2, "renewed {renewed} times");
    // The usage is the charge, within the renewed budget.
    assert_eq!(charged, PROMPT * INPUT + CHUNKS * OUTPUT);
    let id = client.channels()[0].channel_id;
    assert_eq!(rig.charged(&id), charged);

    // A client that will not renew: the stream is cut once its budget is used; the deltas
    // beyond it are not sent, and it is charged what it delivered (the input estimate and
    // four deltas), within the one voucher.
    let stream = client
        .stream_post_json(&url, body, increment)
        .await
        .unwrap();
    let (data, renewed, skipped, cut) = drain(stream).await;
    assert_eq!((data, renewed, skipped), (5, 0, 1));
    assert_eq!(cut, len(body) / 4 * INPUT + 4 * OUTPUT);
    assert!(cut <= increment);
    assert_eq!(rig.charged(&id), charged + cut);
}

//! Streamed answers: relayed event by event, each charged as it is delivered, and the
//! estimate of what a stream delivered (also the rule for an abandoned stream).

use super::*;

/// What a stream has shown so far: usage reported, and the output delivered.
#[derive(Debug)]
pub(super) struct Tally {
    pub(super) api: TokenApi,
    /// OpenAI: the final chunk's usage.
    pub(super) openai: Option<Usage>,
    /// Anthropic: input tokens from `message_start` (or a later `message_delta`).
    pub(super) anthropic_input: Option<u64>,
    /// Anthropic: cumulative output tokens of the latest `message_delta`.
    pub(super) anthropic_output: Option<u64>,
    /// Anthropic: a `message_delta` with usage was seen.
    pub(super) anthropic_final: bool,
    /// A usage that was present but not of the API's shape: the stream has no usage.
    pub(super) malformed: bool,
    /// Output tokens estimated from the delivered deltas.
    pub(super) delivered: u64,
}

impl Tally {
    pub(super) fn new(api: TokenApi) -> Self {
        Self {
            api,
            openai: None,
            anthropic_input: None,
            anthropic_output: None,
            anthropic_final: false,
            malformed: false,
            delivered: 0,
        }
    }

    /// Takes in one whole SSE event (its bytes as sent).
    pub(super) fn observe(&mut self, event: &[u8]) {
        let Ok(text) = std::str::from_utf8(event) else {
            return;
        };
        let mut data = String::new();
        for line in text.lines() {
            if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            return; // `[DONE]`, comments, pings
        };
        match self.api {
            TokenApi::OpenAi => self.observe_openai(&v),
            TokenApi::Anthropic => self.observe_anthropic(&v),
        }
    }

    pub(super) fn observe_openai(&mut self, v: &Value) {
        match v.get("usage") {
            None | Some(Value::Null) => {}
            Some(u) => match usage_of(TokenApi::OpenAi, u) {
                Some(u) => self.openai = Some(u),
                None => self.malformed = true,
            },
        }
        let mut text = 0usize;
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(delta) = choice.get("delta") else {
                continue;
            };
            text += str_len(delta, "content") + str_len(delta, "refusal");
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                text += call.get("function").map_or(0, |f| str_len(f, "arguments"));
            }
        }
        self.deliver(text);
    }

    pub(super) fn observe_anthropic(&mut self, v: &Value) {
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => match v.get("message").and_then(|m| m.get("usage")) {
                Some(u) => match (anthropic_input(u), tokens(u, "output_tokens")) {
                    (Some(input), Some(output)) => {
                        self.anthropic_input = Some(input);
                        self.anthropic_output = Some(output);
                    }
                    _ => self.malformed = true,
                },
                None => self.malformed = true,
            },
            Some("content_block_delta") => {
                let text = v.get("delta").map_or(0, |d| {
                    str_len(d, "text") + str_len(d, "partial_json") + str_len(d, "thinking")
                });
                self.deliver(text);
            }
            Some("message_delta") => match v.get("usage") {
                Some(u) => {
                    match tokens(u, "output_tokens") {
                        Some(output) => self.anthropic_output = Some(output),
                        None => self.malformed = true,
                    }
                    // Newer versions repeat the input here; it then wins.
                    if u.get("input_tokens").is_some() {
                        match anthropic_input(u) {
                            Some(input) => self.anthropic_input = Some(input),
                            None => self.malformed = true,
                        }
                    }
                    // `message_start` alone is not a final usage.
                    self.anthropic_final = true;
                }
                None => self.malformed = true,
            },
            _ => {}
        }
    }

    /// An event with `bytes` of generated text counts ⌊bytes / 4⌋ tokens, at least one.
    pub(super) fn deliver(&mut self, bytes: usize) {
        if bytes > 0 {
            let n = u64::try_from(bytes / 4).unwrap_or(u64::MAX).max(1);
            self.delivered = self.delivered.saturating_add(n);
        }
    }

    /// The stream's complete usage, if it reported one of the API's shape.
    pub(super) fn usage(&self) -> Option<Usage> {
        if self.malformed {
            return None;
        }
        match self.api {
            TokenApi::OpenAi => self.openai,
            TokenApi::Anthropic => match (self.anthropic_final, self.anthropic_input) {
                (true, Some(input)) => Some(Usage {
                    input,
                    output: self.anthropic_output?,
                }),
                _ => None,
            },
        }
    }

    /// The charge of what was delivered (the rule for a stream without a complete usage):
    /// input = the tokens the stream reported, else a quarter of the request's bytes (never
    /// above the input bound); output = the delivered estimate, never above the output
    /// bound. Never above the request's maximum.
    pub(super) fn estimate(&self, quote: &Quote) -> u128 {
        let input = self.anthropic_input.unwrap_or(quote.input_estimate);
        let output = self.delivered.min(quote.output_bound);
        cost(quote.model, input, output)
            .unwrap_or(u128::MAX)
            .min(quote.maximum)
    }

    /// The stream's charge so far: its complete usage once reported, else the estimate;
    /// never above the request's maximum.
    pub(super) fn charge(&self, quote: &Quote) -> u128 {
        match self.usage() {
            Some(u) => cost(quote.model, u.input, u.output)
                .unwrap_or(u128::MAX)
                .min(quote.maximum),
            None => self.estimate(quote),
        }
    }
}

pub(super) fn str_len(v: &Value, key: &str) -> usize {
    v.get(key).and_then(Value::as_str).map_or(0, str::len)
}

/// A streamed answer: relayed event by event, each charged as it is delivered.
pub(super) fn relay(
    up: &Upstream,
    route: &TokenRoute,
    quote: Quote,
    charge: Charge,
    res: reqwest::Response,
) -> Response {
    let headers = res.headers().clone();
    let tally = Tally::new(route.api);
    // Before the first event: the input alone (a client leaving now still cost the prompt).
    charge.set(tally.estimate(&quote).min(charge.max()));
    let relay = Relay {
        upstream: Box::pin(res.bytes_stream()),
        buf: BytesMut::new(),
        tally,
        quote,
        charge,
        idle: up.timeout,
        grace: route.grace,
        ended: false,
    };
    let body = futures_util::stream::unfold(relay, |mut relay| async move {
        let event = relay.next_event().await?;
        Some((Ok::<_, Infallible>(event), relay))
    });
    let mut response = Response::new(Body::from_stream(body));
    copy_headers(&headers, response.headers_mut());
    response
}

/// The state of one relayed stream.
pub(super) struct Relay {
    pub(super) upstream: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    pub(super) buf: BytesMut,
    pub(super) tally: Tally,
    pub(super) quote: Quote,
    pub(super) charge: Charge,
    /// Longest wait for the upstream's next bytes.
    pub(super) idle: Duration,
    /// Longest wait for a renewal once the budget is used up.
    pub(super) grace: Duration,
    pub(super) ended: bool,
}

impl Relay {
    /// The next whole event, charged; `None` when the stream is over (its final charge set).
    async fn next_event(&mut self) -> Option<Bytes> {
        loop {
            if let Some(end) = event_end(&self.buf) {
                let event = self.buf.split_to(end).freeze();
                return self.deliver(event).await;
            }
            if self.ended {
                if self.buf.is_empty() {
                    self.finish();
                    return None;
                }
                // A last event without its blank line.
                let event = self.buf.split().freeze();
                return self.deliver(event).await;
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                tracing::warn!("token route: an SSE event above 1 MiB; the stream is cut");
                return None;
            }
            match tokio::time::timeout(self.idle, self.upstream.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(None) => self.ended = true,
                Ok(Some(Err(_))) | Err(_) => {
                    tracing::warn!("token route: the upstream stream broke off");
                    return None;
                }
            }
        }
    }

    /// Charges an event before it goes out; `None` (the stream is cut, the event withheld)
    /// when its charge needs a renewal that did not come in time.
    async fn deliver(&mut self, event: Bytes) -> Option<Bytes> {
        self.tally.observe(&event);
        // Once reported, the usage is the charge (even if the client leaves before the
        // stream's last bytes), lower than the estimate or not.
        let reported = self.tally.usage().is_some();
        let target = self.tally.charge(&self.quote);
        let deadline = tokio::time::Instant::now() + self.grace;
        let delivered = self.charge.get();
        loop {
            let budget = self.charge.max();
            if target <= budget {
                // Estimates only grow (a checkpoint cannot be undone anyway).
                if reported || target > self.charge.get().unwrap_or(0) {
                    self.charge.set(target);
                }
                return Some(event);
            }
            // The budget is used up: the meter now asks for a renewal; wait for it.
            self.charge.set(budget);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.charge.add_wait(1, left).await {
                tracing::info!("token route: no renewal in time; the stream is cut");
                // The withheld event is not charged.
                if let Some(c) = delivered {
                    self.charge.set(c);
                }
                return None;
            }
        }
    }

    /// The upstream ended: its usage, if complete, is the charge (capped at the budget, as
    /// set by the event that carried it); otherwise the delivered estimate stands.
    pub(super) fn finish(&mut self) {
        match self.tally.usage() {
            Some(_) => {
                let actual = self.tally.charge(&self.quote);
                self.charge.set(actual.min(self.charge.max()));
            }
            None => {
                tracing::warn!(
                    "token route: a stream ended without a usable usage; charged by what was delivered"
                );
                metrics::counter!(telemetry::UPSTREAM_ERRORS, "kind" => "stream_without_usage")
                    .increment(1);
            }
        }
    }
}

/// The length of the first whole SSE event in `buf` (through its blank line), if any.
pub(super) fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(3).position(|w| w == b"\n\r\n").map(|i| i + 3);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

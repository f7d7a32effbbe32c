//! Paying for a metered stream with mid-stream renewal (`docs/protocol.md` §10).
//!
//! [`PayingClient::stream`] pays the first budget like any request (depositing enough for
//! the whole `max_total` up front, so renewals never run into the balance), then reads the
//! Server-Sent Events. On `event: payment-renewal` it signs the next cumulative voucher
//! (held ceiling + price) and sends it with the stream id, as long as the stream's budget
//! stays within `max_total`; every checkpoint (`PAYMENT-RESPONSE` of a renewal) and the final
//! `payment-response` event are checked: charged never decreases, never exceeds what we
//! signed, and the cumulative is our baseline plus the charge. A server that breaks a rule
//! is marked as cheating and never paid again.

use std::time::Duration;

use serde_json::{Value, json};

use super::checks::{Response, StreamProgress};
use super::payment::Target;
use super::request::{Sent, is_sse, read_required, read_response};
use super::{ClientError, PayingClient};
use crate::server::{RENEWAL_EVENT, STREAM_ID_HEADER};
use crate::wire::{
    MAX_PAYMENT_HEADER_BYTES, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, SettleResponse, decode_header,
};

/// Request timeout of a stream (the client's default of 60 s would cut long streams).
const STREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Largest SSE event buffered before the stream is abandoned as malformed.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// One event of a [`PaidStream`].
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// An event of the resource itself (`event` is `"message"` when the server named none).
    Data {
        /// SSE event type.
        event: String,
        /// SSE data (multi-line data joined with `\n`).
        data: String,
    },
    /// The client renewed its voucher; the server's checked checkpoint (`chargedAmount` is
    /// the stream's charge so far, made durable with the new voucher).
    Renewed(SettleResponse),
    /// A renewal was due but not made (`max_total` reached) or was refused (`reason` is the
    /// server's code, e.g. a 402 reason or `stream_not_found`); the stream then ends at its
    /// current budget.
    RenewalSkipped {
        /// Why.
        reason: String,
    },
    /// The final, checked settlement; the stream is over.
    Settled(SettleResponse),
}

/// The payment side of a stream.
struct StreamPay {
    target: Target,
    /// Ceiling of the latest voucher the server accepted.
    accepted: u128,
    /// Baseline, highest ceiling signed, confirmed charge and first deposit: what each
    /// checkpoint is checked against.
    progress: StreamProgress,
}

/// A metered Server-Sent-Events response being read and paid for; see
/// [`PayingClient::stream`]. Read it with [`PaidStream::next`].
pub struct PaidStream<'a> {
    client: &'a PayingClient,
    url: String,
    res: Option<reqwest::Response>,
    buf: Vec<u8>,
    stream_id: Option<String>,
    max_total: u128,
    pay: Option<StreamPay>,
}

impl std::fmt::Debug for PaidStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaidStream")
            .field("url", &self.url)
            .field("stream_id", &self.stream_id)
            .field("authorized", &self.authorized())
            .field("charged", &self.charged())
            .finish()
    }
}

impl PayingClient {
    /// GETs a metered stream at `url`, paying on a 402 and renewing the voucher mid-stream
    /// while the stream's total stays within `max_total` (atomic units). The first deposit,
    /// if one is needed, covers `max_total`. Fails before paying if the route's price is above
    /// `max_total`. A non-402 answer that is not paid is read as a free stream.
    pub async fn stream(&self, url: &str, max_total: u128) -> Result<PaidStream<'_>, ClientError> {
        self.open_stream(url, None, max_total).await
    }

    /// Like [`PayingClient::stream`], but POSTs `body` (`Content-Type: application/json`),
    /// as a streamed chat completion is asked for. Renewals go to the same URL without a
    /// body. No remembered offer is used (the price may depend on the body).
    pub async fn stream_post_json(
        &self,
        url: &str,
        body: impl Into<bytes::Bytes>,
        max_total: u128,
    ) -> Result<PaidStream<'_>, ClientError> {
        let body = body.into();
        self.open_stream(url, Some((&body, "application/json")), max_total)
            .await
    }

    async fn open_stream(
        &self,
        url: &str,
        upload: super::request::Upload<'_>,
        max_total: u128,
    ) -> Result<PaidStream<'_>, ClientError> {
        let sent = self
            .send_paid(url, upload, Some(max_total), Some(STREAM_TIMEOUT))
            .await?;
        let (res, target, deposit) = match sent {
            Sent::Free(res) => {
                return if res.status().is_success() {
                    Ok(PaidStream::new(self, url, res, max_total, None))
                } else {
                    Err(refused(res).await)
                };
            }
            // A stream records its receipts as it goes (renewals): no turn is kept.
            Sent::Paid {
                res,
                target,
                deposit,
                turn: _,
            } => (res, *target, deposit),
        };
        if !res.status().is_success() {
            // Nothing was charged (the handler failed; the server released the channel).
            return Err(refused(res).await);
        }
        if res.headers().get(PAYMENT_RESPONSE).is_some() || !is_sse(&res) {
            // A plain paid route: account for the payment, but it is not a stream.
            let settle = read_response(&res).map_err(|_| {
                self.cheated(&target, "paid response without a valid PAYMENT-RESPONSE")
            })?;
            self.check_settle(&target, settle, deposit)?;
            return Err(ClientError::NoOffer(format!(
                "{url} is not a metered stream"
            )));
        }
        let mut state = self.state(&target)?.unwrap_or_else(|| self.fresh(&target));
        if let Some(d) = deposit {
            // The server runs the handler only after the deposit is on chain.
            state.deposited = state.deposited.saturating_add(d);
            state.balance = state.balance.saturating_add(d);
            self.store(state.clone())?;
        }
        let base = state.charged;
        let first = base.saturating_add(target.price);
        let pay = StreamPay {
            target,
            accepted: first,
            progress: StreamProgress {
                base,
                signed: first,
                confirmed: 0,
                deposit,
            },
        };
        Ok(PaidStream::new(self, url, res, max_total, Some(pay)))
    }
}

impl<'a> PaidStream<'a> {
    fn new(
        client: &'a PayingClient,
        url: &str,
        res: reqwest::Response,
        max_total: u128,
        pay: Option<StreamPay>,
    ) -> Self {
        let stream_id = res
            .headers()
            .get(STREAM_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self {
            client,
            url: url.to_owned(),
            res: Some(res),
            buf: Vec::new(),
            stream_id,
            max_total,
            pay,
        }
    }

    /// The server's stream id (`X-402-Stream-Id`), if it sent one.
    pub fn stream_id(&self) -> Option<&str> {
        self.stream_id.as_deref()
    }

    /// The stream's budget as authorized by the vouchers the server accepted.
    pub fn authorized(&self) -> u128 {
        self.pay
            .as_ref()
            .map_or(0, |p| p.accepted - p.progress.base)
    }

    /// The stream's charge as last confirmed by the server (a checkpoint or the end).
    pub fn charged(&self) -> u128 {
        self.pay.as_ref().map_or(0, |p| p.progress.confirmed)
    }

    /// The next event; `None` once the stream is over. Renewals happen inside this call. An
    /// error ends the stream.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, ClientError>> {
        loop {
            self.res.as_ref()?;
            if let Some((event, data)) = take_event(&mut self.buf) {
                match self.on_event(event, data).await {
                    Ok(Some(ev)) => return Some(Ok(ev)),
                    Ok(None) => continue,
                    Err(e) => {
                        self.res = None;
                        return Some(Err(e));
                    }
                }
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                self.res = None;
                return Some(Err(ClientError::NoOffer("SSE event too large".into())));
            }
            let chunk = match self.res.as_mut()?.chunk().await {
                Ok(chunk) => chunk,
                Err(e) => {
                    self.res = None;
                    return Some(Err(e.into()));
                }
            };
            let Some(chunk) = chunk else {
                self.res = None;
                let pay = self.pay.as_ref()?;
                let what = "stream ended without payment-response";
                return Some(Err(self.client.cheated(&pay.target, what)));
            };
            // CR never appears inside SSE fields (it is a line terminator): drop it.
            self.buf.extend(chunk.iter().filter(|b| **b != b'\r'));
        }
    }

    async fn on_event(
        &mut self,
        event: String,
        data: String,
    ) -> Result<Option<StreamEvent>, ClientError> {
        if self.pay.is_none() {
            return Ok(Some(StreamEvent::Data { event, data }));
        }
        match event.as_str() {
            RENEWAL_EVENT => self.renew().await.map(Some),
            "payment-response" => {
                let settle = decode_header(data.trim().as_bytes(), MAX_PAYMENT_HEADER_BYTES * 4)
                    .map_err(|_| self.cheat("undecodable payment-response event"))?;
                let settle = self.check(settle, true)?;
                self.res = None;
                Ok(Some(StreamEvent::Settled(settle)))
            }
            "payment-error" => {
                // The final commit failed: nothing beyond the checkpoints was charged.
                let failed: Option<SettleResponse> =
                    decode_header(data.trim().as_bytes(), MAX_PAYMENT_HEADER_BYTES * 4).ok();
                self.res = None;
                Err(ClientError::Refused {
                    status: 500,
                    reason: failed
                        .as_ref()
                        .and_then(|f| f.error_reason.clone())
                        .unwrap_or_default(),
                    message: failed.and_then(|f| f.error_message).unwrap_or_default(),
                })
            }
            _ => Ok(Some(StreamEvent::Data { event, data })),
        }
    }

    /// Signs and sends the next voucher, unless that would pass `max_total`.
    async fn renew(&mut self) -> Result<StreamEvent, ClientError> {
        let client = self.client;
        let (Some(pay), Some(stream_id)) = (self.pay.as_mut(), self.stream_id.clone()) else {
            return Ok(skipped("no stream id"));
        };
        // Our own ceiling, never the one the event announces: we sign only what we decide.
        let next = pay.accepted.saturating_add(pay.target.price);
        if next - pay.progress.base > self.max_total {
            return Ok(skipped("max_total reached"));
        }
        let mut state = client
            .state(&pay.target)?
            .unwrap_or_else(|| client.fresh(&pay.target));
        let voucher = client.voucher_json(&pay.target, next)?;
        let payload = json!({"type": "voucher", "channelConfig": state.config, "voucher": voucher});
        let header = client.envelope(&pay.target, payload);
        // Remember what we signed before it leaves.
        state.signed_max = state.signed_max.max(next);
        client.store(state)?;
        pay.progress.signed = pay.progress.signed.max(next);
        let res = client
            .http
            .get(&self.url)
            .header(PAYMENT_SIGNATURE, header)
            .header(STREAM_ID_HEADER, stream_id)
            .send()
            .await?;
        let status = res.status();
        if status == reqwest::StatusCode::PAYMENT_REQUIRED {
            let reason = read_required(&res)
                .ok()
                .and_then(|r| r.error)
                .unwrap_or_else(|| "payment_required".into());
            return Ok(skipped(&reason));
        }
        if !status.is_success() {
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let reason = body["error"]
                .as_str()
                .map_or_else(|| format!("status {}", status.as_u16()), str::to_owned);
            return Ok(skipped(&reason));
        }
        let settle = read_response(&res)
            .map_err(|_| self.cheat("renewal accepted without a valid PAYMENT-RESPONSE"))?;
        let settle = self.check(settle, false)?;
        if let Some(pay) = self.pay.as_mut() {
            pay.accepted = next;
        }
        Ok(StreamEvent::Renewed(settle))
    }

    /// Checks a checkpoint or the final settlement and records it in the channel state.
    fn check(&mut self, settle: SettleResponse, last: bool) -> Result<SettleResponse, ClientError> {
        let Some(pay) = self.pay.as_mut() else {
            return Ok(settle);
        };
        let checked = Response::Stream {
            settle: &settle,
            progress: pay.progress,
            last,
        };
        self.client.apply_checked(&pay.target, checked)?;
        if let Some(charged) = settle.extra.as_ref().and_then(|e| e.charged_amount) {
            pay.progress.confirmed = charged;
        }
        Ok(settle)
    }

    fn cheat(&self, what: &str) -> ClientError {
        match &self.pay {
            Some(pay) => self.client.cheated(&pay.target, what),
            None => ClientError::NoOffer(what.to_owned()),
        }
    }
}

fn skipped(reason: &str) -> StreamEvent {
    StreamEvent::RenewalSkipped {
        reason: reason.to_owned(),
    }
}

/// A non-2xx answer to a stream request: nothing was charged.
async fn refused(res: reqwest::Response) -> ClientError {
    let status = res.status().as_u16();
    let body = res.bytes().await.unwrap_or_default();
    let reason = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    ClientError::Refused {
        status,
        reason,
        message: String::from_utf8_lossy(&body).chars().take(300).collect(),
    }
}

/// Removes the first complete SSE event (terminated by a blank line) from `buf` and returns
/// its type (default `"message"`) and data. Comment lines and other fields are skipped.
fn take_event(buf: &mut Vec<u8>) -> Option<(String, String)> {
    loop {
        let end = buf.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&block);
        let mut event = String::from("message");
        let mut data: Option<String> = None;
        for line in text.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => value.clone_into(&mut event),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        // Per the SSE rules a block without data dispatches nothing.
        if let Some(data) = data {
            return Some((event, data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::take_event;

    #[test]
    fn splits_sse_events_and_skips_comments_and_empty_blocks() {
        let mut buf =
            b": hello\n\nevent: token\ndata: 1\n\ndata: a\ndata: b\n\nevent: x\nda".to_vec();
        assert_eq!(take_event(&mut buf), Some(("token".into(), "1".into())));
        assert_eq!(
            take_event(&mut buf),
            Some(("message".into(), "a\nb".into()))
        );
        assert_eq!(take_event(&mut buf), None);
        assert_eq!(buf, b"event: x\nda");
    }
}

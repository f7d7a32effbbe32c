//! The HTTP flow of a paid request: ask, pay on a 402 (retrying a busy channel, adopting a
//! proven corrective 402, re-reading the chain when the server knows less), read the answer
//! and its `PAYMENT-RESPONSE`; the cooperative refund.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Answer, ChannelState, ClientError, PayingClient, Response, Target};
use crate::reason::Reason;
use crate::wire::{
    BATCH_SETTLEMENT, MAX_PAYMENT_HEADER_BYTES, PAYMENT_REQUIRED, PAYMENT_RESPONSE,
    PAYMENT_SIGNATURE, PaymentRequired, SettleResponse, decode_header, encode_header,
};

/// What [`PayingClient::send_paid`] got back.
pub(super) enum Sent {
    /// No 402: the resource is free (or refused without an offer).
    Free(reqwest::Response),
    /// The answer to our paid request (any status but 402), body unread.
    Paid {
        res: reqwest::Response,
        target: Box<Target>,
        deposit: Option<u128>,
        /// The channel's turn (`PayingClient::channel_turn`): hold it until the receipt is
        /// recorded.
        turn: tokio::sync::OwnedMutexGuard<()>,
    },
}

/// Payment attempts per request (a corrective 402 or a chain re-read may each cost one).
const MAX_ATTEMPTS: usize = 4;

/// The resource part of a URL (no query, no fragment): what one remembered offer covers.
fn offer_key(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// A request body: bytes and their `Content-Type` (the request is then a `POST`).
pub(super) type Upload<'a> = Option<(&'a bytes::Bytes, &'a str)>;

impl PayingClient {
    /// GETs `url`, paying on a 402.
    pub async fn get(&self, url: &str) -> Result<Answer, ClientError> {
        self.fetch(url, None).await
    }

    /// POSTs `body` (`Content-Type: application/json`) to `url`, paying on a 402. The price
    /// of such a route may depend on the body (a per-token route prices `max_tokens`), so no
    /// remembered offer is used: every call asks first and pays the offer made for its body.
    pub async fn post_json(
        &self,
        url: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Result<Answer, ClientError> {
        let body = body.into();
        self.fetch(url, Some((&body, "application/json"))).await
    }

    async fn fetch(&self, url: &str, upload: Upload<'_>) -> Result<Answer, ClientError> {
        // `_turn` is dropped when this returns, after the receipt is recorded.
        let (res, target, deposit, _turn) = match self.send_paid(url, upload, None, None).await? {
            Sent::Free(res) => return answer(res, None).await,
            Sent::Paid {
                res,
                target,
                deposit,
                turn,
            } => (res, target, deposit, turn),
        };
        if !res.status().is_success() {
            // Nothing was charged (the server releases the channel on a failure). A deposit
            // made for this request is on chain all the same; the server's receipt (charged
            // 0) tells us, and without taking it in we would deposit again next time.
            if deposit.is_some()
                && let Ok(settle) = read_response(&res)
            {
                let settle = &settle;
                self.apply_checked(&target, Response::Failed { settle, deposit })?;
            }
            return answer(res, None).await;
        }
        if res.headers().get(PAYMENT_RESPONSE).is_none() && is_sse(&res) {
            // A metered stream: the payment result is its final event.
            let mut streamed = answer(res, None).await?;
            let settle = sse_payment(&streamed.body)
                .ok_or_else(|| self.cheated(&target, "stream ended without payment-response"))?;
            streamed.settle = Some(self.check_settle(&target, settle, deposit)?);
            return Ok(streamed);
        }
        let settle = read_response(&res)
            .map_err(|_| self.cheated(&target, "paid response without a valid PAYMENT-RESPONSE"))?;
        let settle = self.check_settle(&target, settle, deposit)?;
        answer(res, Some(settle)).await
    }

    /// GETs `url` (or POSTs `upload`); on a 402 pays with the next voucher (retrying
    /// `channel_busy` and adopting a proven corrective 402) and returns the paid response
    /// with its body unread. `cover`: the stream budget the channel balance should cover
    /// beyond the charged amount (a deposit tops it up); `timeout` overrides the client's
    /// request timeout.
    pub(super) async fn send_paid(
        &self,
        url: &str,
        upload: Upload<'_>,
        cover: Option<u128>,
        timeout: Option<Duration>,
    ) -> Result<Sent, ClientError> {
        // A resource paid before is paid at once with the offer it made then: one round trip
        // instead of two. If the offer changed, the server's 402 carries the new one and the
        // request is paid again from it (once).
        let key = offer_key(url);
        let cached = if upload.is_none() {
            self.offers.lock().get(key).cloned()
        } else {
            None
        };
        let mut ahead = cached.is_some();
        let mut target = match cached {
            Some(mut t) => {
                self.refuse_cheater(t.pay_to)?;
                if let Some(resource) = t.resource.as_object_mut() {
                    resource.insert("url".into(), Value::String(url.to_owned()));
                }
                t
            }
            None => {
                let first = self.request(url, upload).send().await?;
                if first.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
                    return Ok(Sent::Free(first));
                }
                self.target(&read_required(&first)?)?
            }
        };
        if let Some(max_total) = cover
            && max_total < target.price
        {
            return Err(ClientError::StreamLimit {
                price: target.price,
                max_total,
            });
        }
        let mut busy_waits = 0;
        let mut attempt = 0;
        // The channel last cold-started (read from chain when we had no state) in this call,
        // and whether a refusal already made us re-read the chain: each at most once.
        let mut cold_for = None;
        let mut reread = false;
        // The channel's turn, from signing until the caller has recorded the receipt; taken
        // again if the offer (and so the channel) changes, never two at once.
        let mut turn = self.channel_turn(target.id).await;
        loop {
            attempt += 1;
            if cold_for != Some(target.id) {
                cold_for = Some(target.id);
                self.cold_start(&target, false).await?;
            }
            let (header, deposit) = self.build_payment(&target, cover)?;
            let mut req = self.request(url, upload).header(PAYMENT_SIGNATURE, header);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let res = req.send().await?;
            if res.status() == reqwest::StatusCode::PAYMENT_REQUIRED {
                let again = read_required(&res)?;
                let reason = again.error.clone().unwrap_or_default();
                if reason == Reason::ChannelBusy.as_str() && busy_waits < 50 {
                    busy_waits += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    attempt -= 1;
                    continue;
                }
                // The server knows nothing better than the chain (it restarted without its
                // vouchers, or its corrective 402 carries no state): the escrow's
                // `totalClaimed` is the spec's baseline. Read once; retry only if it moved us.
                let chain_baseline = reason == Reason::CumulativeBelowClaimed.as_str()
                    || (reason == Reason::CumulativeAmountMismatch.as_str()
                        && !has_channel_state(&again));
                if chain_baseline && !reread && attempt < MAX_ATTEMPTS && self.config.rpc.is_some()
                {
                    reread = true;
                    if self.cold_start(&target, true).await? {
                        continue;
                    }
                }
                if reason == Reason::CumulativeAmountMismatch.as_str() && attempt < MAX_ATTEMPTS {
                    self.resync(&target, &again)?;
                    continue;
                }
                if ahead {
                    // The remembered offer no longer fits: start over from the server's.
                    ahead = false;
                    self.offers.lock().remove(key);
                    let before = target.id;
                    target = self.target(&again)?;
                    if target.id != before {
                        drop(turn);
                        turn = self.channel_turn(target.id).await;
                    }
                    if let Some(max_total) = cover
                        && max_total < target.price
                    {
                        return Err(ClientError::StreamLimit {
                            price: target.price,
                            max_total,
                        });
                    }
                    attempt -= 1;
                    continue;
                }
                let message = String::from_utf8_lossy(&res.bytes().await?)
                    .chars()
                    .take(300)
                    .collect();
                return Err(ClientError::Refused {
                    status: 402,
                    reason,
                    message,
                });
            }
            if res.status().is_success() && upload.is_none() {
                self.offers.lock().insert(key.to_owned(), target.clone());
            }
            return Ok(Sent::Paid {
                res,
                target: Box::new(target),
                deposit,
                turn,
            });
        }
    }

    /// A GET of `url`, or a POST of `upload`.
    fn request(&self, url: &str, upload: Upload<'_>) -> reqwest::RequestBuilder {
        match upload {
            None => self.http.get(url),
            Some((body, content_type)) => self
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body.clone()),
        }
    }

    /// Asks `url`'s server for a cooperative refund of `amount` (everything when `None`).
    pub async fn refund(
        &self,
        url: &str,
        amount: Option<u128>,
    ) -> Result<SettleResponse, ClientError> {
        let first = self.http.get(url).send().await?;
        if first.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
            return Err(ClientError::NoOffer(format!(
                "expected 402, got {}",
                first.status()
            )));
        }
        let required = read_required(&first)?;
        let target = self.target(&required)?;
        self.cold_start(&target, false).await?;
        for attempt in 1..=MAX_ATTEMPTS {
            let (payment, state) = self.refund_payment(&target, amount)?;
            let res = self
                .http
                .get(url)
                .header(PAYMENT_SIGNATURE, encode_header(&payment))
                .send()
                .await?;
            if res.status() == reqwest::StatusCode::PAYMENT_REQUIRED {
                let again = read_required(&res)?;
                let reason = again.error.clone().unwrap_or_default();
                if reason == Reason::CumulativeAmountMismatch.as_str() && attempt < MAX_ATTEMPTS {
                    self.resync(&target, &again)?;
                    continue;
                }
                return Err(ClientError::Refused {
                    status: 402,
                    reason,
                    message: String::new(),
                });
            }
            let settle = read_response(&res)?;
            if !res.status().is_success() || !settle.success {
                return Err(ClientError::Refused {
                    status: res.status().as_u16(),
                    reason: settle.error_reason.unwrap_or_default(),
                    message: settle.error_message.unwrap_or_default(),
                });
            }
            self.record_refund(&target, &state, &settle)?;
            return Ok(settle);
        }
        Err(ClientError::NoChannel)
    }
}

impl PayingClient {
    /// The refund `PaymentPayload` for `t`'s channel (a zero-charge voucher at the charged
    /// cumulative; everything unspent when `amount` is `None`), and the state it was built on.
    pub(crate) fn refund_payment(
        &self,
        t: &Target,
        amount: Option<u128>,
    ) -> Result<(Value, ChannelState), ClientError> {
        let Some(state) = self.state(t)? else {
            return Err(ClientError::NoChannel);
        };
        let voucher = self.voucher_json(t, state.charged)?;
        let mut payload =
            json!({"type": "refund", "channelConfig": state.config, "voucher": voucher});
        if let Some(a) = amount {
            payload["amount"] = json!(a.to_string());
        }
        Ok((Self::payment_payload(t, payload), state))
    }

    /// Checks a successful refund's receipt against `state` and records it (a channel refunded
    /// down to its charge is forgotten).
    pub(crate) fn record_refund(
        &self,
        t: &Target,
        state: &ChannelState,
        settle: &SettleResponse,
    ) -> Result<(), ClientError> {
        let state = self.checked(t, state, Response::Refund(settle))?;
        if state.balance <= state.charged {
            self.channels.lock().remove(&t.id);
            self.dir.remove(&t.id)?;
        } else {
            self.store(state)?;
        }
        Ok(())
    }
}

/// Whether a 402's `batch-settlement` offer carries a `channelState`.
fn has_channel_state(required: &PaymentRequired) -> bool {
    required
        .accepts
        .iter()
        .filter(|o| o.scheme == BATCH_SETTLEMENT)
        .filter_map(|o| o.batch_extra().ok())
        .any(|e| e.channel_state.is_some())
}

pub(super) fn read_required(res: &reqwest::Response) -> Result<PaymentRequired, ClientError> {
    let raw = res
        .headers()
        .get(PAYMENT_REQUIRED)
        .ok_or_else(|| ClientError::NoOffer("402 without PAYMENT-REQUIRED".into()))?;
    decode_header(raw.as_bytes(), 64 * 1024).map_err(|e| ClientError::NoOffer(e.to_string()))
}

pub(super) fn read_response(res: &reqwest::Response) -> Result<SettleResponse, ClientError> {
    let raw = res
        .headers()
        .get(PAYMENT_RESPONSE)
        .ok_or_else(|| ClientError::NoOffer("no PAYMENT-RESPONSE".into()))?;
    decode_header(raw.as_bytes(), MAX_PAYMENT_HEADER_BYTES * 4)
        .map_err(|e| ClientError::NoOffer(e.to_string()))
}

async fn answer(
    res: reqwest::Response,
    settle: Option<SettleResponse>,
) -> Result<Answer, ClientError> {
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.bytes().await?;
    Ok(Answer {
        status,
        headers,
        body,
        settle,
    })
}

pub(super) fn is_sse(res: &reqwest::Response) -> bool {
    res.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// The `data` of the last `event: payment-response` in an SSE body, decoded.
fn sse_payment(body: &[u8]) -> Option<SettleResponse> {
    let text = std::str::from_utf8(body).ok()?;
    let mut found = None;
    let mut event = "";
    for line in text.lines() {
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim();
        } else if let Some(d) = line.strip_prefix("data:") {
            if event == "payment-response" {
                found = decode_header(d.trim().as_bytes(), MAX_PAYMENT_HEADER_BYTES * 4).ok();
            }
        } else if line.is_empty() {
            event = "";
        }
    }
    found
}

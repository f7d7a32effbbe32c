//! [`McpPayingClient`]: pays MCP tool calls from a [`PayingClient`]'s channels, with the same
//! steps as its HTTP flow (`src/client/request.rs`): the offer from the payment-required
//! answer, a deposit when the balance is short, one cumulative voucher per call, a retry on
//! `channel_busy`, a proven corrective answer adopted, the chain re-read when the server knows
//! less, and every receipt checked (`checks::check`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
    ClientRequest, Implementation, JsonObject, RequestMetaObject, ServerResult,
};
use rmcp::service::{Peer, RoleClient, ServiceError};
use serde_json::{Map, Value};

use super::{PAYMENT_EXTENSION, PAYMENT_META, PAYMENT_RESPONSE_META, payment_required_of};
use crate::client::{ClientError, PayingClient, Target};
use crate::reason::Reason;
use crate::wire::{BATCH_SETTLEMENT, PaymentRequired, SettleResponse};

/// Payment attempts per call (a corrective answer or a chain re-read may each cost one).
const MAX_ATTEMPTS: usize = 4;

/// Why a paid tool call failed.
#[derive(Debug, thiserror::Error)]
pub enum McpClientError {
    /// The payment side: no offer we can pay, refused, a cheating server, the spend limit…
    #[error(transparent)]
    Payment(#[from] ClientError),
    /// The MCP session (transport closed, a JSON-RPC error, an unexpected answer).
    #[error("mcp: {0}")]
    Service(#[from] ServiceError),
}

/// A tool's answer to a (possibly paid) call.
#[derive(Debug)]
pub struct PaidToolResult {
    /// The tool's result (for a failed tool, its error result; charged nothing).
    pub result: CallToolResult,
    /// The verified `x402/payment-response`, when the call was paid.
    pub settle: Option<SettleResponse>,
}

impl PaidToolResult {
    /// What this call cost, when paid.
    pub fn charged(&self) -> Option<u128> {
        self.settle
            .as_ref()
            .and_then(|s| s.extra.as_ref())
            .and_then(|e| e.charged_amount)
    }
}

/// The MCP client configuration that advertises the `org.x402/payment` extension, so that a
/// server answers with the extension binding: `paying_client_config().serve(transport)`.
pub fn paying_client_config() -> ClientConfig {
    let mut capabilities = ClientCapabilities::default();
    capabilities
        .extensions
        .get_or_insert_with(Default::default)
        .insert(PAYMENT_EXTENSION.into(), Map::new());
    ClientConfig::new(
        capabilities,
        Implementation::new("x402-upto", env!("CARGO_PKG_VERSION")),
    )
}

/// Pays tool calls on one MCP session. The channels, the voucher signer, the spend limit and
/// the list of cheating servers are those of the [`PayingClient`]: HTTP requests and tool
/// calls to the same receiver pay from one channel.
#[derive(Debug)]
pub struct McpPayingClient {
    payer: Arc<PayingClient>,
    peer: Peer<RoleClient>,
    /// The offer each tool made last time: the next call pays at once (one round trip).
    offers: Mutex<HashMap<String, Target>>,
}

/// A payment-required answer: the offer, the receipt it carried (a failed settlement, or a
/// deposit's), and the server's human-readable message.
struct Required {
    required: PaymentRequired,
    receipt: Option<SettleResponse>,
    message: String,
}

/// What one call answered, classified.
enum Answer {
    /// A payment-required answer (either binding).
    Required(Box<Required>),
    /// A finished tool result (success or the tool's own error).
    Done(CallToolResult),
}

impl McpPayingClient {
    /// Pays on `peer`'s session from `payer`'s channels.
    pub fn new(payer: Arc<PayingClient>, peer: Peer<RoleClient>) -> Self {
        Self {
            payer,
            peer,
            offers: Mutex::new(HashMap::new()),
        }
    }

    /// The paying client (channels, cheaters).
    pub fn payer(&self) -> &PayingClient {
        &self.payer
    }

    /// Calls tool `name`, paying if it asks to be paid.
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
    ) -> Result<PaidToolResult, McpClientError> {
        let cached = self.offers.lock().get(name).cloned();
        let mut ahead = cached.is_some();
        let mut target = match cached {
            Some(t) => {
                self.payer.refuse_cheater(t.pay_to)?;
                t
            }
            None => match self.send(name, arguments.clone(), None).await? {
                Answer::Done(result) => {
                    return Ok(PaidToolResult {
                        result,
                        settle: None,
                    });
                }
                Answer::Required(answer) => self.payer.target(&answer.required)?,
            },
        };
        let mut busy_waits = 0;
        let mut attempt = 0;
        let mut cold_for = None;
        let mut reread = false;
        // The channel's turn, held until the receipt is recorded (taken again if the offer,
        // and so the channel, changes).
        let mut turn = None;
        loop {
            attempt += 1;
            if turn.as_ref().is_none_or(|(id, _)| *id != target.id) {
                // The old channel's turn goes first: never two held at once.
                drop(turn.take());
                turn = Some((target.id, self.payer.channel_turn(target.id).await));
            }
            if cold_for != Some(target.id) {
                cold_for = Some(target.id);
                self.payer.cold_start(&target, false).await?;
            }
            let (payment, deposit) = self.payer.next_payment(&target, None)?;
            let sent = self.send(name, arguments.clone(), Some(payment)).await;
            let answer = match sent {
                Ok(answer) => answer,
                Err(McpClientError::Service(ServiceError::McpError(error))) => {
                    // The tool failed with a JSON-RPC error: charged nothing; a deposit's
                    // receipt rides in the error's data.
                    if deposit.is_some()
                        && let Some(receipt) = error
                            .data
                            .as_ref()
                            .and_then(|d| d.get(PAYMENT_RESPONSE_META))
                            .and_then(|r| serde_json::from_value::<SettleResponse>(r.clone()).ok())
                        && receipt.success
                    {
                        self.payer.record_failed(&target, &receipt, deposit)?;
                    }
                    return Err(ServiceError::McpError(error).into());
                }
                Err(other) => return Err(other),
            };
            match answer {
                Answer::Done(result) => {
                    return self.finish(name, &target, result, deposit);
                }
                Answer::Required(answer) => {
                    let Required {
                        required,
                        receipt,
                        message,
                    } = *answer;
                    if deposit.is_some()
                        && let Some(receipt) = receipt.filter(|r| r.success)
                    {
                        self.payer.record_failed(&target, &receipt, deposit)?;
                    }
                    let reason = required.error.clone().unwrap_or_default();
                    if reason == Reason::ChannelBusy.as_str() && busy_waits < 50 {
                        busy_waits += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        attempt -= 1;
                        continue;
                    }
                    let chain_baseline = reason == Reason::CumulativeBelowClaimed.as_str()
                        || (reason == Reason::CumulativeAmountMismatch.as_str()
                            && !has_channel_state(&required));
                    if chain_baseline
                        && !reread
                        && attempt < MAX_ATTEMPTS
                        && self.payer.reads_chain()
                    {
                        reread = true;
                        if self.payer.cold_start(&target, true).await? {
                            continue;
                        }
                    }
                    if reason == Reason::CumulativeAmountMismatch.as_str() && attempt < MAX_ATTEMPTS
                    {
                        self.payer.resync(&target, &required)?;
                        continue;
                    }
                    if ahead {
                        // The remembered offer no longer fits: start over from the server's.
                        ahead = false;
                        self.offers.lock().remove(name);
                        target = self.payer.target(&required)?;
                        attempt -= 1;
                        continue;
                    }
                    return Err(ClientError::Refused {
                        status: 402,
                        reason,
                        message,
                    }
                    .into());
                }
            }
        }
    }

    /// Asks for a cooperative refund of the channel that pays tool `name` (everything unspent
    /// when `amount` is `None`): the refund payload goes in a call of that tool, which the
    /// server answers with the receipt instead of running it. A channel refunded down to its
    /// charge is forgotten.
    pub async fn refund(
        &self,
        name: &str,
        amount: Option<u128>,
    ) -> Result<SettleResponse, McpClientError> {
        let target = match self.send(name, None, None).await? {
            Answer::Required(answer) => self.payer.target(&answer.required)?,
            Answer::Done(_) => {
                return Err(ClientError::NoOffer(format!("tool {name} is free")).into());
            }
        };
        let _turn = self.payer.channel_turn(target.id).await;
        self.payer.cold_start(&target, false).await?;
        for attempt in 1..=MAX_ATTEMPTS {
            let (payment, state) = self.payer.refund_payment(&target, amount)?;
            match self.send(name, None, Some(payment)).await? {
                Answer::Required(answer) => {
                    let reason = answer.required.error.clone().unwrap_or_default();
                    if reason == Reason::CumulativeAmountMismatch.as_str() && attempt < MAX_ATTEMPTS
                    {
                        self.payer.resync(&target, &answer.required)?;
                        continue;
                    }
                    return Err(ClientError::Refused {
                        status: 402,
                        reason,
                        message: answer.message,
                    }
                    .into());
                }
                Answer::Done(result) => {
                    let settle = result
                        .meta
                        .as_ref()
                        .and_then(|m| m.get(PAYMENT_RESPONSE_META))
                        .and_then(|r| serde_json::from_value::<SettleResponse>(r.clone()).ok())
                        .ok_or_else(|| {
                            self.payer
                                .cheated(&target, "refund answer without x402/payment-response")
                        })?;
                    if !settle.success {
                        return Err(ClientError::Refused {
                            status: 500,
                            reason: settle.error_reason.unwrap_or_default(),
                            message: settle.error_message.unwrap_or_default(),
                        }
                        .into());
                    }
                    self.payer.record_refund(&target, &state, &settle)?;
                    self.offers.lock().remove(name);
                    return Ok(settle);
                }
            }
        }
        Err(ClientError::NoChannel.into())
    }

    /// A finished result of a paid call: a success must carry a valid receipt; a tool error
    /// charged nothing (its receipt, if any, is a deposit's).
    fn finish(
        &self,
        name: &str,
        target: &Target,
        result: CallToolResult,
        deposit: Option<u128>,
    ) -> Result<PaidToolResult, McpClientError> {
        let receipt = result
            .meta
            .as_ref()
            .and_then(|m| m.get(PAYMENT_RESPONSE_META))
            .map(|r| serde_json::from_value::<SettleResponse>(r.clone()));
        if result.is_error == Some(true) {
            if deposit.is_some()
                && let Some(Ok(receipt)) = &receipt
            {
                self.payer.record_failed(target, receipt, deposit)?;
            }
            return Ok(PaidToolResult {
                result,
                settle: None,
            });
        }
        let Some(Ok(settle)) = receipt else {
            return Err(self
                .payer
                .cheated(
                    target,
                    "paid tool result without a valid x402/payment-response",
                )
                .into());
        };
        let settle = self.payer.check_settle(target, settle, deposit)?;
        self.offers.lock().insert(name.to_owned(), target.clone());
        Ok(PaidToolResult {
            result,
            settle: Some(settle),
        })
    }

    /// One `tools/call`, with `payment` in `_meta["x402/payment"]` when given.
    async fn send(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
        payment: Option<Value>,
    ) -> Result<Answer, McpClientError> {
        let mut params = CallToolRequestParams::new(name.to_owned());
        params.arguments = arguments;
        if let Some(payment) = payment {
            let mut meta = RequestMetaObject::new();
            meta.insert(PAYMENT_META.into(), payment);
            params.meta = Some(meta);
        }
        let answer = self
            .peer
            .send_request(ClientRequest::CallToolRequest(CallToolRequest::new(params)))
            .await?;
        classify(answer).ok_or_else(|| ServiceError::UnexpectedResponse.into())
    }
}

/// A `tools/call` answer as a payment-required answer or a finished result; `None` for
/// anything else.
fn classify(answer: ServerResult) -> Option<Answer> {
    let value = serde_json::to_value(&answer).ok()?;
    if let Some(required) = payment_required_of(&value) {
        let receipt = value
            .pointer(&format!(
                "/_meta/{}",
                PAYMENT_RESPONSE_META.replace('/', "~1")
            ))
            .and_then(|r| serde_json::from_value(r.clone()).ok());
        // Ours: `message` in the extension's result, the second text block of a tool result.
        let message = value
            .get("message")
            .or_else(|| value.pointer("/content/1/text"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        return Some(Answer::Required(Box::new(Required {
            required,
            receipt,
            message,
        })));
    }
    match answer {
        ServerResult::CallToolResult(result) => Some(Answer::Done(result)),
        _ => None,
    }
}

/// Whether a payment-required answer's `batch-settlement` offer carries a `channelState`.
fn has_channel_state(required: &PaymentRequired) -> bool {
    required
        .accepts
        .iter()
        .filter(|o| o.scheme == BATCH_SETTLEMENT)
        .filter_map(|o| o.batch_extra().ok())
        .any(|e| e.channel_state.is_some())
}

//! x402 over MCP (the Model Context Protocol) with `batch-settlement` channels, on the official
//! Rust SDK (`rmcp`).
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | the `_meta` keys, the extension id, `mcp://tool/<name>` URLs, reading a payment-required answer |
//! | `server.rs` | [`PaidTools`]: a wrapper around any MCP server that prices chosen tools and runs them through the [`Engine`](crate::engine::Engine) as the HTTP layer does (both bindings); [`PaidToolHandler`], the same as an rmcp `ServerHandler` for handler-only transports (tool-result binding) |
//! | `client.rs` | [`McpPayingClient`]: pays tool calls from a [`PayingClient`](crate::client::PayingClient)'s channels |
//!
//! The wire (x402 transport spec `transports-v2/mcp.md`; `docs/protocol.md`, "MCP"):
//!
//! - the client sends its `PaymentPayload` as JSON in `params._meta["x402/payment"]` of
//!   `tools/call`;
//! - the server answers a paid call with the tool's result and the `SettleResponse` in
//!   `result._meta["x402/payment-response"]`;
//! - a payment-required answer is, in the *tool-result* binding, a tool result with
//!   `isError: true` and the `PaymentRequired` object in `structuredContent` and (as JSON text)
//!   in `content[0].text`; in the experimental *extension* binding, used when the request
//!   advertises the client capability `org.x402/payment`, it is the result
//!   `{"resultType": "payment_required", "paymentRequired": …}`.
//!
//! A paid call is the HTTP request's twin: the payment is checked in memory and holds the
//! channel (`Engine::authorize`), the tool runs and reports its cost with the
//! [`Charge`](crate::server::Charge) it finds in the request's extensions, and the charge is
//! made durable (`Engine::settle`) before the answer leaves. A tool that fails is charged
//! nothing; a settlement that fails returns no tool output.

mod client;
mod server;

pub use client::{McpClientError, McpPayingClient, PaidToolResult, paying_client_config};
pub use server::{PaidToolHandler, PaidTools, ToolPrice};

use serde_json::Value;

use crate::wire::PaymentRequired;

/// `params._meta` key of the client's `PaymentPayload`.
pub const PAYMENT_META: &str = "x402/payment";
/// `result._meta` key of the server's `SettleResponse`.
pub const PAYMENT_RESPONSE_META: &str = "x402/payment-response";
/// The extension a client advertises to get `payment_required` results.
pub const PAYMENT_EXTENSION: &str = "org.x402/payment";
/// `resultType` of the extension binding's payment-required answer.
pub const PAYMENT_REQUIRED_RESULT: &str = "payment_required";

/// The `resource.url` of a paid tool.
pub fn tool_url(name: &str) -> String {
    format!("mcp://tool/{name}")
}

/// The `PaymentRequired` a result carries, in either binding: the extension's
/// `paymentRequired`, or a tool error's `structuredContent` (preferred) or `content[0].text`.
/// `None` for anything else (a tool's own error, a normal result).
pub fn payment_required_of(result: &Value) -> Option<PaymentRequired> {
    if result.get("resultType").and_then(Value::as_str) == Some(PAYMENT_REQUIRED_RESULT) {
        return result
            .get("paymentRequired")
            .and_then(|p| serde_json::from_value(p.clone()).ok());
    }
    if result.get("isError").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let parse = |v: &Value| -> Option<PaymentRequired> {
        // Only an object shaped like an offer: a tool's own error text is not one.
        (v.get("x402Version").is_some() && v.get("accepts").is_some())
            .then(|| serde_json::from_value(v.clone()).ok())
            .flatten()
    };
    if let Some(found) = result.get("structuredContent").and_then(parse) {
        return Some(found);
    }
    let text = result.pointer("/content/0/text").and_then(Value::as_str)?;
    serde_json::from_str::<Value>(text)
        .ok()
        .as_ref()
        .and_then(parse)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::payment_required_of;

    fn offer(error: &str) -> serde_json::Value {
        json!({"x402Version": 2, "error": error, "resource": {"url": "mcp://tool/t"},
               "accepts": [{"scheme": "batch-settlement", "network": "eip155:1", "amount": "1",
                            "asset": "0x0", "payTo": "0x0", "maxTimeoutSeconds": 60, "extra": {}}]})
    }

    #[test]
    fn both_bindings_are_read_and_a_tools_own_error_is_not_an_offer() {
        let extension = json!({"resultType": "payment_required", "paymentRequired": offer("a")});
        assert_eq!(
            payment_required_of(&extension).unwrap().error.as_deref(),
            Some("a")
        );
        // structuredContent wins over the text.
        let both = json!({"isError": true, "structuredContent": offer("s"),
                          "content": [{"type": "text", "text": offer("t").to_string()}]});
        assert_eq!(
            payment_required_of(&both).unwrap().error.as_deref(),
            Some("s")
        );
        let text_only = json!({"isError": true,
                               "content": [{"type": "text", "text": offer("t").to_string()}]});
        assert_eq!(
            payment_required_of(&text_only).unwrap().error.as_deref(),
            Some("t")
        );
        // Not an error, or an error that is not an offer: no payment asked.
        let ok = json!({"isError": false, "structuredContent": offer("x"), "content": []});
        assert!(payment_required_of(&ok).is_none());
        let own = json!({"isError": true, "structuredContent": {"error": "quota"},
                         "content": [{"type": "text", "text": "{\"accepts\": 1}"}]});
        assert!(payment_required_of(&own).is_none());
        let plain =
            json!({"isError": true, "content": [{"type": "text", "text": "upstream down"}]});
        assert!(payment_required_of(&plain).is_none());
    }
}

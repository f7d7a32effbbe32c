//! Reading the `usage` the upstream reports, in either API's shape.

use super::*;

/// Tokens the upstream reports for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) input: u64,
    pub(super) output: u64,
}

/// The `usage` of a JSON answer; `None` if missing or not the API's shape.
pub(super) fn json_usage(api: TokenApi, body: &[u8]) -> Option<Usage> {
    let v: Value = serde_json::from_slice(body).ok()?;
    usage_of(api, v.get("usage")?)
}

pub(super) fn tokens(v: &Value, key: &str) -> Option<u64> {
    v.get(key)?.as_u64()
}

/// A token count that may be absent or `null`, but is a count if present.
pub(super) fn optional_tokens(v: &Value, key: &str) -> Option<u64> {
    match v.get(key) {
        None | Some(Value::Null) => Some(0),
        Some(n) => n.as_u64(),
    }
}

/// A `usage` object of the API's shape. Anthropic's input is the sum of its plain and cache
/// input tokens (all priced as input).
pub(super) fn usage_of(api: TokenApi, usage: &Value) -> Option<Usage> {
    match api {
        TokenApi::OpenAi => Some(Usage {
            input: tokens(usage, "prompt_tokens")?,
            output: tokens(usage, "completion_tokens")?,
        }),
        TokenApi::Anthropic => Some(Usage {
            input: anthropic_input(usage)?,
            output: tokens(usage, "output_tokens")?,
        }),
    }
}

pub(super) fn anthropic_input(usage: &Value) -> Option<u64> {
    tokens(usage, "input_tokens")?
        .checked_add(optional_tokens(usage, "cache_creation_input_tokens")?)?
        .checked_add(optional_tokens(usage, "cache_read_input_tokens")?)
}

//! The admin API's bearer token: read from the environment (never from the TOML), required
//! on every `/api/` request, compared in constant time.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use alloy_primitives::keccak256;

/// Shortest token accepted: a guessable token on an API that refunds and blocks is refused
/// at start-up.
pub const MIN_TOKEN_LEN: usize = 24;

/// The expected token, kept as its hash: comparing two 32-byte hashes in constant time
/// leaks neither the token's bytes nor its length.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token in environment variable `var`; an error naming the variable when it is
    /// unset, empty or too short.
    pub fn from_env(var: &str) -> Result<Self, String> {
        let value = std::env::var(var).unwrap_or_default();
        Self::new(value.trim()).map_err(|e| format!("[admin]: {e} (environment variable {var})"))
    }

    /// `value` as the expected token.
    pub fn new(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("the admin API needs a bearer token and none is set".into());
        }
        if value.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the admin token is shorter than {MIN_TOKEN_LEN} characters (make one with \
                 `openssl rand -hex 32`)"
            ));
        }
        Ok(Self(keccak256(value.as_bytes()).0))
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let h = keccak256(presented).0;
        h.iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Lets a request through only with `Authorization: Bearer <token>`; 401 otherwise.
pub async fn require_token(State(token): State<Token>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(t) if token.matches(t) => next.run(req).await,
        _ => {
            let mut resp = (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({
                    "error": "unauthorized",
                    "message": "send the admin token as `Authorization: Bearer <token>`",
                })),
            )
                .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"x402-upto admin\""),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let t = Token::new("0123456789abcdef0123456789abcdef").unwrap();
        assert!(t.matches(b"0123456789abcdef0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdef0123456789abcdeF"));
        assert!(!t.matches(b"0123456789abcdef0123456789abcdef "));
        assert!(!t.matches(b""));
    }

    #[test]
    fn empty_and_short_tokens_are_refused() {
        assert!(Token::new("").is_err());
        assert!(Token::new("short-token").is_err());
    }
}

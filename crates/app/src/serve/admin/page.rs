//! The dashboard: one HTML page, its script and its style sheet, embedded in the binary
//! (no build step, nothing fetched from elsewhere). The page holds no data; its script asks
//! the API with the token the operator gives it (`docs/security.md`).

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

const HTML: &str = include_str!("dashboard.html");
const JS: &str = include_str!("dashboard.js");
const CSS: &str = include_str!("dashboard.css");

/// Only this origin's script, style and API; no frames, no forms posted anywhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn html() -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], HTML).into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

pub async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}

pub async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

/// Every admin answer: not cached, not framed, no referrer, no type sniffing.
pub async fn no_store(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

//! The request target as the upstream will see it, decided once.
//!
//! A reverse proxy that prices by path must price exactly the path its upstream serves. An
//! origin may resolve `..`, decode `%2e`, merge `//`, treat `\` as `/` or `;` as a parameter
//! separator; if the price were decided on the raw bytes and the upstream resolved them, an
//! unpriced path could name a priced resource. So the target is normalised here, before any
//! pricing, into a form no common origin interprets differently (RFC 3986 dot-segment
//! removal, unreserved characters decoded, hex digits upper-cased, empty segments merged),
//! and whatever could still be read two ways is refused. The normalised form is what is
//! priced and what is forwarded, byte for byte.

use std::fmt;

/// Longest request target (path and query) accepted by default, in bytes.
pub const DEFAULT_MAX_TARGET_BYTES: usize = 4096;

/// A request target that is its own normal form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTarget {
    path: String,
    query: Option<String>,
}

impl RequestTarget {
    /// The normalised path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The normalised query (without `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Path and query as sent upstream.
    pub fn to_path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Why a request target was refused (answered 400; nothing priced, nothing forwarded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Not a path starting with `/` (`*`, authority form).
    NotOriginForm,
    /// Longer than the configured limit.
    TooLong,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// `%2F` or `%5C` in the path: one segment to us, two to an origin that decodes first.
    EncodedSeparator,
    /// A backslash in the path: a separator on some origins.
    Backslash,
    /// `%25` in the path: a second decoding by the origin would read something else.
    EncodedPercent,
    /// `;` in the path: a path parameter on some origins (`/paid;x/ok` is `/paid/ok` there).
    Semicolon,
    /// NUL or another control character, raw or encoded.
    ControlCharacter,
    /// A byte outside printable ASCII.
    NonAscii,
    /// Escapes that do not decode to UTF-8 (`%C0%AE`: an overlong `.` to some decoders).
    InvalidUtf8,
}

impl TargetError {
    /// A short machine-readable code for the 400 body and the metrics label.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotOriginForm => "target_not_origin_form",
            Self::TooLong => "target_too_long",
            Self::BadPercentEncoding => "target_bad_percent_encoding",
            Self::EncodedSeparator => "target_encoded_separator",
            Self::Backslash => "target_backslash",
            Self::EncodedPercent => "target_encoded_percent",
            Self::Semicolon => "target_semicolon",
            Self::ControlCharacter => "target_control_character",
            Self::NonAscii => "target_non_ascii",
            Self::InvalidUtf8 => "target_invalid_utf8",
        }
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Self::NotOriginForm => "the request target must be a path starting with '/'",
            Self::TooLong => "the request target is too long",
            Self::BadPercentEncoding => "a '%' is not followed by two hex digits",
            Self::EncodedSeparator => "an encoded '/' or '\\' in the path is ambiguous",
            Self::Backslash => "a backslash in the path is ambiguous",
            Self::EncodedPercent => "an encoded '%' in the path is ambiguous",
            Self::Semicolon => "a ';' in the path is ambiguous",
            Self::ControlCharacter => "control characters are not allowed",
            Self::NonAscii => "only ASCII is allowed in the request target",
            Self::InvalidUtf8 => "escapes in the path must decode to UTF-8",
        };
        f.write_str(what)
    }
}

impl std::error::Error for TargetError {}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Path,
    Query,
}

/// Decodes percent-encoded unreserved characters, upper-cases the hex digits of every other
/// escape, and refuses what an origin could read differently.
fn canonical_escapes(raw: &str, part: Part) -> Result<String, TargetError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(TargetError::BadPercentEncoding);
            };
            let v = hi << 4 | lo;
            if v < 0x20 || v == 0x7f {
                return Err(TargetError::ControlCharacter);
            }
            if part == Part::Path {
                match v {
                    b'/' | b'\\' => return Err(TargetError::EncodedSeparator),
                    b'%' => return Err(TargetError::EncodedPercent),
                    _ => {}
                }
            }
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
            i += 3;
            continue;
        }
        if b < 0x20 || b == 0x7f {
            return Err(TargetError::ControlCharacter);
        }
        if b >= 0x80 {
            return Err(TargetError::NonAscii);
        }
        if part == Part::Path {
            match b {
                b'\\' => return Err(TargetError::Backslash),
                b';' => return Err(TargetError::Semicolon),
                _ => {}
            }
        }
        out.push(char::from(b));
        i += 1;
    }
    Ok(out)
}

/// Refuses escapes whose decoded bytes are not UTF-8: an old or lenient decoder may read an
/// overlong sequence such as `%C0%AE` as `.`.
fn check_utf8(canonical: &str) -> Result<(), TargetError> {
    let b = canonical.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push(hi << 4 | lo);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).map_err(|_| TargetError::InvalidUtf8)?;
    Ok(())
}

/// RFC 3986 §5.2.4 dot-segment removal on a path whose escapes are canonical, also merging
/// empty segments (`//`), as nginx does by default. A trailing `/`, `/.` or `/..` leaves a
/// trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

/// Normalises a request's path and query (as received: `/a/../b?x=%7e`), or says why it
/// cannot be normalised unambiguously. `max_bytes` bounds the raw target.
pub fn normalize(path_and_query: &str, max_bytes: usize) -> Result<RequestTarget, TargetError> {
    if path_and_query.len() > max_bytes {
        return Err(TargetError::TooLong);
    }
    let (raw_path, raw_query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    if !raw_path.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    let canonical = canonical_escapes(raw_path, Part::Path)?;
    // Only escapes can hide a byte that is not UTF-8 (raw non-ASCII is refused above).
    if canonical.contains('%') {
        check_utf8(&canonical)?;
    }
    let path = remove_dot_segments(&canonical);
    let query = raw_query
        .map(|q| canonical_escapes(q, Part::Query))
        .transpose()?;
    Ok(RequestTarget { path, query })
}

/// A configured route prefix in the form [`matches_prefix`] compares: normalised, without a
/// trailing slash (the root is the empty string), ASCII lower case. `None` if the prefix is
/// not its own normal form (it could never match what a client sends).
pub fn route_prefix(prefix: &str) -> Option<String> {
    let target = normalize(prefix, DEFAULT_MAX_TARGET_BYTES).ok()?;
    if target.query.is_some() {
        return None;
    }
    let trimmed = prefix.trim_end_matches('/');
    let normal = target.path.trim_end_matches('/');
    (normal == trimmed).then(|| normal.to_ascii_lowercase())
}

/// Whether a normalised `path` lies under a prefix made by [`route_prefix`]: the prefix
/// itself (with or without its trailing slash) or anything below it. Compared without regard
/// to ASCII case, because some origins ignore case: pricing `/PAID/x` costs an honest client
/// nothing, serving it free could cost the operator.
pub fn matches_prefix(path: &str, prefix: &str) -> bool {
    let p = path.as_bytes();
    let q = prefix.as_bytes();
    if p.len() < q.len() || !p[..q.len()].eq_ignore_ascii_case(q) {
        return false;
    }
    matches!(p.get(q.len()), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(raw: &str) -> Result<String, TargetError> {
        normalize(raw, DEFAULT_MAX_TARGET_BYTES).map(|t| t.to_path_and_query())
    }

    #[test]
    fn dot_segments_are_removed_in_every_spelling() {
        for raw in [
            "/free/../paid/ok",
            "/free/%2e%2e/paid/ok",
            "/free/%2E%2E/paid/ok",
            "/free/.%2e/paid/ok",
            "/free/%2e./paid/ok",
            "/./paid/ok",
            "/%2e/paid/ok",
            "//paid/ok",
            "/paid//ok",
            "/paid/./ok",
            "/x/y/../../paid/ok",
            "/../paid/ok",
            "/../../../paid/ok",
            "/%70aid/ok",
            "/%70%61%69%64/%6f%6b",
        ] {
            assert_eq!(n(raw).as_deref(), Ok("/paid/ok"), "{raw}");
        }
    }

    #[test]
    fn trailing_slashes_and_the_root() {
        assert_eq!(n("/").as_deref(), Ok("/"));
        assert_eq!(n("/paid/").as_deref(), Ok("/paid/"));
        assert_eq!(n("/paid/.").as_deref(), Ok("/paid/"));
        assert_eq!(n("/paid/x/..").as_deref(), Ok("/paid/"));
        assert_eq!(n("/..").as_deref(), Ok("/"));
        assert_eq!(n("//").as_deref(), Ok("/"));
        assert_eq!(n("/a/b/../..").as_deref(), Ok("/"));
    }

    #[test]
    fn ambiguous_targets_are_refused() {
        for (raw, why) in [
            ("/paid%2fok", TargetError::EncodedSeparator),
            ("/paid%2Fok", TargetError::EncodedSeparator),
            ("/free%5c..%5cpaid/ok", TargetError::EncodedSeparator),
            ("/free\\..\\paid/ok", TargetError::Backslash),
            ("/free/%00/x", TargetError::ControlCharacter),
            ("/free/%0a/x", TargetError::ControlCharacter),
            ("/free/%7f", TargetError::ControlCharacter),
            ("/free/%252e%252e/paid", TargetError::EncodedPercent),
            ("/paid;x/ok", TargetError::Semicolon),
            ("/paid/%zz", TargetError::BadPercentEncoding),
            ("/paid/%2", TargetError::BadPercentEncoding),
            ("/paid/%", TargetError::BadPercentEncoding),
            ("*", TargetError::NotOriginForm),
            ("", TargetError::NotOriginForm),
            ("paid/ok", TargetError::NotOriginForm),
            ("/x?a=%zz", TargetError::BadPercentEncoding),
            ("/x?a=%00", TargetError::ControlCharacter),
            ("/free/%c0%ae%c0%ae/paid", TargetError::InvalidUtf8),
            ("/caf%c3", TargetError::InvalidUtf8),
        ] {
            assert_eq!(n(raw), Err(why), "{raw}");
        }
        let long = format!("/{}", "a".repeat(DEFAULT_MAX_TARGET_BYTES));
        assert_eq!(n(&long), Err(TargetError::TooLong));
    }

    #[test]
    fn escapes_that_stay_are_upper_cased_and_queries_keep_their_slashes() {
        assert_eq!(n("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(
            n("/x?u=%2fa%2Fb&v=%7e;w").as_deref(),
            Ok("/x?u=%2Fa%2Fb&v=~;w")
        );
        assert_eq!(n("/x?").as_deref(), Ok("/x?"));
        // Dots in a query are data, not segments.
        assert_eq!(n("/x?p=../paid").as_deref(), Ok("/x?p=../paid"));
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for raw in ["/a/./b/../c/", "/%41%2e/..//b?q=%41", "/caf%c3%a9/x"] {
            let once = n(raw).unwrap_or_default();
            assert_eq!(n(&once).as_deref(), Ok(once.as_str()), "{raw}");
        }
    }

    #[test]
    fn prefixes_match_by_segment_and_without_regard_to_case() {
        let p = route_prefix("/paid/").unwrap_or_default();
        assert_eq!(p, "/paid");
        assert!(matches_prefix("/paid", &p));
        assert!(matches_prefix("/paid/", &p));
        assert!(matches_prefix("/paid/ok", &p));
        assert!(matches_prefix("/PAID/ok", &p));
        assert!(!matches_prefix("/paidx", &p));
        assert!(!matches_prefix("/pai", &p));
        let root = route_prefix("/").unwrap_or_default();
        assert!(matches_prefix("/", &root) && matches_prefix("/anything", &root));
        assert_eq!(route_prefix("/a/../b"), None);
        assert_eq!(route_prefix("/a?b"), None);
        assert_eq!(route_prefix("/a%2fb"), None);
    }
}

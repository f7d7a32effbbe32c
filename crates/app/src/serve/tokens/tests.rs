//! The quote, usage shapes, stream tallies and route checks of token routes.
#![allow(clippy::unwrap_used)]

use super::*;

fn route(api: &str, extra: &str) -> TokenRoute {
    let toml = format!(
        "prefix = \"/v1/\"\ntokens = \"{api}\"\n{extra}\n[models]\n\
         small = {{ input = 1000000, output = 2000000 }}\n"
    );
    TokenRoute::new(&toml::from_str::<RouteConfig>(&toml).unwrap()).unwrap()
}

fn code(r: Result<Quote, Unpriceable>) -> &'static str {
    r.unwrap_err().1
}

#[test]
fn the_quote_is_the_body_bound_plus_max_tokens() {
    let r = route("openai", "");
    let body = br#"{"model":"small","max_tokens":100,"messages":[]}"#;
    let q = r.quote(body).unwrap();
    // 1 unit per input token, 2 per output token; input bound = body bytes.
    assert_eq!(q.input_bound, body.len() as u64);
    assert_eq!(q.price, body.len() as u128 + 200);
    // OpenAI: the larger of max_tokens and max_completion_tokens, times n.
    let body = br#"{"model":"small","max_tokens":10,"max_completion_tokens":30,"n":2}"#;
    assert_eq!(r.quote(body).unwrap().output_bound, 60);
}

#[test]
fn unpriceable_bodies_are_refused_with_their_reason() {
    let r = route("openai", "");
    assert_eq!(
        code(r.quote(br#"{"model":"big","max_tokens":1}"#)),
        "unknown_model"
    );
    assert_eq!(
        code(r.quote(br#"{"model":"small"}"#)),
        "max_tokens_required"
    );
    assert_eq!(code(r.quote(b"not json")), "invalid_body");
    assert_eq!(
        code(r.quote(br#"{"model":"small","max_tokens":-1}"#)),
        "invalid_body"
    );
    assert_eq!(
        code(r.quote(br#"{"model":"small","max_tokens":1} x"#)),
        "invalid_body"
    );
    // A repeated field could be read differently upstream: refused.
    let twice = br#"{"model":"small","max_tokens":1,"max_tokens":100000}"#;
    assert_eq!(code(r.quote(twice)), "invalid_body");
    let twice = br#"{"model":"small","model":"other","max_tokens":1}"#;
    assert_eq!(code(r.quote(twice)), "invalid_body");
    assert_eq!(
        code(r.quote(br#"{"model":"small","max_tokens":1,"n":0}"#)),
        "max_tokens_out_of_range"
    );
    let stream = br#"{"model":"small","max_tokens":1,"stream":true}"#;
    assert_eq!(code(r.quote(stream)), "stream_usage_required");
    // Anthropic streams always carry their usage.
    assert!(route("anthropic", "").quote(stream).unwrap().stream);
}

#[test]
fn defaults_caps_and_stream_increments() {
    let r = route(
        "anthropic",
        "default_max_tokens = 50\nmax_input_tokens = 10\nstream_increment_tokens = 20",
    );
    let q = r.quote(br#"{"model":"small"}"#).unwrap();
    // The default output bound; the input bound is capped.
    assert_eq!((q.input_bound, q.output_bound, q.price), (10, 50, 110));
    // Either field, and `n`, whichever API: the bound covers an upstream honouring them.
    let q = r.quote(br#"{"model":"small","max_completion_tokens":5,"n":2}"#);
    assert_eq!(q.unwrap().output_bound, 10);
    let q = r.quote(br#"{"model":"small","stream":true}"#).unwrap();
    // A stream's first voucher covers one increment of output.
    assert_eq!(
        (q.output_bound, q.price, q.maximum),
        (50, 10 + 40, 10 + 100)
    );
}

#[test]
fn prices_round_up_to_the_next_atomic_unit() {
    let p = ModelPrice {
        input: 150,
        output: 600,
    };
    assert_eq!(cost(p, 1000, 0), Some(1));
    assert_eq!(cost(p, 0, 0), Some(0));
    assert_eq!(cost(p, 10_000, 1_000), Some(3)); // 1.5 + 0.6 → 3
    let huge = ModelPrice {
        input: u128::MAX,
        output: 1,
    };
    assert_eq!(cost(huge, 2, 0), None);
}

#[test]
fn json_usage_of_each_api() {
    let openai = br#"{"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
    assert_eq!(
        json_usage(TokenApi::OpenAi, openai),
        Some(Usage {
            input: 12,
            output: 5
        })
    );
    let anthropic = br#"{"usage":{"input_tokens":12,"cache_read_input_tokens":3,"cache_creation_input_tokens":null,"output_tokens":5}}"#;
    assert_eq!(
        json_usage(TokenApi::Anthropic, anthropic),
        Some(Usage {
            input: 15,
            output: 5
        })
    );
    for bad in [
        &br#"{"usage":{"prompt_tokens":"12","completion_tokens":5}}"#[..],
        br#"{"usage":{"prompt_tokens":12}}"#,
        br#"{"usage":{"prompt_tokens":-1,"completion_tokens":5}}"#,
        br#"{"usage":null}"#,
        br#"{"choices":[]}"#,
        b"garbage",
    ] {
        assert_eq!(json_usage(TokenApi::OpenAi, bad), None);
    }
    assert_eq!(json_usage(TokenApi::Anthropic, openai), None);
}

fn quote() -> Quote {
    Quote {
        model: ModelPrice {
            input: 1_000_000,
            output: 2_000_000,
        },
        input_bound: 400,
        output_bound: 10,
        input_estimate: 100,
        stream: true,
        maximum: 420,
        price: 420,
    }
}

#[test]
fn an_openai_stream_is_estimated_until_its_usage_chunk() {
    let mut t = Tally::new(TokenApi::OpenAi);
    t.observe(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n");
    assert_eq!(t.delivered, 0);
    t.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello there\"}}]}\n\n");
    t.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"!\"}}]}\n\n");
    // ⌊11 / 4⌋ = 2, then at least 1.
    assert_eq!(t.delivered, 3);
    assert_eq!(t.estimate(&quote()), 100 + 2 * 3);
    assert_eq!(t.usage(), None);
    t.observe(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":4}}\n\n",
    );
    t.observe(b"data: [DONE]\n\n");
    assert_eq!(
        t.usage(),
        Some(Usage {
            input: 30,
            output: 4
        })
    );
    // Output estimates never pass the bound.
    for _ in 0..50 {
        t.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"word\"}}]}\n\n");
    }
    assert_eq!(t.estimate(&quote()), 100 + 2 * 10);
    t.observe(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":\"x\"}}\n\n");
    assert_eq!(
        t.usage(),
        None,
        "a malformed usage leaves the stream without one"
    );
}

#[test]
fn an_anthropic_stream_needs_message_start_and_message_delta() {
    let mut t = Tally::new(TokenApi::Anthropic);
    t.observe(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n");
    // The reported input replaces the body estimate at once.
    assert_eq!(t.estimate(&quote()), 25);
    t.observe(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello, world\"}}\n\n");
    assert_eq!(t.estimate(&quote()), 25 + 2 * 3);
    assert_eq!(t.usage(), None);
    t.observe(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n");
    assert_eq!(
        t.usage(),
        Some(Usage {
            input: 25,
            output: 15
        })
    );
    let mut t = Tally::new(TokenApi::Anthropic);
    t.observe(b"event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\r\n\r\n");
    assert_eq!(t.usage(), None, "no message_start: no input count");
}

#[test]
fn a_route_is_fixed_or_priced_by_tokens() {
    let check = |toml: &str| {
        toml::from_str::<RouteConfig>(&format!("prefix = \"/v1/\"\n{toml}"))
            .unwrap()
            .check_kind()
    };
    let models = "[models]\nm = { input = 1, output = 2 }";
    assert!(check("price = 5").is_ok());
    assert!(check(&format!("tokens = \"openai\"\n{models}")).is_ok());
    assert!(check(&format!("tokens = \"openai\"\nprice = 5\n{models}")).is_err());
    assert!(check("tokens = \"openai\"").is_err(), "no models");
    assert!(check(&format!("price = 5\n{models}")).is_err());
    assert!(check("").is_err());
    let free = "tokens = \"openai\"\n[models]\nm = { input = 0, output = 0 }";
    assert!(check(free).is_err());
    let zero = format!("tokens = \"openai\"\ndefault_max_tokens = 0\n{models}");
    assert!(check(&zero).is_err());
    // Prices above 64 bits are written as strings.
    let big =
        "tokens = \"anthropic\"\n[models]\nm = { input = \"100000000000000000000\", output = 1 }";
    assert!(check(big).is_ok());
}

#[test]
fn events_end_at_a_blank_line() {
    assert_eq!(event_end(b"data: a\n\ndata: b\n\n"), Some(9));
    assert_eq!(event_end(b"data: a\r\n\r\ndata: b"), Some(11));
    assert_eq!(event_end(b"data: a\ndata: b\n"), None);
}

//! The paid request's fast decoder: a voucher `PaymentPayload` read in one pass, straight
//! into typed fields, with `accepted`'s strings borrowed from the decoded header.
//!
//! It answers only the common case and is exact there: [`VoucherView::parse`] returns
//! `Some` only for input that the general decoder ([`super::decode_header`] into a
//! `serde_json::Value`, then [`super::PaymentPayload`] and [`super::BatchPayload::parse`])
//! also accepts, with the same values. Everything else (`None`) goes to the general decoder,
//! which gives the refusal and its message. Where the two parsers differ in what they take,
//! the view declines:
//!
//! - a `Value` tree checks nesting depth (128) and a struct parser skips unknown fields
//!   without that check, so input with more than [`MAX_BRACKETS`] brackets is declined;
//! - a `Value` map turns an object whose key is serde_json's raw-value token into the
//!   parsed string, so input holding `$` or an escape (`\`) is declined;
//! - a `Value` map keeps the last of duplicate keys where a struct refuses them, so
//!   duplicates decline (by the struct's own error);
//! - the general decoder reads the top level and `payload` as objects by key, where a
//!   struct would also take an array, so those two are read as maps only.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::X402_VERSION;
use super::payload::{ChannelConfigWire, VoucherFields};

/// Most `{` and `[` bytes the view reads (a voucher payload has about eight). Any more and
/// nesting could reach serde_json's depth limit, which only the general decoder enforces.
pub const MAX_BRACKETS: usize = 64;

/// `accepted` of a voucher payment, its strings borrowed where they hold no escape.
#[derive(Debug)]
pub struct AcceptedView<'a> {
    /// `scheme`.
    pub scheme: Cow<'a, str>,
    /// `network`.
    pub network: Cow<'a, str>,
    /// `amount`, as sent.
    pub amount: Cow<'a, str>,
    /// `asset`, as sent.
    pub asset: Cow<'a, str>,
    /// `payTo`, as sent.
    pub pay_to: Cow<'a, str>,
    /// `maxTimeoutSeconds`.
    pub max_timeout_seconds: u64,
    /// `extra`, in the order sent (a key sent twice counts by its last value).
    pub extra: Vec<(Cow<'a, str>, ExtraValue<'a>)>,
}

impl AcceptedView<'_> {
    /// The value of `extra[key]` (the last one if sent twice, as a JSON map keeps it).
    pub fn extra(&self, key: &str) -> Option<&ExtraValue<'_>> {
        self.extra
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// One value of `accepted.extra`: a string borrowed, anything else as a JSON value.
#[derive(Debug, PartialEq)]
pub enum ExtraValue<'a> {
    /// A JSON string.
    Str(Cow<'a, str>),
    /// Any other JSON value.
    Other(Value),
}

/// A voucher `PaymentPayload` (`payload.type == "voucher"`, `x402Version` 2).
#[derive(Debug)]
pub struct VoucherView<'a> {
    /// `accepted`.
    pub accepted: AcceptedView<'a>,
    /// `payload.channelConfig`.
    pub channel_config: ChannelConfigWire,
    /// `payload.voucher`.
    pub voucher: VoucherFields,
}

impl<'a> VoucherView<'a> {
    /// Reads `json` (the decoded header) if it is a voucher payment the general decoder
    /// would read the same way; `None` otherwise (see the module docs).
    pub fn parse(json: &'a [u8]) -> Option<Self> {
        let mut brackets = 0usize;
        let mut plain = true;
        for &b in json {
            brackets += usize::from(b == b'{' || b == b'[');
            plain &= b != b'\\' && b != b'$';
        }
        if brackets > MAX_BRACKETS || !plain {
            return None;
        }
        let MapOnly(envelope) = serde_json::from_slice::<MapOnly<Envelope<'a>>>(json).ok()?;
        let MapOnly(body) = envelope.payload;
        if envelope.x402_version != X402_VERSION || body.kind != "voucher" {
            return None;
        }
        Some(Self {
            accepted: envelope.accepted.into_view(),
            channel_config: body.channel_config,
            voucher: body.voucher,
        })
    }
}

/// The top level: every field `PaymentPayload` reads, with the same types.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    x402_version: u64,
    // Read only so that a malformed one declines, as `PaymentPayload` refuses it.
    #[serde(default, borrow)]
    #[allow(dead_code)]
    resource: Option<ResourceShape<'a>>,
    #[serde(borrow)]
    accepted: Accepted<'a>,
    #[serde(borrow)]
    payload: MapOnly<Body<'a>>,
    #[serde(default)]
    #[allow(dead_code)]
    extensions: Option<AnyObject>,
}

/// `ResourceInfo`'s shape (its values are not needed here).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct ResourceShape<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(default, borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    mime_type: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Accepted<'a> {
    #[serde(borrow)]
    scheme: Cow<'a, str>,
    #[serde(borrow)]
    network: Cow<'a, str>,
    #[serde(borrow)]
    amount: Cow<'a, str>,
    #[serde(borrow)]
    asset: Cow<'a, str>,
    #[serde(borrow)]
    pay_to: Cow<'a, str>,
    max_timeout_seconds: u64,
    #[serde(default, borrow)]
    extra: Extra<'a>,
}

impl<'a> Accepted<'a> {
    fn into_view(self) -> AcceptedView<'a> {
        AcceptedView {
            scheme: self.scheme,
            network: self.network,
            amount: self.amount,
            asset: self.asset,
            pay_to: self.pay_to,
            max_timeout_seconds: self.max_timeout_seconds,
            extra: self.extra.0,
        }
    }
}

/// `payload` of a voucher: what `BatchPayload::parse` reads for that kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    channel_config: ChannelConfigWire,
    voucher: VoucherFields,
}

/// A struct read from a JSON object only (a bare struct would also take an array).
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = MapOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(MapOnly)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Any JSON object, values skipped (`extensions`).
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        d.deserialize_map(V)
    }
}

/// `accepted.extra` as key/value pairs in the order sent.
#[derive(Default)]
struct Extra<'a>(Vec<(Cow<'a, str>, ExtraValue<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Extra<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Extra<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Extra<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(key) = map.next_key::<CowStr<'de>>()? {
                    entries.push((key.0, map.next_value::<ExtraValue<'de>>()?));
                }
                Ok(Extra(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// A string, borrowed when the input allows it.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <Cow<'de, str> as Deserialize>::deserialize(d).map(CowStr)
    }
}

impl<'de> Deserialize<'de> for ExtraValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ExtraVisitor)
    }
}

/// Strings are kept as text; every other kind becomes what `serde_json::Value` makes of it.
struct ExtraVisitor;

impl<'de> Visitor<'de> for ExtraVisitor {
    type Value = ExtraValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(ExtraValue::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(ExtraValue::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(ExtraValue::Str(Cow::Owned(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(ExtraValue::Other(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(ExtraValue::Other(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(ExtraValue::Other(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // As `Value` does: a float JSON can spell is finite, and `Null` otherwise.
        Ok(ExtraValue::Other(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(ExtraValue::Other(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(ExtraValue::Other(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Value::deserialize(d).map(ExtraValue::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(ExtraValue::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(ExtraValue::Other)
    }
}

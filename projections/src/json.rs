//! JSON documents read without building `serde_json::Value` trees, and
//! their canonical form (the bytes the audit chains hash).
//!
//! A `Value` costs an allocation per key and per string; a `Json` borrows
//! them from the text it was read from (or from the `Value` it mirrors), so
//! reading a million events for a rebuild or a verify costs a few
//! allocations each instead of dozens.

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Sorted by key, each key once: the last one read wins, as in `Value`.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    fn object(mut entries: Vec<(Cow<'a, str>, Json<'a>)>) -> Self {
        // Stable, so of equal keys the one read last comes last; it takes
        // the place of the ones before it.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        Json::Object(entries)
    }

    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(entries) => entries
                .binary_search_by(|(name, _)| name.as_ref().cmp(key))
                .ok()
                .map(|index| &entries[index].1),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(text) => Some(text),
            _ => None,
        }
    }

    /// Writes the canonical form: every object's keys sorted by their
    /// bytes, no whitespace, strings and numbers as serde_json writes them,
    /// and every entry whose key `keep` refuses left out, at every level.
    pub fn write_canonical(&self, out: &mut String, keep: &dyn Fn(&str) -> bool) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(true) => out.push_str("true"),
            Json::Bool(false) => out.push_str("false"),
            // `Number`'s `Display` is the text serde_json writes for it.
            Json::Number(number) => {
                let _ = write!(out, "{number}");
            }
            Json::String(text) => write_string(text, out),
            Json::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.write_canonical(out, keep);
                }
                out.push(']');
            }
            Json::Object(entries) => {
                out.push('{');
                let mut first = true;
                for (key, item) in entries.iter().filter(|(key, _)| keep(key)) {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    write_string(key, out);
                    out.push(':');
                    item.write_canonical(out, keep);
                }
                out.push('}');
            }
        }
    }
}

/// A JSON string literal escaped exactly as serde_json escapes it: quote,
/// backslash and control characters, nothing else.
pub(crate) fn write_string(text: &str, out: &mut String) {
    out.push('"');
    // Most strings need no escape: one pass the compiler vectorises.
    if !text.bytes().fold(false, |special, byte| {
        special | (byte < 0x20 || byte == b'"' || byte == b'\\')
    }) {
        out.push_str(text);
        out.push('"');
        return;
    }
    let mut clean = 0;
    for (at, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[clean..at]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escaped);
        }
        clean = at + 1;
    }
    out.push_str(&text[clean..]);
    out.push('"');
}

impl<'a> From<&'a Value> for Json<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Null => Json::Null,
            Value::Bool(value) => Json::Bool(*value),
            Value::Number(number) => Json::Number(number.clone()),
            Value::String(text) => Json::String(Cow::Borrowed(text)),
            Value::Array(items) => Json::Array(items.iter().map(Json::from).collect()),
            Value::Object(map) => Json::object(
                map.iter()
                    .map(|(key, item)| (Cow::Borrowed(key.as_str()), Json::from(item)))
                    .collect(),
            ),
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// Reads what `Value`'s own visitor reads, number for number.
struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(value).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(value.to_string())))
    }

    fn visit_string<E>(self, value: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(value)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((Key(key), item)) = map.next_entry()? {
            entries.push((key, item));
        }
        Ok(Json::object(entries))
    }
}

/// An object key, borrowed when the text holds it unescaped.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(value)))
            }

            fn visit_str<E>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value.to_string())))
            }

            fn visit_string<E>(self, value: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value)))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn canonical(json: &Json) -> String {
        let mut out = String::new();
        json.write_canonical(&mut out, &|_| true);
        out
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        scalar.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The hand-written form is byte for byte what serde_json writes for
        /// a map with sorted keys (this build leaves `preserve_order` off),
        /// escapes, numbers and all; and a text (with spaces, as jsonb gives
        /// it) read as `Json` writes what the same text read as a `Value`
        /// (the projector's path) writes.
        #[test]
        fn the_canonical_form_is_serde_jsons_compact_text_with_sorted_keys(value in any_json()) {
            prop_assert_eq!(canonical(&Json::from(&value)), serde_json::to_string(&value).unwrap());
            let text = serde_json::to_string_pretty(&value).unwrap();
            let read: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(
                canonical(&Json::parse(&text).unwrap()),
                serde_json::to_string(&read).unwrap()
            );
        }
    }

    #[test]
    fn keys_are_sorted_at_every_level_and_the_last_of_a_repeated_key_wins() {
        let text = r#"{ "b": [ {"z": 1, "a": "x\"y"} ], "a": null, "é": true, "a": 2.50 }"#;
        let json = Json::parse(text).unwrap();
        assert_eq!(
            canonical(&json),
            r#"{"a":2.5,"b":[{"a":"x\"y","z":1}],"é":true}"#
        );
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(canonical(&json), canonical(&Json::from(&value)));
        assert_eq!(
            json.get("a"),
            Some(&Json::Number(Number::from_f64(2.5).unwrap()))
        );
        assert_eq!(json.get("é"), Some(&Json::Bool(true)));
        assert_eq!(json.get("c"), None);
    }

    #[test]
    fn unescaped_strings_are_borrowed_from_the_text() {
        let json = Json::parse(r#"{"plain": "text", "escaped": "a\nb"}"#).unwrap();
        assert!(matches!(
            json.get("plain"),
            Some(Json::String(Cow::Borrowed("text")))
        ));
        assert_eq!(json.get("escaped").and_then(Json::as_str), Some("a\nb"));
    }
}
